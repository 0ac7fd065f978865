"""Deploy mode: fold a trained BNN (dense or convolutional) into integer thresholds (METHOD §4, §7).

:func:`to_deploy` turns a :class:`~lightning_bet.models.BNN` into a
:class:`~lightning_bet.deploy.model.DeployModel`; :func:`deploy_forward` (or
:class:`DeployModule`) evaluates it with exact integer arithmetic. That evaluation is the
reference semantics every export (bitstream + numpy interpreter, C runtime, TFLite) must match on
every sample.

Threshold rule. BatchNorm (eval mode) then ``sign`` is ``o = +1`` iff ``d (a_float - tau) >= 0``
(:func:`~lightning_bet.functional.fold.fold_batchnorm`). The first layer sees pixels
``x = q / L`` with integer ``q``, so ``a_float = a / L`` with the exact integer ``a = W @ q``; later
layers see ``{-1, +1}`` inputs (``L = 1``). Hence, with ``tau`` computed in float64 and
``L * tau`` rounded up or down *exactly* (rational arithmetic on that float64 value):

- ``d = +1``: ``a / L >= tau`` iff ``a >= ceil(L tau)``: ``T = ceil(L tau)``;
- ``d = -1``: ``a / L <= tau`` iff ``a <= floor(L tau)``: ``T = floor(L tau)``;

and the deploy comparison is ``d (a - T) >= 0``. ``T`` (including the ``+-inf`` thresholds of
``gamma = 0``) is clamped to ``[-B - 1, B + 1]`` where ``B = n L`` bounds ``|a|``, which keeps
every outcome and fits ``int32``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_bet._validation import check_positive_int
from lightning_bet.deploy.model import DeployConv, DeployLayer, DeployModel
from lightning_bet.functional.fold import fold_integer, fold_thresholds
from lightning_bet.layers import BinaryConv2d, BinaryLinear
from lightning_bet.network import blocks as network_blocks

__all__ = ["DeployModule", "deploy_forward", "fold_thresholds", "to_deploy"]


def _square(name: str, index: int, value: object) -> int:
    """``value`` as one int when it is an int or a pair of equal ints, else a clear error."""
    if isinstance(value, tuple | list) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"Expected the {name} of hidden block {index} to be the same on both axes, but got "
            f"{value!r}; only square kernels, strides, paddings and pool windows are exported"
        )
    return int(value)


def _conv_geometry(index: int, conv: BinaryConv2d) -> tuple[int, int, int]:
    """``(kernel, stride, padding)`` of an exportable ``BinaryConv2d``, else a clear error."""
    where = f"hidden block {index} ({type(conv).__name__})"
    if conv.groups != 1:
        raise ValueError(f"Expected groups=1 in {where}, but got groups={conv.groups}")
    if tuple(conv.dilation) != (1, 1):
        raise ValueError(f"Expected dilation 1 in {where}, but got dilation={conv.dilation}")
    if conv.padding_mode != "zeros":
        raise ValueError(f"Expected padding_mode='zeros' in {where}, but got {conv.padding_mode!r}")
    kernel = _square("kernel size", index, tuple(conv.kernel_size))
    stride = _square("stride", index, tuple(conv.stride))
    padding = conv.padding
    if padding == "valid":
        padding = 0
    elif padding == "same":
        if kernel % 2 == 0 or stride != 1:
            raise ValueError(
                f"Expected padding='same' in {where} with an odd kernel and stride 1, but got "
                f"kernel {kernel} and stride {stride}"
            )
        padding = kernel // 2
    padding = _square("padding", index, tuple(padding) if isinstance(padding, tuple) else padding)
    return kernel, stride, padding


def _pool_window(index: int, pool: nn.Module | None) -> int:
    """The window ``P`` of a max-pool with stride ``P`` (1 without pooling), else a clear error."""
    if pool is None:
        return 1
    if not isinstance(pool, nn.MaxPool2d):
        raise ValueError(
            f"Expected the pooling of hidden block {index} to be nn.MaxPool2d (max-pool before "
            f"BatchNorm), but got {type(pool).__name__}; other pooling is not exported"
        )
    window = _square("max-pool kernel size", index, pool.kernel_size)
    stride = _square("max-pool stride", index, pool.stride)
    if stride != window or _square("max-pool padding", index, pool.padding) != 0:
        raise ValueError(
            f"Expected the max-pool of hidden block {index} to have stride equal to its window "
            f"and no padding, but got kernel_size={pool.kernel_size}, stride={pool.stride}, "
            f"padding={pool.padding}"
        )
    if _square("max-pool dilation", index, pool.dilation) != 1:
        raise ValueError(
            f"Expected the max-pool of hidden block {index} to have dilation 1, but got "
            f"{pool.dilation}"
        )
    return window


def _check_block(index: int, block: nn.Module) -> None:
    """What the export needs beyond the pattern :func:`lightning_bet.network.blocks` checks."""
    layer = getattr(block, "layer", None)
    if not isinstance(layer, BinaryLinear | BinaryConv2d):
        raise ValueError(
            f"Expected every hidden block to hold a BinaryLinear or BinaryConv2d, but block "
            f"{index} holds {type(layer).__name__}"
        )
    conv = isinstance(layer, BinaryConv2d)
    pool = getattr(block, "pool", None)
    if not conv and pool is not None:
        raise ValueError(
            f"Expected the dense hidden block {index} to have no pooling, but got "
            f"{type(pool).__name__}"
        )
    bn = getattr(block, "bn", None)
    expected = nn.BatchNorm2d if conv else nn.BatchNorm1d
    if not isinstance(bn, expected):
        raise ValueError(
            f"Expected hidden block {index} to have a {expected.__name__} after its "
            f"{type(layer).__name__}, but got {type(bn).__name__}"
        )
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f"Expected the BatchNorm of hidden block {index} to track running statistics, but it "
            "has track_running_stats=False"
        )
    if layer.bias is not None:
        raise ValueError(
            f"Expected the {type(layer).__name__} of hidden block {index} to have no bias"
        )
    if conv:
        _conv_geometry(index, layer)
        _pool_window(index, pool)


def _fold_block(
    index: int, block: nn.Module, in_shape: tuple[int, ...], levels: int
) -> DeployConv | DeployLayer:
    """One hidden block in deploy mode; ``in_shape`` is its input's shape (flat for dense)."""
    layer = block.layer
    weight = layer.binary_weight().detach().cpu().numpy().astype(np.int8)
    if isinstance(layer, BinaryLinear):
        if math.prod(in_shape) != layer.in_features:
            raise ValueError(
                f"Expected hidden block {index} ({type(layer).__name__}) to take "
                f"{math.prod(in_shape)} features (the output of the block before it), but it "
                f"takes {layer.in_features}"
            )
        threshold, direction = fold_integer(block.bn, levels, layer.in_features)
        return DeployLayer(weight, threshold, direction, binary_input=index > 0)
    kernel, stride, padding = _conv_geometry(index, layer)
    if len(in_shape) != 3 or in_shape[0] != layer.in_channels:
        raise ValueError(
            f"Expected hidden block {index} ({type(layer).__name__}) to take an input of shape "
            f"({layer.in_channels}, H, W), but the block before it gives {tuple(in_shape)}"
        )
    threshold, direction = fold_integer(block.bn, levels, layer.in_channels * kernel * kernel)
    try:
        return DeployConv(
            weight=weight,
            threshold=threshold,
            direction=direction,
            in_shape=tuple(in_shape),
            stride=stride,
            padding=padding,
            pool=_pool_window(index, block.pool),
            binary_input=index > 0,
        )
    except ValueError as error:  # name the block (e.g. pool windows that do not tile the map)
        raise ValueError(f"hidden block {index}: {error}") from None


def to_deploy(net: nn.Module, input_levels: int) -> DeployModel:
    """Fold a binarized network (dense or convolutional) into deploy mode.

    BatchNorm uses its running statistics (eval mode), whatever ``net.training`` is.

    Args:
        net: any module whose blocks (:func:`lightning_bet.network.blocks`) are
            ``BinaryConv2d -> [MaxPool2d] -> BatchNorm2d -> sign`` (first, any number) then
            ``BinaryLinear -> BatchNorm1d -> sign``, then an output ``BinaryLinear`` (an
            ``OutputLayer``'s scale is kept; a bare ``BinaryLinear`` has scale 1): a ``BNN``, a
            ``BNNClassifier``, a user's ``nn.Sequential`` or ``LightningModule``. The first layer
            takes real pixels (``binarize_input=False``). Convolutions: square kernels, equal
            strides and zero paddings on both axes, ``groups=1``, ``dilation=1``, no bias;
            max-pool windows with stride equal to the window that tile the map.
        input_levels: ``L``: inputs are ``q / L`` with integer ``q`` in ``[0, L]``.

    Returns:
        The :class:`DeployModel` (int8 weights, int64 thresholds, int8 directions).

    Raises:
        ValueError: naming the block, for anything that cannot be exported exactly: grouped,
            dilated or non-square convolutions, average or overlapping pooling, pool windows
            that do not tile the map, a missing BatchNorm, a bias, a first layer that binarizes
            its input, or a bad ``input_levels``.

    Example:
        >>> from lightning_bet.models import build_model
        >>> model = to_deploy(build_model("fcnn", (1, 8, 8), 10, (16,)), input_levels=16)
        >>> [layer.shape for layer in model.layers]
        [(16, 64), (10, 16)]

    """
    check_positive_int("input_levels", input_levels, "an int >= 1")
    view = network_blocks(net, argument="net")
    blocks, head = view.blocks, view.head
    for i, block in enumerate(blocks):
        _check_block(i, block)
    first = blocks[0].layer if len(blocks) else head.layer
    if first.binarize_input:
        raise ValueError(
            "Expected the first layer to take real-valued pixels (binarize_input=False), but got "
            "binarize_input=True, which the export does not support"
        )
    if head.layer.bias is not None:
        raise ValueError("Expected the output layer to have no bias")
    input_shape = tuple(view.input_shape or ())
    if isinstance(first, BinaryConv2d) and len(input_shape) != 3:
        raise ValueError(
            "Expected the input shape (C, H, W) of a network whose first layer is a BinaryConv2d "
            "(an `input_shape` attribute or `example_input_array`), but got "
            f"{input_shape or None!r}"
        )
    shape: tuple[int, ...] = input_shape if input_shape else (first.in_features,)
    layers: list[DeployConv | DeployLayer] = []
    with torch.no_grad():
        for i, block in enumerate(blocks):
            layer = _fold_block(i, block, shape, input_levels if i == 0 else 1)
            layers.append(layer)
            shape = layer.out_shape if isinstance(layer, DeployConv) else (layer.out_features,)
        if math.prod(shape) != head.layer.in_features:
            raise ValueError(
                f"Expected the output layer to take {math.prod(shape)} features (the output of "
                f"the last hidden block), but it takes {head.layer.in_features}"
            )
        layers.append(
            DeployLayer(
                weight=head.layer.binary_weight().detach().cpu().numpy().astype(np.int8),
                threshold=None,
                direction=None,
                binary_input=len(blocks) > 0,
            )
        )
        scale = float(head.scale.detach().cpu().float())
    if input_shape and math.prod(input_shape) != layers[0].in_features:
        input_shape = ()
    return DeployModel(tuple(layers), input_levels, scale, input_shape)


class DeployModule(nn.Module):
    """Deploy-mode evaluation in PyTorch with exact integer arithmetic.

    Weights, thresholds and directions are buffers, so ``.to(device)`` moves them. Products are
    computed in float64, which is exact here (every partial sum is an integer below ``2^31``) and
    works on devices without integer matrix products; results are returned as int64.

    Args:
        model: the deploy-mode network.

    Shape:
        - Input: ``(N, in_features)`` or ``(N, *input_shape)`` integer pixels ``q`` in
          ``[0, input_levels]`` (any integer or float dtype holding integers).
        - Output: ``(N, num_classes)`` int64 integer logits ``a``.

    """

    def __init__(self, model: DeployModel) -> None:
        super().__init__()
        if not isinstance(model, DeployModel):
            raise TypeError(f"Expected `model` to be a DeployModel, but got {type(model).__name__}")
        self.input_levels = model.input_levels
        self.input_shape = model.input_shape
        self.in_features = model.in_features
        self.num_layers = len(model.layers)
        #: per layer: ``None`` (dense) or ``(in_shape, stride, padding, pool)`` (convolutional)
        self.geometry = [
            (layer.in_shape, layer.stride, layer.padding, layer.pool)
            if isinstance(layer, DeployConv)
            else None
            for layer in model.layers
        ]
        for i, layer in enumerate(model.layers):
            self.register_buffer(f"weight{i}", torch.from_numpy(layer.weight.astype(np.float64)))
            if layer.threshold is not None:
                self.register_buffer(f"threshold{i}", torch.from_numpy(layer.threshold.copy()))
                self.register_buffer(f"direction{i}", torch.from_numpy(layer.direction.copy()))

    def check_input(self, q: Tensor) -> Tensor:
        """Validate ``q`` and return it flattened to ``(N, in_features)`` float64."""
        if not isinstance(q, Tensor):
            raise TypeError(f"Expected `q` to be a torch.Tensor, but got {type(q).__name__}")
        shapes = [f"(N, {self.in_features})"]
        if self.input_shape:
            shapes.append(f"(N, {', '.join(map(str, self.input_shape))})")
        fits = (q.dim() == 2 and q.shape[1] == self.in_features) or (
            bool(self.input_shape) and tuple(q.shape[1:]) == self.input_shape
        )
        if not fits:
            raise ValueError(
                f"Expected `q` of shape {' or '.join(shapes)}, but got {tuple(q.shape)}"
            )
        if q.is_complex() or q.dtype == torch.bool:
            raise TypeError(f"Expected `q` to hold integer pixels, but got dtype {q.dtype}")
        flat = q.reshape(q.shape[0], -1).to(torch.float64)
        if flat.numel() and (
            (flat != flat.round()).any() or flat.min() < 0 or flat.max() > self.input_levels
        ):
            raise ValueError(
                f"Expected `q` to hold integer pixels in [0, {self.input_levels}], but got values "
                f"in [{flat.min().item()}, {flat.max().item()}]"
                + (" (not all integers)" if (flat != flat.round()).any() else "")
            )
        return flat

    def preactivation(self, i: int, v: Tensor) -> Tensor:
        """Integer pre-activation of layer ``i`` (after max-pooling) as float64.

        Args:
            i: layer index.
            v: ``(N, in_features)`` float64 input of layer ``i`` (pixels or ``+-1``).

        Returns:
            ``(N, C_out, H_out, W_out)`` for a convolutional layer, else ``(N, out_features)``.

        """
        weight = getattr(self, f"weight{i}")
        geometry = self.geometry[i]
        if geometry is None:
            return v.reshape(v.shape[0], -1) @ weight.T
        in_shape, stride, padding, pool = geometry
        # zero padding contributes 0, exactly as the float model computes
        a = F.conv2d(v.reshape(v.shape[0], *in_shape), weight, stride=stride, padding=padding)
        return F.max_pool2d(a, pool) if pool > 1 else a

    def forward(self, q: Tensor) -> Tensor:  # noqa: D102
        v = self.check_input(q)
        for i in range(self.num_layers - 1):
            a = self.preactivation(i, v)
            shape = (-1, 1, 1) if a.dim() == 4 else (-1,)
            threshold = getattr(self, f"threshold{i}").to(torch.float64).reshape(shape)
            direction = getattr(self, f"direction{i}").to(torch.float64).reshape(shape)
            v = torch.where(direction * (a - threshold) >= 0, 1.0, -1.0).to(torch.float64)
            v = v.reshape(v.shape[0], -1)  # (C, H, W) order, as PyTorch flattens
        a = self.preactivation(self.num_layers - 1, v)
        return a.round().to(torch.int64)


def deploy_forward(model: DeployModel, q: Tensor) -> Tensor:
    """Integer logits of ``model`` for integer pixels ``q``, on ``q``'s device.

    Args:
        model: the deploy-mode network.
        q: ``(N, in_features)`` or ``(N, *input_shape)`` integer pixels in
            ``[0, input_levels]``.

    Returns:
        int64 ``(N, num_classes)`` integer logits ``a`` (float logits are ``scale * a``).

    Example:
        >>> from lightning_bet.models import build_model
        >>> model = to_deploy(build_model("fcnn", (1, 8, 8), 10, (16,)), input_levels=16)
        >>> deploy_forward(model, torch.zeros(2, 64, dtype=torch.uint8)).shape
        torch.Size([2, 10])

    """
    module = DeployModule(model)
    if isinstance(q, Tensor):
        module = module.to(q.device)
    return module(q)
