"""The deploy-mode network: integer thresholds instead of BatchNorm (METHOD §7).

This is the reference semantics every export (bitstream + numpy interpreter, C runtime, TFLite)
must reproduce on every sample.

Semantics, for an input image of integer pixels ``q`` (the float input is ``q / input_levels``):

- Hidden layer ``l`` (dense, weights ``W`` in ``{-1, +1}^{out x in}``): integer pre-activation
  ``a = W @ v`` where ``v = q`` (first layer, unless ``binarize_input``) or ``v`` in
  ``{-1, +1}`` (previous layer's output). Output ``o_j = +1`` iff ``d_j * (a_j - T_j) >= 0``,
  else ``-1``, with integer threshold ``T_j`` and direction ``d_j`` in ``{-1, +1}``.
- Output layer: integer logits ``a = W @ v``; prediction ``argmax(a)`` (first index on ties);
  float logits are ``scale * a``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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
