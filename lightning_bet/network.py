"""The block view of any network made of binary layers: :func:`blocks`.

The margin metric, the regularizer, the model summary and the export all walk a network as
hidden blocks ``[flatten] -> binary layer -> [max-pool] -> BatchNorm -> sign`` followed by an
output ``BinaryLinear`` (METHOD §1). :func:`blocks` finds that structure in any module: a
:class:`~lightning_bet.models.BNN`, a user's ``nn.Sequential`` of ``BinaryConv2d``,
``MaxPool2d``, ``BatchNorm2d``, :class:`~lightning_bet.layers.Sign`, ``Flatten``,
``BinaryLinear``, ``BatchNorm1d``, ..., ``BinaryLinear``, or a ``LightningModule`` holding such a
thing as any attribute.

How blocks are discovered: by module order. The modules are walked in registration order (the
order of ``named_modules()``) under the smallest submodule that holds every binary layer.
``torch.fx`` was the alternative, and the less robust one here: a symbolic trace fails on
data-dependent Python control flow in ``forward`` (``BNN.check_input`` branches on the input
shape, and users' modules commonly do the same), and it needs ``forward`` to be traceable at all,
while the module walk needs nothing but the modules. What the walk cannot see is arithmetic
written inside a ``forward`` (``x * 2``, a residual sum): modules must be registered in the
order they run, and tensor code between them must not change values. :meth:`Network.run`
checks the order at run time: it raises when the BatchNorms do not run in the view's order.

Rules of the walk:

- ``BinaryBlock`` and ``OutputLayer`` (the reference models' own blocks) are taken whole.
- ``nn.Flatten`` (``start_dim=1``, ``end_dim=-1``) may stand between blocks: the next binary
  layer gets ``flatten=True``.
- A hidden block's output must be binarized: by a :class:`~lightning_bet.layers.Sign` after its
  BatchNorm, or by the next binary layer (``binarize_input=True``).
- The last binary layer is the output layer: a ``BinaryLinear`` with no BatchNorm after it. Its
  logits are ``s * a`` with ``s = 1``; for a learnable scale ``s``, end the network with an
  :class:`~lightning_bet.models.OutputLayer` instead.
- ``nn.Identity``, torchmetrics metrics and loss modules (``nn.CrossEntropyLoss``, ...) are
  skipped; any other module breaks the pattern, and the error names it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.loss import _Loss

from lightning_bet.layers import BinaryConv2d, BinaryLinear, Sign, binary_layers
from lightning_bet.models import BinaryBlock, OutputLayer

__all__ = ["Block", "Head", "Network", "PATTERN", "blocks"]

#: The pattern every error message quotes.
PATTERN = (
    "hidden blocks [Flatten] -> BinaryLinear | BinaryConv2d -> [MaxPool2d] -> BatchNorm -> sign, "
    "then an output BinaryLinear"
)

_POOLS = (
    nn.MaxPool1d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.LPPool1d,
    nn.LPPool2d,
    nn.FractionalMaxPool2d,
)


def fan_in(layer: BinaryLinear | BinaryConv2d) -> int:
    """Number of weights per output neuron (``in_channels / groups * kh * kw`` for a conv)."""
    if isinstance(layer, BinaryLinear):
        return layer.in_features
    kh, kw = layer.kernel_size
    return layer.in_channels // layer.groups * kh * kw


@dataclass(frozen=True)
class Block:
    """One hidden block: ``[flatten] -> layer -> [pool] -> bn -> sign``.

    Attributes:
        name: qualified name of ``layer`` in the module given to :func:`blocks`.
        layer: the binary layer.
        bn: its BatchNorm (``BatchNorm1d`` after a ``BinaryLinear``, ``BatchNorm2d`` after a conv).
        pool: a ``MaxPool2d`` between layer and BatchNorm, or ``None``.
        flatten: whether the input is flattened to ``(N, features)`` before ``layer``.

    """

    name: str
    layer: BinaryLinear | BinaryConv2d
    bn: _BatchNorm
    pool: nn.MaxPool2d | None = None
    flatten: bool = False

    @property
    def fan_in(self) -> int:
        """Number of weights per output neuron."""
        return fan_in(self.layer)

    def preactivation(self, x: Tensor) -> Tensor:
        """The pre-activation ``a`` (the input of ``bn``) for this block's input ``x``.

        Args:
            x: ``(N, ...)`` the block's input.

        Returns:
            ``(N, C)`` or ``(N, C, H, W)``.

        """
        if self.flatten:
            x = x.flatten(1)
        a = self.layer(x)
        return self.pool(a) if self.pool is not None else a


@dataclass(frozen=True)
class Head:
    """The output layer: logits ``scale * layer(x)``.

    Attributes:
        name: qualified name of ``layer``.
        layer: the output ``BinaryLinear`` (integer logits ``a`` for binary inputs).
        flatten: whether the input is flattened before ``layer``.
        output: the :class:`~lightning_bet.models.OutputLayer` holding ``layer`` (its learnable
            scale), or ``None`` for a bare ``BinaryLinear`` (scale 1).

    """

    name: str
    layer: BinaryLinear
    flatten: bool = False
    output: OutputLayer | None = None

    @property
    def fan_in(self) -> int:
        """Number of weights per output neuron."""
        return self.layer.in_features

    @property
    def scale(self) -> Tensor:
        """The positive output scale ``s`` (0-dim; the live value for an ``OutputLayer``)."""
        if self.output is not None:
            return self.output.scale
        weight = self.layer.weight
        return torch.ones((), dtype=weight.dtype, device=weight.device)


@dataclass(frozen=True)
class Network:
    """The block view of a module (see the module docstring); built by :func:`blocks`.

    Attributes:
        module: the smallest submodule holding every binary layer; calling it runs the network.
        blocks: the hidden blocks in forward order.
        head: the output layer.
        input_shape: shape of one sample when known (an ``input_shape`` attribute of the module
            or of a parent, or a LightningModule's ``example_input_array``), else ``None``.

    """

    module: nn.Module
    blocks: tuple[Block, ...]
    head: Head
    input_shape: tuple[int, ...] | None = None

    @property
    def layers(self) -> tuple[BinaryLinear | BinaryConv2d, ...]:
        """Every binary layer in forward order, the output layer last."""
        return tuple(b.layer for b in self.blocks) + (self.head.layer,)

    @property
    def num_classes(self) -> int:
        """Number of outputs of the output layer."""
        return self.head.layer.out_features

    def __call__(self, x: Tensor) -> Tensor:
        """Run :attr:`module` on ``x``."""
        return self.module(x)

    @contextmanager
    def recording(self) -> Iterator[dict[str, list[Tensor] | Tensor | None]]:
        """Record the pre-activations of every forward pass run inside the context.

        Yields a dict filled by each forward pass: ``"preacts"``, a list with the input of each
        hidden block's BatchNorm (``a`` of block ``i`` at index ``i``, gradients attached), and
        ``"logits"``, the output layer's unscaled logits. Hooks are removed on exit.

        Raises:
            RuntimeError: on exit, if the BatchNorms ran in another order than the view's (the
                module order does not match the execution order).

        """
        record: dict[str, list[Tensor] | Tensor | None] = {"preacts": [], "logits": None}
        handles = []
        order: list[int] = []

        def pre(i: int) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
            def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
                preacts = record["preacts"]
                if i == 0:
                    preacts.clear()
                order.append(i)
                preacts.append(args[0])

            return hook

        def out(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            record["logits"] = output

        try:
            for i, block in enumerate(self.blocks):
                handles.append(block.bn.register_forward_pre_hook(pre(i)))
            handles.append(self.head.layer.register_forward_hook(out))
            yield record
        finally:
            for handle in handles:
                handle.remove()
        # each forward pass runs blocks 0, 1, ..., and a new pass starts again at 0
        if any(b not in (a + 1, 0) for a, b in zip([-1, *order], order, strict=False)):
            raise RuntimeError(
                f"Expected the BatchNorms of {type(self.module).__name__} to run in module order "
                f"{[b.name for b in self.blocks]}, but they ran as blocks {order}: register the "
                "modules in the order forward() uses them"
            )

    def run(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Run the network on ``x``; return the pre-activation of every block and the logits.

        Args:
            x: ``(N, *input_shape)`` inputs (whatever :attr:`module` accepts).

        Returns:
            ``(preacts, logits)``: ``preacts[i]`` is block ``i``'s BatchNorm input ``a``
            (``(N, C)`` or ``(N, C, H, W)``), ``logits`` the unscaled ``(N, num_classes)``
            output of the output layer. Gradients flow as in the forward pass.

        Example:
            >>> from lightning_bet.models import build_model
            >>> preacts, logits = blocks(build_model(hidden=(16, 8))).run(torch.rand(2, 1, 8, 8))
            >>> [tuple(a.shape) for a in preacts], tuple(logits.shape)
            ([(2, 16), (2, 8)], (2, 10))

        """
        with self.recording() as record:
            self.module(x)
        return list(record["preacts"]), record["logits"]


def _skipped(module: nn.Module) -> bool:
    """Modules that are not on the tensor path of the network: metrics, losses, identities."""
    from torchmetrics import Metric

    return isinstance(module, nn.Identity | Metric | _Loss)


def _root(names: Sequence[str]) -> str:
    """Qualified name of the deepest submodule holding every one of ``names`` (not one of them)."""
    parents = [name.split(".")[:-1] for name in names]
    common = parents[0]
    for parts in parents[1:]:
        k = 0
        while k < min(len(common), len(parts)) and common[k] == parts[k]:
            k += 1
        common = common[:k]
    return ".".join(common)


def _input_shape(module: nn.Module, root: str) -> tuple[int, ...] | None:
    """``input_shape`` of the root or its nearest parent, else ``example_input_array``."""
    chain = [module]
    for part in root.split(".") if root else []:
        chain.append(getattr(chain[-1], part))
    for owner in reversed(chain):
        shape = getattr(owner, "input_shape", None)
        if (
            isinstance(shape, Sequence)
            and shape
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
        ):
            return tuple(shape)
    for owner in reversed(chain):
        try:
            example = getattr(owner, "example_input_array", None)
        except Exception:  # noqa: BLE001  (a LightningModule property may raise when unset)
            example = None
        if isinstance(example, Tensor) and example.dim() >= 2:
            return tuple(example.shape[1:])
    return None


class _Walk:
    """The state machine of :func:`blocks` (see the module docstring for the rules)."""

    def __init__(self, top: str, argument: str) -> None:
        self.top = top
        self.argument = argument
        self.blocks: list[Block] = []
        self.head: Head | None = None
        self.layer: tuple[str, BinaryLinear | BinaryConv2d] | None = None  # awaiting BatchNorm
        self.pool: nn.MaxPool2d | None = None
        self.flatten = False  # a Flatten since the last block
        self.layer_flatten = False
        self.binarized = True  # the current tensor is {-1, +1} (or the network input)
        self.last = ""  # name and type of the last module on the pattern, for messages

    def fail(self, name: str, module: nn.Module, why: str) -> ValueError:
        label = f"`{name}`" if name else "the module itself"
        return ValueError(
            f"Expected `{self.argument}` ({self.top}) to be made of {PATTERN}, but {label} "
            f"({type(module).__name__}) breaks the pattern: {why}"
        )

    def between_blocks(self) -> bool:
        return self.layer is None and self.head is None

    def step(self, name: str, module: nn.Module) -> None:
        if self.head is not None:
            raise self.fail(name, module, f"expected nothing after the output layer {self.last}")
        if isinstance(module, BinaryBlock | OutputLayer | BinaryLinear | BinaryConv2d):
            self.binary(name, module)
        elif isinstance(module, nn.MaxPool2d):
            if self.layer is None or not isinstance(self.layer[1], BinaryConv2d) or self.pool:
                raise self.fail(name, module, "expected a MaxPool2d only after a BinaryConv2d")
            self.pool = module
        elif isinstance(module, _POOLS):
            raise self.fail(
                name, module, "only max-pooling (nn.MaxPool2d after a BinaryConv2d) is supported"
            )
        elif isinstance(module, _BatchNorm):
            self.batchnorm(name, module)
        elif isinstance(module, Sign):
            if self.layer is not None or self.binarized:
                raise self.fail(name, module, f"expected a sign only after a BatchNorm{self.after}")
            self.binarized = True
            self.last = f"`{name}` (Sign)"
        elif isinstance(module, nn.Flatten):
            if module.start_dim != 1 or module.end_dim != -1:
                raise self.fail(
                    name,
                    module,
                    f"expected Flatten(start_dim=1, end_dim=-1), but got start_dim="
                    f"{module.start_dim}, end_dim={module.end_dim}",
                )
            if not self.between_blocks():
                raise self.fail(name, module, f"expected a BatchNorm{self.after}")
            self.flatten = True
        else:
            raise self.fail(name, module, f"it is not part of the pattern{self.after}")

    @property
    def after(self) -> str:
        return f" after {self.last}" if self.last else ""

    def binary(self, name: str, module: nn.Module) -> None:
        kind = type(module).__name__
        if self.layer is not None:
            raise self.fail(name, module, f"expected a BatchNorm{self.after}")
        inner = module.layer if isinstance(module, BinaryBlock | OutputLayer) else module
        if not self.binarized and not inner.binarize_input:
            raise self.fail(
                name,
                module,
                f"the output of the block before it ({self.last}) is not binarized: put a Sign "
                "after its BatchNorm or give this layer binarize_input=True",
            )
        if isinstance(inner, BinaryConv2d) and any(
            isinstance(b.layer, BinaryLinear) for b in self.blocks
        ):
            raise self.fail(name, module, "expected no convolution after a dense layer")
        flatten, self.flatten = self.flatten, False
        if isinstance(module, BinaryBlock):
            self._check_bn(f"{name}.bn", inner, module.bn, f" in the hidden block `{name}`")
            bn = module.bn
            pool = module.pool
            if pool is not None and not (
                isinstance(pool, nn.MaxPool2d) and isinstance(inner, BinaryConv2d)
            ):
                raise self.fail(
                    f"{name}.pool",
                    pool,
                    "only max-pooling (nn.MaxPool2d after a BinaryConv2d) is supported",
                )
            self.blocks.append(
                Block(f"{name}.layer", inner, bn, pool, flatten=flatten or module.flatten)
            )
            self.binarized = True
            self.last = f"`{name}` ({kind})"
        elif isinstance(module, OutputLayer):
            self.head = Head(f"{name}.layer", inner, flatten or module.flatten, module)
            self.last = f"`{name}` ({kind})"
        else:
            self.layer = (name, module)
            self.layer_flatten = flatten
            self.last = f"`{name}` ({kind})"

    def _check_bn(self, name: str, layer: nn.Module, bn: nn.Module, where: str) -> None:
        want = nn.BatchNorm1d if isinstance(layer, BinaryLinear) else nn.BatchNorm2d
        channels = layer.out_features if isinstance(layer, BinaryLinear) else layer.out_channels
        if type(bn) is not want:
            raise self.fail(name, bn, f"expected a {want.__name__} with {channels} features{where}")
        if bn.num_features != channels:
            raise self.fail(
                name, bn, f"expected {channels} features{where}, but it has {bn.num_features}"
            )

    def batchnorm(self, name: str, module: _BatchNorm) -> None:
        if self.layer is None:
            raise self.fail(name, module, "expected a BatchNorm only after a binary layer")
        layer_name, layer = self.layer
        self._check_bn(name, layer, module, self.after)
        self.blocks.append(Block(layer_name, layer, module, self.pool, self.layer_flatten))
        self.layer, self.pool, self.layer_flatten = None, None, False
        self.binarized = False
        self.last = f"`{name}` ({type(module).__name__})"

    def finish(self) -> Head:
        if self.head is not None:
            return self.head
        if self.layer is None:
            raise ValueError(
                f"Expected `{self.argument}` ({self.top}) to be made of {PATTERN}, but it has no "
                f"output layer: the last module on the pattern is {self.last}"
            )
        name, layer = self.layer
        if self.pool is not None or not isinstance(layer, BinaryLinear):
            what = "a pooled layer" if self.pool is not None else type(layer).__name__
            raise ValueError(
                f"Expected `{self.argument}` ({self.top}) to be made of {PATTERN}, but `{name}` "
                f"({type(layer).__name__}) breaks the pattern: the output layer must be a "
                f"BinaryLinear with no BatchNorm after it, but got {what}"
            )
        return Head(name, layer, self.layer_flatten, None)


def blocks(module: nn.Module, argument: str = "module") -> Network:
    """The block view of ``module`` (see the module docstring for how it is found).

    Args:
        module: a :class:`~lightning_bet.models.BNN`, a ``BNNClassifier``, a user's
            ``nn.Sequential`` or ``LightningModule`` made of the project's binary layers.
        argument: how the caller names ``module`` in error messages (e.g. ``"model"``).

    Returns:
        The :class:`Network`: hidden blocks, output layer and input shape.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.
        ValueError: ``module`` has no binary layers, or a module breaks the pattern (the message
            names the first one, e.g. ``net.3 (ReLU)``).

    Example:
        >>> from lightning_bet.layers import BinaryLinear, Sign
        >>> net = nn.Sequential(
        ...     nn.Flatten(), BinaryLinear(64, 16, bias=False, binarize_input=False),
        ...     nn.BatchNorm1d(16), Sign(), BinaryLinear(16, 10, bias=False))
        >>> view = blocks(net)
        >>> [b.name for b in view.blocks], view.head.name, view.blocks[0].flatten
        (['1'], '4', True)

    """
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"Expected `{argument}` to be an nn.Module, but got {type(module).__name__}"
        )
    names = [name for name, _ in binary_layers(module)]
    if not names:
        raise ValueError(
            f"Expected `{argument}` to contain binary layers (BinaryLinear/BinaryConv2d), but "
            f"{type(module).__name__} has none"
        )
    root = "" if "" in names else _root(names)
    top = module.get_submodule(root) if root else module
    walk = _Walk(type(module).__name__, argument)
    prefix = f"{root}." if root else ""
    skip: str | None = None
    for sub_name, sub in top.named_modules():
        name = prefix + sub_name if sub_name else root
        if skip is not None and (skip in ("", name) or name.startswith(skip + ".")):
            continue
        if isinstance(sub, BinaryBlock | OutputLayer) or _skipped(sub):
            skip = name
            if _skipped(sub):
                continue
        elif next(sub.children(), None) is not None:
            continue  # a container: its children are walked
        walk.step(name, sub)
    head = walk.finish()
    return Network(top, tuple(walk.blocks), head, _input_shape(module, root))
