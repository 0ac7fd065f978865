"""Binary layers: ``nn.Linear`` / ``nn.Conv2d`` with binarized weights (and inputs).

The layers hold latent float weights and apply :func:`~lightning_bet.functional.binarize_weight`
in the forward pass; they have no math of their own. Faults are applied from outside: a training
callback (``BitFlipTraining``) sets a transient fault map, ``layer.sign_flips``, that the forward
pass applies to the binary weights (``M ⊙ sign(W)``, via
:func:`~lightning_bet.functional.binarize_weight_flipped`) until it clears it again; the latent
weights themselves are never modified. Evaluation code applies faults through
``lightning_bet.functional.faults`` on copies.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_bet._validation import check_positive_int
from lightning_bet.functional.binarize import binarize_activation, binarize_weight
from lightning_bet.functional.flips import SignFlips, binarize_weight_flipped

__all__ = ["BinaryConv2d", "BinaryLinear", "Sign", "binary_layers", "clip_latent_weights_"]


class _BinaryMixin:
    """Shared behaviour of binary layers: latent weights in [-1, 1], optional input binarization."""

    weight: Tensor
    binarize_input: bool
    #: Fault map the forward pass applies to ``sign(weight)``; ``None``: clean weights. Set and
    #: cleared by ``BitFlipTraining`` around each training micro-batch; not part of the state.
    sign_flips: SignFlips | None = None

    def __getstate__(self) -> dict:
        # a fault map belongs to one training micro-batch of this instance: copies and pickles
        # (deepcopy, torch.save of the module, ddp_spawn) start clean
        state = super().__getstate__()  # nn.Module's: a copy of __dict__
        state.pop("sign_flips", None)
        return state

    def binary_weight(self) -> Tensor:
        """The clean ``sign(weight)`` with the weight STE, shape of ``weight``.

        Pending :attr:`sign_flips` are not applied (the forward pass applies them).
        """
        return binarize_weight(self.weight)

    def _forward_weight(self) -> Tensor:
        if self.sign_flips is None:
            return binarize_weight(self.weight)
        return binarize_weight_flipped(self.weight, self.sign_flips)

    def _quantize_input(self, x: Tensor) -> Tensor:
        return binarize_activation(x) if self.binarize_input else x


class BinaryLinear(_BinaryMixin, nn.Linear):
    """Linear layer with binary weights ``sign(W)`` and, by default, binary inputs ``sign(x)``.

    Forward: ``y = q(x) @ sign(W).T + b`` where ``q = sign`` (hardtanh STE) when
    ``binarize_input`` else the identity (``M ⊙ sign(W)`` while :attr:`sign_flips` holds a fault
    map ``M``). Pseudo-gradient of the weights: weight STE
    ``1{|W| <= 1}``. Latent weights start
    with ``nn.Linear``'s initialisation (small, so that signs move early in training).

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: as in ``nn.Linear``. The reference models pass ``False`` (BatchNorm follows).
        device: as in ``nn.Linear``.
        dtype: as in ``nn.Linear``.
        binarize_input: apply ``sign`` (with the hardtanh STE) to the input. ``False`` for a
            first layer that takes real-valued pixels.

    Shape:
        - Input: ``(*, in_features)``.
        - Output: ``(*, out_features)``.

    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        binarize_input: bool = True,
    ) -> None:
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            check_positive_int(name, value)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.binarize_input = binarize_input

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"Expected the input of {type(self).__name__} to have {self.in_features} features "
                f"in its last dimension, but got shape {tuple(x.shape)}"
            )
        return F.linear(self._quantize_input(x), self._forward_weight(), self.bias)

    def extra_repr(self) -> str:  # noqa: D102
        return f"{super().extra_repr()}, binarize_input={self.binarize_input}"


class BinaryConv2d(_BinaryMixin, nn.Conv2d):
    """2-D convolution with binary weights ``sign(W)`` and, by default, binary inputs ``sign(x)``.

    Same constructor arguments and defaults as ``nn.Conv2d``, plus ``binarize_input``. Zero
    padding pads the (binarized) input with 0, as in larq's default; the margin and export code
    treat padded positions as contributing 0.

    Args:
        in_channels: as in ``nn.Conv2d``.
        out_channels: as in ``nn.Conv2d``.
        kernel_size: as in ``nn.Conv2d``.
        stride: as in ``nn.Conv2d``.
        padding: as in ``nn.Conv2d``.
        dilation: as in ``nn.Conv2d``.
        groups: as in ``nn.Conv2d``.
        bias: as in ``nn.Conv2d``. The reference models pass ``False`` (BatchNorm follows).
        padding_mode: as in ``nn.Conv2d``.
        device: as in ``nn.Conv2d``.
        dtype: as in ``nn.Conv2d``.
        binarize_input: apply ``sign`` (with the hardtanh STE) to the input.

    Shape:
        - Input: ``(N, in_channels, H, W)``.
        - Output: ``(N, out_channels, H_out, W_out)`` as in ``nn.Conv2d``.

    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        binarize_input: bool = True,
    ) -> None:
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            check_positive_int(name, value)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self.binarize_input = binarize_input

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"Expected the input of {type(self).__name__} to have shape "
                f"(N, {self.in_channels}, H, W), but got shape {tuple(x.shape)}"
            )
        return self._conv_forward(self._quantize_input(x), self._forward_weight(), self.bias)

    def extra_repr(self) -> str:  # noqa: D102
        return f"{super().extra_repr()}, binarize_input={self.binarize_input}"


class Sign(nn.Module):
    """The sign activation as a module, for ``nn.Sequential`` networks: ``binarize_activation``.

    Forward: ``sign(x)`` with ``sign(0) = +1``. Pseudo-gradient: hardtanh,
    ``dL/dx = dL/dy * 1{|x| <= 1}``. Put it after each hidden BatchNorm (or let the next binary
    layer binarize its input with ``binarize_input=True``, which computes the same).

    Shape:
        - Input: any.
        - Output: same as the input.

    Example:
        >>> Sign()(torch.tensor([-0.5, 0.0, 2.0]))
        tensor([-1.,  1.,  1.])

    """

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return binarize_activation(x)


def binary_layers(module: nn.Module) -> Iterator[tuple[str, BinaryLinear | BinaryConv2d]]:
    """Yield ``(qualified_name, layer)`` for every binary layer in ``module``, in forward order."""
    for name, sub in module.named_modules():
        if isinstance(sub, BinaryLinear | BinaryConv2d):
            yield name, sub


@torch.no_grad()
def clip_latent_weights_(module: nn.Module, bound: float = 1.0) -> None:
    """Clip the latent weights of every binary layer in ``module`` to ``[-bound, bound]`` in place.

    In place matters: ``layer.weight = layer.weight.clamp(...)`` would rebind the attribute and
    leave the optimizer updating a tensor the model no longer uses.
    """
    for _, layer in binary_layers(module):
        layer.weight.clamp_(-bound, bound)
