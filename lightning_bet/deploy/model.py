"""The deploy-mode network: integer thresholds instead of BatchNorm (METHOD §7).

This is the reference semantics every export (bitstream + numpy interpreter, C runtime, TFLite)
must reproduce on every sample.

Semantics, for an input image of integer pixels ``q`` (the float input is ``q / input_levels``):

- Hidden layer ``l`` (dense, weights ``W`` in ``{-1, +1}^{out x in}``): integer pre-activation
  ``a = W @ v`` where ``v = q`` (first layer; one that binarizes its input is not exported)
  or ``v`` in ``{-1, +1}`` (previous layer's output). Output ``o_j = +1`` iff
  ``d_j * (a_j - T_j) >= 0``, else ``-1``, with integer threshold ``T_j`` and direction
  ``d_j`` in ``{-1, +1}``.
- Output layer: integer logits ``a = W @ v``; prediction ``argmax(a)`` (first index on ties);
  float logits are ``scale * a``.

Both dataclasses validate their fields in ``__post_init__`` (``ValueError``/``TypeError`` naming
the field) and normalize dtypes (int8 weights and directions, int64 thresholds). A model is
hidden layers then exactly one output layer; only layer 0 takes integer pixels
(``binary_input=False``), every later layer has ``binary_input=True``. The fold from BatchNorm is
``lightning_bet.deploy.fold.to_deploy``; the torch evaluation is ``deploy_forward``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lightning_bet._validation import check_positive_int, is_positive_int

__all__ = ["DeployLayer", "DeployModel"]


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
        out = weight.shape[0]
        if self.threshold is not None:
            threshold = np.asarray(self.threshold)
            if threshold.shape != (out,) or not np.issubdtype(threshold.dtype, np.integer):
                raise ValueError(
                    f"Expected `threshold` to be an integer array of shape ({out},), but got "
                    f"{_describe(threshold)}"
                )
            direction = np.asarray(self.direction)
            if direction.shape != (out,) or not _is_pm1(direction):
                raise ValueError(
                    f"Expected `direction` to be an array of shape ({out},) of -1/+1 values, but "
                    f"got {_describe(direction)}"
                )
            object.__setattr__(self, "threshold", threshold.astype(np.int64))
            object.__setattr__(self, "direction", direction.astype(np.int8))
        if not isinstance(self.binary_input, bool | np.bool_):
            raise TypeError(f"Expected `binary_input` to be a bool, but got {self.binary_input!r}")
        object.__setattr__(self, "binary_input", bool(self.binary_input))

    @property
    def shape(self) -> tuple[int, int]:
        """``(out_features, in_features)``."""
        return tuple(self.weight.shape)  # type: ignore[return-value]


@dataclass(frozen=True)
class DeployModel:
    """A deploy-mode fully connected BNN.

    Attributes:
        layers: hidden layers then the output layer (``threshold is None``), in order.
        input_levels: pixels are ``q / input_levels`` with integer ``q`` in
            ``[0, input_levels]`` (16 for digits, 255 for MNIST-style data).
        scale: positive float output scale ``s`` (logits ``s * a``).
        input_shape: shape of one sample before flattening, e.g. ``(1, 8, 8)``.
    """

    layers: tuple[DeployLayer, ...]
    input_levels: int
    scale: float
    input_shape: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        if not layers or not all(isinstance(layer, DeployLayer) for layer in layers):
            raise ValueError(
                f"Expected `layers` to be a non-empty sequence of DeployLayer, but got {layers!r}"
            )
        object.__setattr__(self, "layers", layers)
        for i, layer in enumerate(layers):
            last = i == len(layers) - 1
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
            if i > 0 and layer.shape[1] != layers[i - 1].shape[0]:
                raise ValueError(
                    f"Expected layer {i} to have {layers[i - 1].shape[0]} input features (the "
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
        if shape and math.prod(shape) != layers[0].shape[1]:
            raise ValueError(
                f"Expected `input_shape` {shape} to have {layers[0].shape[1]} elements (the "
                f"input features of layer 0), but it has {math.prod(shape)}"
            )
        object.__setattr__(self, "input_shape", shape)

    @property
    def in_features(self) -> int:
        """Number of input pixels of one (flattened) sample."""
        return self.layers[0].shape[1]

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        return self.layers[-1].shape[0]


def _is_pm1(array: np.ndarray) -> bool:
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        return False
    return bool(np.all((array == 1) | (array == -1)))


def _describe(value: object) -> str:
    if value is None:
        return "None"
    array = np.asarray(value)
    return f"shape {array.shape} and dtype {array.dtype}"
