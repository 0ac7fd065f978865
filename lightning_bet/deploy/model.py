"""The deploy-mode network: integer thresholds instead of BatchNorm (METHOD §7).

This is the reference semantics every export (bitstream + numpy interpreter, C runtime, TFLite)
must reproduce on every sample.

Semantics, for an input image of integer pixels ``q`` (the float input is ``q / input_levels``):

- Hidden convolutional layer (:class:`DeployConv`, kernels ``W`` in
  ``{-1, +1}^{C_out x C_in x k x k}``, stride ``s``, zero padding ``p``): integer pre-activation
  ``a[o, y, x] = sum_{c, i, j} W[o, c, i, j] * v[c, s y + i - p, s x + j - p]`` over the
  positions inside the input only (padding contributes 0, it is not a ``-1``), where ``v = q``
  (first layer) or ``v`` in ``{-1, +1}`` (previous layer's output). With ``pool = P > 1`` the
  pre-activation is max-pooled over ``P x P`` windows (stride ``P``, windows tile the map
  exactly) *before* the threshold. Output ``o[c, y, x] = +1`` iff ``d_c * (a[c, y, x] - T_c) >= 0``.
  The output is flattened in PyTorch's ``(C, H, W)`` order for a following dense layer.
- Hidden dense layer ``l`` (:class:`DeployLayer`, weights ``W`` in ``{-1, +1}^{out x in}``):
  integer pre-activation ``a = W @ v`` where ``v = q`` (first layer; one that binarizes its
  input is not exported) or ``v`` in ``{-1, +1}`` (previous layer's output). Output
  ``o_j = +1`` iff ``d_j * (a_j - T_j) >= 0``, else ``-1``, with integer threshold ``T_j`` and
  direction ``d_j`` in ``{-1, +1}``.
- Output layer (dense): integer logits ``a = W @ v``; prediction ``argmax(a)`` (first index on
  ties); float logits are ``scale * a``.

The dataclasses validate their fields in ``__post_init__`` (``ValueError``/``TypeError`` naming
the field) and normalize dtypes (int8 weights and directions, int64 thresholds). A model is
convolutional layers (any number, first), dense hidden layers, then exactly one dense output
layer; only layer 0 takes integer pixels (``binary_input=False``), every later layer has
``binary_input=True``. The fold from BatchNorm is ``lightning_bet.deploy.fold.to_deploy``; the
torch evaluation is ``deploy_forward``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Union

import numpy as np

from lightning_bet._validation import check_positive_int, is_positive_int

__all__ = ["DeployConv", "DeployLayer", "DeployModel"]


@dataclass(frozen=True)
class DeployLayer:
    """One binary dense layer in deploy mode.

    Attributes:
        weight: int8 ``(out, in)`` in ``{-1, +1}``.
        threshold: int64 ``(out,)`` integer thresholds ``T`` (hidden layers), or ``None`` for
            the output layer.
        direction: int8 ``(out,)`` in ``{-1, +1}`` (hidden layers), or ``None``.
        binary_input: whether the layer's input is in ``{-1, +1}`` (else integer pixels).
    """

    weight: np.ndarray
    threshold: np.ndarray | None
    direction: np.ndarray | None
    binary_input: bool

    def __post_init__(self) -> None:
        weight = np.asarray(self.weight)
        if weight.ndim != 2 or weight.size == 0 or not _is_pm1(weight):
            raise ValueError(
                "Expected `weight` to be a non-empty 2-D array (out, in) of -1/+1 values, but got "
                f"shape {weight.shape} and dtype {weight.dtype}"
            )
        object.__setattr__(self, "weight", weight.astype(np.int8))
        if (self.threshold is None) != (self.direction is None):
            raise ValueError(
                "Expected `threshold` and `direction` to be both given (hidden layer) or both None "
                f"(output layer), but got threshold={_describe(self.threshold)} and "
                f"direction={_describe(self.direction)}"
            )
        if self.threshold is not None:
            _set_thresholds(self, weight.shape[0])
        if not isinstance(self.binary_input, bool | np.bool_):
            raise TypeError(f"Expected `binary_input` to be a bool, but got {self.binary_input!r}")
        object.__setattr__(self, "binary_input", bool(self.binary_input))

    @property
    def shape(self) -> tuple[int, int]:
        """``(out_features, in_features)``."""
        return tuple(self.weight.shape)  # type: ignore[return-value]

    @property
    def in_features(self) -> int:
        """Fan-in ``n``."""
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        """Number of neurons (rows)."""
        return int(self.weight.shape[0])


@dataclass(frozen=True)
class DeployConv:
    """One binary convolutional block in deploy mode: ``conv -> [max-pool] -> threshold``.

    Attributes:
        weight: int8 ``(C_out, C_in, k, k)`` kernels in ``{-1, +1}`` (square kernels).
        threshold: int64 ``(C_out,)`` integer thresholds ``T`` per output channel.
        direction: int8 ``(C_out,)`` directions in ``{-1, +1}``.
        in_shape: ``(C_in, H, W)``: the shape of the layer's input.
        stride: convolution stride ``s`` (both axes).
        padding: zero padding ``p`` on every side (padded positions contribute 0).
        pool: max-pool window ``P`` (stride ``P``, no padding) on the pre-activation before the
            threshold; ``1``: no pooling. ``P`` must divide the convolution's output size.
        binary_input: whether the input is in ``{-1, +1}`` (else integer pixels).
    """

    weight: np.ndarray
    threshold: np.ndarray
    direction: np.ndarray
    in_shape: tuple[int, int, int]
    stride: int = 1
    padding: int = 0
    pool: int = 1
    binary_input: bool = True

    def __post_init__(self) -> None:
        weight = np.asarray(self.weight)
        if (
            weight.ndim != 4
            or weight.size == 0
            or weight.shape[2] != weight.shape[3]
            or not _is_pm1(weight)
        ):
            raise ValueError(
                "Expected `weight` to be a non-empty 4-D array (C_out, C_in, k, k) of -1/+1 values "
                f"with square kernels, but got shape {weight.shape} and dtype {weight.dtype}"
            )
        object.__setattr__(self, "weight", weight.astype(np.int8))
        out_channels, in_channels, kernel, _ = weight.shape
        _set_thresholds(self, out_channels)
        in_shape = tuple(self.in_shape)
        if len(in_shape) != 3 or not all(is_positive_int(s, (int, np.integer)) for s in in_shape):
            raise ValueError(
                f"Expected `in_shape` to be (C_in, H, W) of positive ints, but got {in_shape!r}"
            )
        in_shape = tuple(int(s) for s in in_shape)
        if in_shape[0] != in_channels:
            raise ValueError(
                f"Expected `in_shape` to have {in_channels} channels (the kernels' C_in), but got "
                f"{in_shape}"
            )
        object.__setattr__(self, "in_shape", in_shape)
        for name in ("stride", "pool"):
            value = check_positive_int(name, getattr(self, name), "an int >= 1", (int, np.integer))
            object.__setattr__(self, name, value)
        padding = self.padding
        if isinstance(padding, bool) or not isinstance(padding, int | np.integer) or padding < 0:
            raise ValueError(f"Expected `padding` to be an int >= 0, but got {padding!r}")
        if padding >= kernel:
            raise ValueError(
                f"Expected `padding` to be smaller than the kernel size {kernel}, but got {padding}"
            )
        object.__setattr__(self, "padding", int(padding))
        conv = self.conv_shape
        if conv[1] < 1 or conv[2] < 1:
            raise ValueError(
                f"Expected the {kernel}x{kernel} kernel (padding {padding}) to fit the input "
                f"{in_shape}, but the output would be {conv[1]}x{conv[2]}"
            )
        if conv[1] % self.pool or conv[2] % self.pool:
            raise ValueError(
                f"Expected the {self.pool}x{self.pool} max-pool windows to tile the "
                f"{conv[1]}x{conv[2]} convolution output exactly, but they do not"
            )
        if not isinstance(self.binary_input, bool | np.bool_):
            raise TypeError(f"Expected `binary_input` to be a bool, but got {self.binary_input!r}")
        object.__setattr__(self, "binary_input", bool(self.binary_input))

    @property
    def kernel_size(self) -> int:
        """``k``: kernels are ``k x k``."""
        return int(self.weight.shape[2])

    @property
    def fan_in(self) -> int:
        """``C_in * k * k``: the most inputs one output sums (fewer at padded borders)."""
        return int(np.prod(self.weight.shape[1:]))

    @property
    def conv_shape(self) -> tuple[int, int, int]:
        """``(C_out, H_c, W_c)``: the convolution's output before pooling."""
        _, height, width = self.in_shape
        k, s, p = self.kernel_size, self.stride, self.padding
        return (
            int(self.weight.shape[0]),
            (height + 2 * p - k) // s + 1,
            (width + 2 * p - k) // s + 1,
        )

    @property
    def out_shape(self) -> tuple[int, int, int]:
        """``(C_out, H_c / P, W_c / P)``: the layer's output after pooling."""
        channels, height, width = self.conv_shape
        return channels, height // self.pool, width // self.pool

    @property
    def in_features(self) -> int:
        """Number of input values (``C_in * H * W``)."""
        return math.prod(self.in_shape)

    @property
    def out_features(self) -> int:
        """Number of output values (``C_out * H_out * W_out``), flattened in (C, H, W) order."""
        return math.prod(self.out_shape)

    @property
    def shape(self) -> tuple[int, int]:
        """``(out_features, in_features)`` of the flattened map, as for a dense layer."""
        return self.out_features, self.in_features


#: A layer of a :class:`DeployModel`.
DeployOp = Union[DeployConv, DeployLayer]  # noqa: UP007


@dataclass(frozen=True)
class DeployModel:
    """A deploy-mode BNN: convolutional layers, dense hidden layers, one dense output layer.

    Attributes:
        layers: hidden layers (:class:`DeployConv` first, then :class:`DeployLayer`) then the
            output layer (a :class:`DeployLayer` with ``threshold is None``), in order.
        input_levels: pixels are ``q / input_levels`` with integer ``q`` in
            ``[0, input_levels]`` (16 for digits, 255 for MNIST-style data).
        scale: positive float output scale ``s`` (logits ``s * a``).
        input_shape: shape of one sample before flattening, e.g. ``(1, 8, 8)``; required (and
            equal to the first layer's ``in_shape``) when the first layer is convolutional.
    """

    layers: tuple[DeployOp, ...]
    input_levels: int
    scale: float
    input_shape: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        if not layers or not all(isinstance(layer, DeployConv | DeployLayer) for layer in layers):
            raise ValueError(
                "Expected `layers` to be a non-empty sequence of DeployConv / DeployLayer, but got "
                f"{layers!r}"
            )
        object.__setattr__(self, "layers", layers)
        for i, layer in enumerate(layers):
            last = i == len(layers) - 1
            if last and isinstance(layer, DeployConv):
                raise ValueError(
                    f"Expected the output layer (layer {i}) to be a dense DeployLayer, but got a "
                    "DeployConv"
                )
            if (layer.threshold is None) != last:
                raise ValueError(
                    "Expected hidden layers (with thresholds) followed by exactly one output "
                    f"layer (threshold None), but layer {i} of {len(layers)} "
                    + ("has no thresholds" if not last else "has thresholds")
                )
            if layer.binary_input != (i > 0):
                raise ValueError(
                    f"Expected layer {i} to have binary_input={i > 0} (only the first layer takes "
                    f"integer pixels), but got {layer.binary_input}"
                )
            if i == 0:
                continue
            previous = layers[i - 1]
            if isinstance(layer, DeployConv):
                if not isinstance(previous, DeployConv):
                    raise ValueError(
                        f"Expected convolutional layers before dense ones, but layer {i} is a "
                        f"DeployConv after the dense layer {i - 1}"
                    )
                if layer.in_shape != previous.out_shape:
                    raise ValueError(
                        f"Expected layer {i} to take the {previous.out_shape} output of layer "
                        f"{i - 1}, but its `in_shape` is {layer.in_shape}"
                    )
            elif layer.in_features != previous.out_features:
                raise ValueError(
                    f"Expected layer {i} to have {previous.out_features} input features (the "
                    f"outputs of layer {i - 1}), but got shape {layer.shape}"
                )
        levels = self.input_levels
        levels = check_positive_int("input_levels", levels, "an int >= 1", (int, np.integer))
        object.__setattr__(self, "input_levels", levels)
        scale = self.scale
        if (
            isinstance(scale, bool)
            or not isinstance(scale, int | float | np.floating | np.integer)
            or not math.isfinite(scale)
            or scale <= 0
        ):
            raise ValueError(f"Expected `scale` to be a finite float > 0, but got {scale!r}")
        object.__setattr__(self, "scale", float(scale))
        shape = tuple(self.input_shape)
        if not all(is_positive_int(s, (int, np.integer)) for s in shape):
            raise ValueError(
                f"Expected `input_shape` to be a tuple of positive ints, but got {shape!r}"
            )
        shape = tuple(int(s) for s in shape)
        first = layers[0]
        if isinstance(first, DeployConv):
            if shape and shape != first.in_shape:
                raise ValueError(
                    f"Expected `input_shape` {shape} to equal the `in_shape` {first.in_shape} of "
                    "the convolutional layer 0"
                )
            shape = first.in_shape
        if shape and math.prod(shape) != first.in_features:
            raise ValueError(
                f"Expected `input_shape` {shape} to have {first.in_features} elements (the "
                f"input features of layer 0), but it has {math.prod(shape)}"
            )
        object.__setattr__(self, "input_shape", shape)

    @property
    def in_features(self) -> int:
        """Number of input pixels of one (flattened) sample."""
        return self.layers[0].in_features

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        return self.layers[-1].out_features

    @property
    def has_conv(self) -> bool:
        """Whether the network has convolutional layers."""
        return isinstance(self.layers[0], DeployConv)


def _set_thresholds(layer: DeployLayer | DeployConv, out: int) -> None:
    """Check ``layer.threshold`` / ``layer.direction`` for ``out`` outputs; store int64 / int8."""
    threshold = np.asarray(layer.threshold)
    if threshold.shape != (out,) or not np.issubdtype(threshold.dtype, np.integer):
        raise ValueError(
            f"Expected `threshold` to be an integer array of shape ({out},), but got "
            f"{_describe(threshold)}"
        )
    direction = np.asarray(layer.direction)
    if direction.shape != (out,) or not _is_pm1(direction):
        raise ValueError(
            f"Expected `direction` to be an array of shape ({out},) of -1/+1 values, but got "
            f"{_describe(direction)}"
        )
    object.__setattr__(layer, "threshold", threshold.astype(np.int64))
    object.__setattr__(layer, "direction", direction.astype(np.int8))


def _is_pm1(array: np.ndarray) -> bool:
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        return False
    return bool(np.all((array == 1) | (array == -1)))


def _describe(value: object) -> str:
    if value is None:
        return "None"
    array = np.asarray(value)
    return f"shape {array.shape} and dtype {array.dtype}"
