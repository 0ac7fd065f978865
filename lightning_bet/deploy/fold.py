"""Deploy mode: fold a trained fully connected BNN into integer thresholds (METHOD §4, §7).

:func:`to_deploy` turns a :class:`~lightning_bet.models.BNN` into a
:class:`~lightning_bet.deploy.model.DeployModel`; :func:`deploy_forward` (or
:class:`DeployModule`) evaluates it with exact integer arithmetic. That evaluation is the
reference semantics every export (bitstream + numpy interpreter, C runtime, TFLite) must match on
every sample.

Threshold rule. BatchNorm (eval mode) then ``sign`` is ``o = +1`` iff ``d (a_float - tau) >= 0``
(:func:`~lightning_bet.functional.margins.fold_batchnorm`). The first layer sees pixels
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
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor, nn

from lightning_bet._validation import check_positive_int
from lightning_bet.deploy.model import DeployLayer, DeployModel
from lightning_bet.functional.margins import fold_batchnorm
from lightning_bet.layers import BinaryLinear
from lightning_bet.network import blocks as network_blocks

__all__ = ["DeployModule", "deploy_forward", "fold_thresholds", "to_deploy"]

_INT32_MAX = 2**31 - 1


def fold_thresholds(
    tau: np.ndarray | Tensor, d: np.ndarray | Tensor, levels: int, fan_in: int
) -> np.ndarray:
    """Integer thresholds ``T`` for pre-activations ``a`` with ``a_float = a / levels``.

    Args:
        tau: ``(C,)`` real thresholds (``+-inf`` allowed) from ``fold_batchnorm``.
        d: ``(C,)`` directions in ``{-1, +1}``.
        levels: ``L``: the layer's float pre-activation is ``a / L`` (1 for binary inputs).
        fan_in: ``n``; ``|a| <= n * L``.

    Returns:
        int64 ``(C,)``: ``ceil(L tau)`` where ``d = +1``, ``floor(L tau)`` where ``d = -1``
        (exact for the float64 value of ``tau``), clamped to ``[-n L - 1, n L + 1]``.

    Example:
        >>> fold_thresholds(np.array([0.3, 0.3, -np.inf]), np.array([1, -1, 1]), 16, 4)
        array([  5,   4, -65])

    """
    tau64 = np.asarray(tau.detach().cpu() if isinstance(tau, Tensor) else tau, dtype=np.float64)
    d64 = np.asarray(d.detach().cpu() if isinstance(d, Tensor) else d, dtype=np.float64)
    if tau64.ndim != 1 or tau64.shape != d64.shape:
        raise ValueError(
            f"Expected `tau` and `d` of the same shape (C,), but got {tau64.shape} and {d64.shape}"
        )
    bound = fan_in * levels + 1
    if bound > _INT32_MAX:
        raise ValueError(
            f"Expected `fan_in * levels + 1` to fit int32, but got {fan_in} * {levels} + 1"
        )
    if np.isnan(tau64).any():
        raise ValueError("Expected `tau` to contain no NaN (a BatchNorm with NaN statistics?)")
    # exact rational ceil/floor of L * tau for the float64 tau: a float64 product could round
    # onto an integer (e.g. 3 * float(-14/3) == -14.0) and move the threshold by one
    folded = np.array(
        [
            t if math.isinf(t) else (math.ceil if dj > 0 else math.floor)(Fraction(t) * levels)
            for t, dj in zip(tau64.tolist(), d64.tolist(), strict=True)
        ],
        dtype=np.float64,
    )
    return np.clip(folded, -bound, bound).astype(np.int64)


def _check_block(index: int, block: nn.Module) -> None:
    layer = getattr(block, "layer", None)
    if not isinstance(layer, BinaryLinear):
        raise ValueError(
            f"Expected every hidden block to hold a BinaryLinear (fully connected BNN), but block "
            f"{index} holds {type(layer).__name__}; convolutional networks cannot be exported"
        )
    if getattr(block, "pool", None) is not None:
        raise ValueError(
            f"Expected hidden block {index} to have no pooling, but got {type(block.pool).__name__}"
        )
    bn = getattr(block, "bn", None)
    if not isinstance(bn, nn.BatchNorm1d):
        raise ValueError(
            f"Expected hidden block {index} to have a BatchNorm1d, but got {type(bn).__name__}"
        )
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f"Expected the BatchNorm of hidden block {index} to track running statistics, but it "
            "has track_running_stats=False"
        )
    if layer.bias is not None:
        raise ValueError(f"Expected the BinaryLinear of hidden block {index} to have no bias")


def to_deploy(net: nn.Module, input_levels: int) -> DeployModel:
    """Fold a fully connected binarized network into deploy mode.

    BatchNorm uses its running statistics (eval mode), whatever ``net.training`` is.

    Args:
        net: any module whose blocks (:func:`lightning_bet.network.blocks`) are
            ``BinaryLinear -> BatchNorm1d -> sign`` (no pooling), then an output ``BinaryLinear``
            (an ``OutputLayer``'s scale is kept; a bare ``BinaryLinear`` has scale 1): a ``BNN``,
            a ``BNNClassifier``, a user's ``nn.Sequential`` or ``LightningModule``. The first
            layer takes real pixels (``binarize_input=False``).
        input_levels: ``L``: inputs are ``q / L`` with integer ``q`` in ``[0, L]``.

    Returns:
        The :class:`DeployModel` (int8 weights, int64 thresholds, int8 directions).

    Raises:
        ValueError: for convolutional or pooled blocks, a missing BatchNorm, a first layer that
            binarizes its input, or a bad ``input_levels``.

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
    layers = []
    with torch.no_grad():
        for i, block in enumerate(blocks):
            weight = block.layer.binary_weight()
            # float64 statistics promote the whole fold to float64 (see the module docstring)
            tau, d = fold_batchnorm(
                block.bn, mean=block.bn.running_mean.double(), var=block.bn.running_var.double()
            )
            levels = input_levels if i == 0 else 1
            layers.append(
                DeployLayer(
                    weight=weight.detach().cpu().numpy().astype(np.int8),
                    threshold=fold_thresholds(tau, d, levels, block.layer.in_features),
                    direction=d.cpu().numpy().astype(np.int8),
                    binary_input=i > 0,
                )
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
    input_shape = view.input_shape or ()
    if input_shape and math.prod(input_shape) != layers[0].shape[1]:
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

    def forward(self, q: Tensor) -> Tensor:  # noqa: D102
        v = self.check_input(q)
        for i in range(self.num_layers - 1):
            a = v @ getattr(self, f"weight{i}").T
            threshold = getattr(self, f"threshold{i}").to(torch.float64)
            direction = getattr(self, f"direction{i}").to(torch.float64)
            v = torch.where(direction * (a - threshold) >= 0, 1.0, -1.0).to(torch.float64)
        a = v @ getattr(self, f"weight{self.num_layers - 1}").T
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
