"""Reference binarized networks (METHOD §1).

Every network is a :class:`BNN`: a list of hidden :class:`BinaryBlock` s
(``binary layer -> [max-pool] -> BatchNorm -> sign``) followed by an :class:`OutputLayer`
(binary weights, no BatchNorm, logits ``s * a`` with a learnable positive scale ``s``).
This one shape is what the margin metric, the regularizer, the sweeps and the exporters walk.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_bet.functional.binarize import binarize_activation
from lightning_bet.layers import BinaryConv2d, BinaryLinear

__all__ = ["BNN", "ARCHITECTURES", "BinaryBlock", "OutputLayer", "build_model"]

ARCHITECTURES = ("fcnn", "cnn", "vgg3", "vgg7")


class BinaryBlock(nn.Module):
    """Hidden block ``[flatten] -> binary layer -> [max-pool] -> BatchNorm -> sign``.

    Args:
        layer: a ``BinaryLinear`` or ``BinaryConv2d``.
        pool: optional pooling applied to the pre-activation before BatchNorm.
        flatten: flatten ``(N, ...)`` inputs to ``(N, features)`` before ``layer``.

    """

    def __init__(
        self,
        layer: BinaryLinear | BinaryConv2d,
        pool: nn.Module | None = None,
        flatten: bool = False,
    ) -> None:
        super().__init__()
        self.layer = layer
        self.pool = pool
        self.flatten = flatten
        channels = layer.out_features if isinstance(layer, BinaryLinear) else layer.out_channels
        self.bn = (
            nn.BatchNorm1d(channels)
            if isinstance(layer, BinaryLinear)
            else nn.BatchNorm2d(channels)
        )

    def preactivation(self, x: Tensor) -> Tensor:
        """Integer-valued (for binary inputs) pre-activation ``a``: the input of BatchNorm."""
        if self.flatten:
            x = x.flatten(1)
        a = self.layer(x)
        return self.pool(a) if self.pool is not None else a

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return binarize_activation(self.bn(self.preactivation(x)))


class OutputLayer(nn.Module):
    """Binary output layer: logits ``s * (q(x) @ sign(W).T)`` with learnable ``s = exp(log_scale)``.

    ``s > 0`` always, so ``argmax`` never depends on it. It starts at ``1 / sqrt(in_features)``
    so that initial logits have unit scale.
    """

    def __init__(self, in_features: int, num_classes: int, flatten: bool = False) -> None:
        super().__init__()
        self.layer = BinaryLinear(in_features, num_classes, bias=False)
        self.flatten = flatten
        self.log_scale = nn.Parameter(torch.tensor(-0.5 * math.log(in_features)))

    @property
    def scale(self) -> Tensor:
        """The positive output scale ``s``, a 0-dim tensor."""
        return self.log_scale.exp()

    def preactivation(self, x: Tensor) -> Tensor:
        """Unscaled integer logits ``a`` (for binary inputs), shape ``(N, num_classes)``."""
        return self.layer(x.flatten(1) if self.flatten else x)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.scale * self.preactivation(x)


class BNN(nn.Module):
    """A binarized network: hidden blocks then a binary output layer.

    Args:
        input_shape: shape of one sample, e.g. ``(1, 28, 28)``.
        blocks: hidden blocks in forward order.
        head: the output layer.

    Shape:
        - Input: ``(N, *input_shape)``; networks whose first layer is dense also accept
          ``(N, prod(input_shape))``.
        - Output: ``(N, num_classes)`` logits.

    """

    def __init__(
        self, input_shape: Sequence[int], blocks: Sequence[BinaryBlock], head: OutputLayer
    ) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        return self.head.layer.out_features

    def check_input(self, x: Tensor) -> None:
        """Raise a ``ValueError`` naming the expected shape if ``x`` does not fit the network."""
        if x.dim() >= 2 and tuple(x.shape[1:]) == self.input_shape:
            return
        first = self.blocks[0].layer if len(self.blocks) else self.head.layer
        flat = math.prod(self.input_shape)
        if isinstance(first, BinaryLinear) and x.dim() == 2 and x.shape[1] == flat:
            return
        raise ValueError(
            f"Expected input of shape (N, {', '.join(map(str, self.input_shape))})"
            + (f" or (N, {flat})" if isinstance(first, BinaryLinear) else "")
            + f", but got {tuple(x.shape)}"
        )

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        self.check_input(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _positive_ints(name: str, values: Sequence[int]) -> tuple[int, ...]:
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(
            f"Expected `{name}` to be a non-empty list of positive ints, but got {list(values)!r}"
        )
    return values


def _fcnn(
    input_shape: tuple[int, ...], hidden: tuple[int, ...], num_classes: int, binarize_input: bool
) -> BNN:
    sizes = (math.prod(input_shape), *hidden)
    blocks = [
        BinaryBlock(
            BinaryLinear(n_in, n_out, bias=False, binarize_input=binarize_input or i > 0),
            flatten=i == 0,
        )
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
    ]
    return BNN(input_shape, blocks, OutputLayer(sizes[-1], num_classes, flatten=not blocks))


def _vgg(
    input_shape: tuple[int, ...],
    stages: Sequence[Sequence[int]],
    dense: Sequence[int],
    num_classes: int,
    binarize_input: bool,
) -> BNN:
    if len(input_shape) != 3:
        raise ValueError(
            f"Expected `input_shape` to be (channels, height, width) for a CNN, but got "
            f"{list(input_shape)}"
        )
    channels, height, width = input_shape
    if height % 2 ** len(stages) or width % 2 ** len(stages):
        raise ValueError(
            f"Expected `input_shape` height and width divisible by {2 ** len(stages)} "
            f"({len(stages)} max-pool stages), but got {list(input_shape)}"
        )
    blocks: list[BinaryBlock] = []
    for stage in stages:
        for j, out in enumerate(stage):
            conv = BinaryConv2d(
                channels,
                out,
                3,
                padding=1,
                bias=False,
                binarize_input=binarize_input or bool(blocks),
            )
            pool = nn.MaxPool2d(2) if j == len(stage) - 1 else None
            blocks.append(BinaryBlock(conv, pool=pool))
            channels = out
        height, width = height // 2, width // 2
    features = channels * height * width
    for i, out in enumerate(dense):
        blocks.append(BinaryBlock(BinaryLinear(features, out, bias=False), flatten=i == 0))
        features = out
    return BNN(input_shape, blocks, OutputLayer(features, num_classes, flatten=not dense))


def build_model(
    arch: Literal["fcnn", "cnn", "vgg3", "vgg7"] = "fcnn",
    input_shape: Sequence[int] = (1, 8, 8),
    num_classes: int = 10,
    hidden: Sequence[int] = (256, 256),
    binarize_input: bool = False,
    channels: Sequence[int] = (32, 64),
) -> BNN:
    """Build a reference network.

    - ``"fcnn"``: dense blocks of widths ``hidden`` (``784-2048-2048-10`` for FashionMNIST with
      ``hidden=(2048, 2048)``; ``64-256-256-10`` for digits).
    - ``"cnn"``: one ``C(c)-MP`` stage per entry of ``channels``, then dense blocks of widths
      ``hidden`` (may be empty), then the output layer; ``channels=(32, 64), hidden=()`` is the
      digits CNN ``C32-MP-C64-MP-FC10``.
    - ``"vgg3"``: ``C64-MP-C64-MP-FC(hidden[0])-FC(num_classes)`` (FashionMNIST).
    - ``"vgg7"``: ``C128-C128-MP-C256-C256-MP-C512-C512-MP-FC(hidden[0])-FC(num_classes)``
      (CIFAR10). All convolutions are 3x3 with padding 1; max-pooling (2x2) precedes BatchNorm.

    Args:
        arch: one of ``"fcnn"``, ``"cnn"``, ``"vgg3"``, ``"vgg7"``.
        input_shape: shape of one sample, e.g. ``(1, 28, 28)``.
        num_classes: number of classes (>= 2).
        hidden: widths of the hidden dense layers (``"vgg*"`` use only ``hidden[0]``; ``"cnn"``
            uses all of them and accepts none).
        binarize_input: binarize the input of the first layer (default: real-valued pixels).
        channels: ``"cnn"`` only: output channels of its conv stages.

    Returns:
        The network, a :class:`BNN`.

    Example:
        >>> net = build_model("cnn", (1, 8, 8), 10, hidden=(), channels=(32, 64))
        >>> [type(block.layer).__name__ for block in net.blocks]
        ['BinaryConv2d', 'BinaryConv2d']

    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"Expected `arch` to be one of {list(ARCHITECTURES)}, but got {arch!r}")
    input_shape = _positive_ints("input_shape", input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"Expected `num_classes` to be an int >= 2, but got {num_classes!r}")
    if arch == "cnn":
        dense = _positive_ints("hidden", hidden) if tuple(hidden) else ()
        stages = [[c] for c in _positive_ints("channels", channels)]
        return _vgg(input_shape, stages, dense, num_classes, binarize_input)
    hidden = _positive_ints("hidden", hidden)
    if arch == "fcnn":
        return _fcnn(input_shape, hidden, num_classes, binarize_input)
    stages = [[64], [64]] if arch == "vgg3" else [[128, 128], [256, 256], [512, 512]]
    return _vgg(input_shape, stages, hidden[:1], num_classes, binarize_input)
