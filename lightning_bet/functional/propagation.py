"""Predicted accuracy under bit errors by propagating flip probabilities (METHOD §4b).

One clean forward pass per sample gives, for every error rate, the probability that the sample
is still classified correctly when the stored weight bits read wrong. The notation follows
METHOD §4b; the generalizations it leaves open are derived in ``docs/propagation.md``:

- Fault models: a stored ``+1`` (bit 0) reads wrong with ``pi_plus``, a stored ``-1`` (bit 1)
  with ``pi_minus`` (:func:`read_error_rates`: symmetric ``p``, asymmetric ``p01``/``p10`` and
  stuck-at cells all reduce to this pair). The expected read weight is ``omega = c0 W + c1``
  with ``c0 = 1 - pi_plus - pi_minus`` and ``c1 = pi_minus - pi_plus``; ``(1 - 2 pi)^2 = alpha +
  beta W``. Symmetric ``p``: ``omega = (1 - 2p) W``, ``beta = 0``, as in METHOD.
- Layers: ``mu_k = sum_j omega_kj v_j`` with ``v_j = h_j (1 - 2 q_j)`` and ``sigma_k^2 =
  sum_j (1 - (1 - 2 pi_kj)^2 (1 - 2 q_j)^2)`` (real first layer: ``v = x``, ``sigma^2 =
  sum_j x_j^2 (1 - (1 - 2 pi_kj)^2)``). Convolutions use the same sums over each position's
  receptive field (zero padding drops out). Max-pool: the pooled output is an OR (``d = +1``)
  or AND (``d = -1``) of the window's threshold decisions, taken as independent.
- Output: ``P = E_t[prod_{c != y} Phi((m_y - m_c - t_c + s_y t) / s_c)]`` with
  ``s_c = sqrt(kappa V_c)`` and a 16-node Gauss-Hermite rule.
- Shared-flip correction ``kappa``: the linear sensitivity ``S`` of ``D = a'_y - a'_{c*}`` to
  the expected value of every bit is propagated back through every layer pair (one transposed
  matmul per layer); a bit flip that moves many neurons of the next layer adds the
  off-diagonal part ``4 sum_j w_j ((sum_k S_k J_kj)^2 - sum_k (S_k J_kj)^2)``. For
  convolutions a kernel bit is one cell read at every position, so its flip moves all
  positions together: ``4 sum_b pi_b (1 - pi_b) (G_b^2 - sum_pos G_b,pos^2)`` with
  ``G_b = sum_pos U_k,pos v_pos+u`` (a per-sample weight gradient).

:func:`predict_correct` is the production path (float32, all error rates batched, dense and
convolutional layers); :func:`predict_correct_reference` computes the same quantities for
fully connected networks in float64 from explicit per-weight matrices, one error rate at a
time, and is what the tests hold the production path to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_bet.functional.binarize import sign
from lightning_bet.functional.faults import FaultModel
from lightning_bet.functional.margins import fold_batchnorm, tolerated_flips

__all__ = [
    "PropagationLayer",
    "network_layers",
    "predict_correct",
    "predict_correct_reference",
    "read_error_rates",
]

#: Gauss-Hermite nodes of the shared noise term of the output layer (METHOD §4b).
GAUSS_HERMITE_NODES = 16
_SQRT_HALF = math.sqrt(0.5)


class PropagationLayer(NamedTuple):
    """One binary layer as the propagation sees it.

    Attributes:
        weight: clean ``+-1`` weights, ``(K, J)`` (dense) or ``(K, C, kh, kw)`` (conv).
        tau: ``(K,)`` folded thresholds (:func:`fold_batchnorm`); ``None`` for the output layer.
        direction: ``(K,)`` folded directions in ``{-1, +1}``; ``None`` for the output layer.
        binary_input: whether the layer binarizes its input (``False``: real first layer).
        conv: ``(stride, padding, dilation)`` of a convolution, ``None`` for a dense layer.
        pool: max-pool kernel (= stride) applied before BatchNorm, ``None`` for none.
    """

    weight: Tensor
    tau: Tensor | None
    direction: Tensor | None
    binary_input: bool
    conv: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None
    pool: int | None = None


def read_error_rates(fault_model: FaultModel) -> tuple[float, float]:
    """``(pi_plus, pi_minus)``: probability that a stored ``+1`` / ``-1`` reads wrong.

    A stuck cell reads its fixed bit whatever flips would do (as
    :func:`~lightning_bet.functional.faults.sample_fault_indices` draws it), so
    ``pi_plus = stuck_at_1 + (1 - stuck) p01`` and ``pi_minus = stuck_at_0 + (1 - stuck) p10``.

    Example:
        >>> read_error_rates(FaultModel(p01=0.02, p10=0.01, stuck_at_1=0.5))
        (0.51, 0.005)

    """
    if not isinstance(fault_model, FaultModel):
        raise TypeError(
            f"Expected `fault_model` to be a FaultModel, but got {type(fault_model).__name__}"
        )
    r0, r1 = fault_model.flip_rates
    free = 1.0 - fault_model.stuck_at_0 - fault_model.stuck_at_1
    return fault_model.stuck_at_1 + free * r0, fault_model.stuck_at_0 + free * r1


@torch.no_grad()
def network_layers(blocks: Sequence[nn.Module], head: nn.Module) -> list[PropagationLayer]:
    """The :class:`PropagationLayer` s of hidden blocks and an output layer.

    Args:
        blocks: hidden blocks with ``.layer`` (``BinaryLinear``/``BinaryConv2d``), ``.pool``
            (``None`` or a non-overlapping ``nn.MaxPool2d``) and ``.bn``, in forward order.
        head: the output layer, with ``.layer`` (``BinaryLinear``).

    Raises:
        ValueError: a pool that is not a non-overlapping, unpadded max-pool.

    """
    layers = []
    for i, block in enumerate(blocks):
        layer = block.layer
        tau, d = fold_batchnorm(block.bn)
        conv = None
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
                raise ValueError(
                    f"Expected block {i} to be a plain convolution (groups=1, numeric zero "
                    f"padding), but got {layer!r}"
                )
            conv = (tuple(layer.stride), tuple(layer.padding), tuple(layer.dilation))
        pool = None
        if block.pool is not None:
            pool = _pool_kernel(i, block.pool)
        layers.append(
            PropagationLayer(
                sign(layer.weight.detach()),
                tau.detach(),
                d.detach(),
                bool(layer.binarize_input),
                conv,
                pool,
            )
        )
    layers.append(PropagationLayer(sign(head.layer.weight.detach()), None, None, True, None, None))
    return layers


def _pool_kernel(i: int, pool: nn.Module) -> int:
    ok = isinstance(pool, nn.MaxPool2d)
    if ok:
        k, s = pool.kernel_size, pool.stride
        k = k if isinstance(k, int) else k[0] if k[0] == k[1] else None
        s = s if isinstance(s, int) else s[0] if s[0] == s[1] else None
        pad = pool.padding if isinstance(pool.padding, int) else max(pool.padding)
        dil = pool.dilation if isinstance(pool.dilation, int) else max(pool.dilation)
        ok = k is not None and k == s and pad == 0 and dil == 1 and not pool.ceil_mode
    if not ok:
        raise ValueError(
            f"Expected the pool of block {i} to be a square, non-overlapping, unpadded "
            f"nn.MaxPool2d (kernel_size == stride), but got {pool!r}"
        )
    return int(k)


class _Op:
    """The linear map of one layer (dense or conv) and its transpose, on ``(B, ...)`` tensors."""

    def __init__(self, layer: PropagationLayer, dtype: torch.dtype, device: torch.device) -> None:
        self.w = layer.weight.to(device=device, dtype=dtype)
        self.conv = layer.conv
        if self.conv is not None:
            self.ones = torch.ones_like(self.w[:1])

    def __call__(self, x: Tensor, weight: Tensor | None = None) -> Tensor:
        w = self.w if weight is None else weight
        if self.conv is None:
            return x @ w.T
        stride, padding, dilation = self.conv
        return F.conv2d(x, w, None, stride, padding, dilation)

    def sum(self, x: Tensor) -> Tensor:
        """``sum_j x_j`` over each output's receptive field (broadcasts over outputs)."""
        if self.conv is None:
            return x.sum(-1, keepdim=True)
        return self(x, self.ones)

    def transpose(self, u: Tensor, like: Tensor, ones: bool = False) -> Tensor:
        """``sum_k u_k w_kj`` back onto the input positions (``ones``: all weights 1)."""
        if self.conv is None:
            return u.sum(-1, keepdim=True).expand_as(like) if ones else u @ self.w
        stride, padding, dilation = self.conv
        w = torch.ones_like(self.w) if ones else self.w
        return torch.nn.grad.conv2d_input(like.shape, w, u, stride, padding, dilation)

    def per_sample_weight_grad(self, u: Tensor, v: Tensor) -> Tensor:
        """``G_b = sum_pos u_k,pos v_pos+offset(b)`` for every kernel bit, ``(B, K, C kh kw)``."""
        stride, padding, dilation = self.conv
        cols = F.unfold(v, self.w.shape[2:], dilation, padding, stride)  # (B, C kh kw, P)
        return u.flatten(2) @ cols.transpose(1, 2)


def _flip_probability(
    a: Tensor, mu: Tensor, var: Tensor, tau: Tensor, d: Tensor, n: Tensor, binary: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Flip probability ``q``, clean side ``s >= 0`` and ``dP(o' = +1)/d mu`` of each neuron.

    ``q = Phi((g d (a - mu) - delta) / sigma)`` with ``g = +1`` where the clean ``s = d (a -
    tau) >= 0``, else ``-1``; ``delta = 2 t + 1`` on the lattice ``a + 2Z`` (binary inputs,
    ``t`` the tolerated flips of METHOD §4, continuity correction 1) and ``delta = |s|`` for
    real inputs. Neurons whose output cannot change (``gamma = 0``, or a threshold out of the
    reachable ``[-n, n]`` for binary inputs) get ``q = 0``.

    Args:
        a: clean pre-activations ``(N, K, ...)``: everything that depends only on them is
            computed once for all error rates.
        mu: ``(R N, K, ...)`` means, rate-major.
        var: variances, broadcastable to ``mu``.
        tau: ``(K,)`` thresholds.
        d: ``(K,)`` directions.
        n: fan-in per position, broadcastable to ``a``.
        binary: binary inputs (lattice) or real inputs.

    Returns:
        ``(q, side, slope)``: ``q`` and ``slope`` like ``mu``, ``side`` like ``a``.

    """
    shape = (1, -1) + (1,) * (a.dim() - 2)
    tau, d = tau.view(shape), d.view(shape)
    finite = torch.isfinite(tau)
    tau0 = torch.where(finite, tau, torch.zeros_like(tau))
    s = d * (a - tau0)
    side = s >= 0
    if binary:
        # 2 t + 1 = |2 floor(s / 2) + 1| for both sides (t = floor(s / 2) or ceil(-s / 2) - 1)
        delta = torch.floor(s * 0.5).mul_(2).add_(1).abs_()
        reachable = (d * (-n - tau0) >= 0) != (d * (n - tau0) >= 0)
        active = (finite & reachable).to(a.dtype)
    else:
        delta = s.abs()
        active = finite.to(a.dtype)
    gd = torch.where(side, d, -d)  # g d
    rates = mu.shape[0] // a.shape[0]
    base = (gd * a - delta).unsqueeze(0)  # (1, N, K, ...)
    sigma = var.clamp_min(1e-12).sqrt()  # p = 0: z -> -inf, q = 0, slope = 0
    num = base - gd * mu.view(rates, *a.shape)
    z = num.view_as(mu).div_(sigma)
    q = torch.special.ndtr(z).mul_(active)
    slope = z.square_().mul_(-0.5).exp_().mul_(1 / math.sqrt(2 * math.pi)).div_(sigma)
    slope = slope.mul_(d * active)
    return q, side, slope


def _max_pool(
    q: Tensor, side: Tensor, slope: Tensor, a_pool: Tensor, tau: Tensor, d: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """Pooled flip probability and per-position ``dP(o' = +1) / d mu`` (positions independent).

    ``d = +1``: the pooled output is ``+1`` iff some position of the window passes its
    threshold (OR); ``d = -1``: iff all pass (AND) (METHOD §7).

    Args:
        q: per-position flip probabilities ``(B, K, H, W)`` (from :func:`_flip_probability`).
        side: per-position clean decisions ``s >= 0``, like ``q``.
        slope: per-position ``dP(o' = +1) / d mu``, like ``q``.
        a_pool: clean pooled pre-activation ``(B, K, H / k, W / k)``.
        tau: ``(K,)`` thresholds.
        d: ``(K,)`` directions.
        k: pool kernel (= stride).

    """
    shape = (1, -1, 1, 1)
    tiny = torch.finfo(q.dtype).tiny
    passes = torch.where(side, 1 - q, q).clamp(0, 1)  # P(position passes after faults)

    def window_prod(x: Tensor) -> Tensor:
        return torch.exp(F.avg_pool2d(torch.log(x.clamp_min(tiny)), k) * (k * k))

    def up(x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=k, mode="nearest")

    none_pass, all_pass = window_prod(1 - passes), window_prod(passes)
    plus = (d.view(shape) > 0).expand_as(none_pass)
    p_plus = torch.where(plus, 1 - none_pass, all_pass)
    # dP(o' = +1) / dP_i: prod_{j != i} (1 - P_j) (OR) or prod_{j != i} P_j (AND)
    d_or = up(none_pass) / (1 - passes).clamp_min(tiny)
    d_and = up(all_pass) / passes.clamp_min(tiny)
    dp = torch.where(up(plus.to(q.dtype)) > 0, d_or, d_and).clamp(0, 1)
    finite = torch.isfinite(tau).view(shape)
    clean_plus = d.view(shape) * (a_pool - torch.where(finite, tau.view(shape), 0)) >= 0
    q_pool = torch.where(clean_plus, 1 - p_plus, p_plus)
    return torch.where(finite, q_pool, 0).clamp(0, 1), slope * dp


def _decide(a: Tensor, tau: Tensor, d: Tensor) -> Tensor:
    """Clean ``+-1`` outputs ``d (a - tau) >= 0`` (constant channels: ``tau = -inf`` is ``+1``)."""
    shape = (1, -1) + (1,) * (a.dim() - 2)
    tau, d = tau.view(shape), d.view(shape)
    finite = torch.isfinite(tau)
    out = torch.where(finite, d * (a - torch.where(finite, tau, 0)) >= 0, tau < 0)
    return torch.where(out, 1.0, -1.0).to(a.dtype)


@torch.no_grad()
def predict_correct(
    layers: Sequence[PropagationLayer],
    x: Tensor,
    target: Tensor,
    read_rates: Tensor,
    dtype: torch.dtype = torch.float32,
    nodes: int = GAUSS_HERMITE_NODES,
) -> tuple[Tensor, Tensor]:
    """Probability that each sample stays correct at each error rate (METHOD §4b).

    All error rates run as one batch of ``B = R N`` rows (rate-major).

    Args:
        layers: from :func:`network_layers`: hidden layers then the output layer.
        x: ``(N, ...)`` inputs of the first layer.
        target: ``(N,)`` class indices.
        read_rates: ``(R, 2)`` rows ``(pi_plus, pi_minus)`` (:func:`read_error_rates`).
        dtype: computation dtype (float32: production; float64 for checks).
        nodes: Gauss-Hermite nodes of the shared noise term.

    Returns:
        ``(P, correct)``: ``P`` of shape ``(R, N)`` in ``dtype``, and ``correct`` ``(N,)`` bool,
        whether the clean network (folded thresholds) classifies each sample correctly. The
        control-variate estimate of METHOD §4b is ``clean accuracy + mean(P - correct)``.

    Example:
        >>> from lightning_bet.models import build_model
        >>> net = build_model(hidden=(32,)).eval()
        >>> layers = network_layers(net.blocks, net.head)
        >>> rates = torch.tensor([[0.0, 0.0], [0.05, 0.05]])
        >>> x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
        >>> prob, correct = predict_correct(layers, x, y, rates)
        >>> prob.shape, bool((prob[0] == correct.float()).all())
        (torch.Size([2, 4]), True)

    """
    device = x.device
    rates = torch.as_tensor(read_rates).to(device=device, dtype=torch.float64)
    if rates.dim() != 2 or rates.shape[1] != 2 or not bool(((rates >= 0) & (rates <= 1)).all()):
        raise ValueError(
            "Expected `read_rates` of shape (R, 2) with probabilities in [0, 1], but got "
            f"{read_rates!r}"
        )
    if target.dim() != 1 or target.shape[0] != x.shape[0]:
        raise ValueError(
            f"Expected `target` of shape ({x.shape[0]},), but got {tuple(target.shape)}"
        )
    r, n_rows = rates.shape[0], x.shape[0]
    pp, pm = rates[:, 0], rates[:, 1]
    consts = {
        "c0": 1 - pp - pm,
        "c1": pm - pp,
        "alpha": ((1 - 2 * pp) ** 2 + (1 - 2 * pm) ** 2) / 2,
        "beta": ((1 - 2 * pp) ** 2 - (1 - 2 * pm) ** 2) / 2,
        "rho0": (pp * (1 - pp) + pm * (1 - pm)) / 2,
        "rho1": (pp * (1 - pp) - pm * (1 - pm)) / 2,
    }
    asym = bool((consts["beta"] != 0).any() or (consts["c1"] != 0).any())
    consts["cc"] = consts["c0"] ** 2 + consts["c1"] ** 2
    consts["2c0c1"] = 2 * consts["c0"] * consts["c1"]
    rows = {k: v.to(dtype).repeat_interleave(n_rows) for k, v in consts.items()}  # (B,)

    def col(name: str, like: Tensor) -> Tensor:
        return rows[name].view((-1,) + (1,) * (like.dim() - 1))

    def batch(t: Tensor) -> Tensor:  # (N, ...) -> (B, ...), rate-major
        return t.unsqueeze(0).expand(r, *t.shape).reshape(r * n_rows, *t.shape[1:])

    h = x.to(dtype)
    q: Tensor | None = None  # (B, ...) flip probabilities of the current layer's inputs
    saved = []
    for layer in layers[:-1]:
        op = _Op(layer, dtype, device)
        if op.conv is None:
            h = h.flatten(1)
            q = None if q is None else q.flatten(1)
        if layer.binary_input:
            h = sign(h)
        a = op(h)  # (N, K, ...) clean, before pooling
        n = op.sum(torch.ones_like(h[:1]))
        a_b = batch(a)
        if q is None:
            v = batch(h)
            sq = h * h
            mu = col("c0", a_b) * a_b + col("c1", a_b) * batch(op.sum(h))
            var = col("alpha", a_b).neg().add(1) * batch(op.sum(sq))
            if asym:
                var = var - col("beta", a_b) * batch(op(sq))
        else:
            v = batch(h) * (1 - 2 * q)
            big_q = (1 - 2 * q) ** 2
            mu = col("c0", a_b) * op(v) + col("c1", a_b) * op.sum(v)
            var = n - col("alpha", a_b) * op.sum(big_q)
            if asym:
                var = var - col("beta", a_b) * op(big_q)
        tau = layer.tau.to(device=device, dtype=dtype)
        d = layer.direction.to(device=device, dtype=dtype)
        q_new, side, slope = _flip_probability(a, mu, var, tau, d, n, layer.binary_input)
        if layer.pool is not None:
            a = F.max_pool2d(a, layer.pool)
            q_new, slope = _max_pool(q_new, batch(side), slope, batch(a), tau, d, layer.pool)
        saved.append((op, layer, v, q, slope, a.shape[1:]))
        h = _decide(a, tau, d)
        q = q_new
    head = layers[-1]
    w = head.weight.to(device=device, dtype=dtype)
    h = h.flatten(1)
    if head.binary_input:
        h = sign(h)
    correct = (h @ w.T).argmax(1) == target
    num_classes, fan = w.shape
    q = torch.zeros(r * n_rows, fan, dtype=dtype, device=device) if q is None else q.flatten(1)
    v = batch(h) * (1 - 2 * q)
    big_q = (1 - 2 * q) ** 2
    m = col("c0", v) * (v @ w.T) + col("c1", v) * v.sum(-1, keepdim=True)  # (B, C)
    var_c = fan - col("alpha", v) * big_q.sum(-1, keepdim=True)
    if asym:
        var_c = var_c - col("beta", v) * (big_q @ w.T)
    var_c = var_c.clamp_min(0).expand(-1, num_classes)
    y = batch(target.view(-1, 1))
    runner = m.scatter(1, y, -torch.inf).argmax(1, keepdim=True)  # c*
    omega_y = col("c0", v) * w[y.squeeze(1)] + col("c1", v)
    omega_c = col("c0", v) * w[runner.squeeze(1)] + col("c1", v)
    cov = 4 * (omega_y * omega_c * q * (1 - q)).sum(-1)
    var_d = var_c.gather(1, y).squeeze(1) + var_c.gather(1, runner).squeeze(1) - 2 * cov
    sens = omega_y - omega_c  # dE[D] / dE[h_k] for the head's inputs, (B, J)
    extra = torch.zeros_like(var_d)
    for op, layer, v, q_in, slope, out_shape in reversed(saved):
        sens = sens.reshape(-1, *out_shape)
        if layer.pool is not None:
            sens = F.interpolate(sens, scale_factor=layer.pool, mode="nearest")
        u = 2 * slope * sens  # dE[D] / d mu of this layer's neurons
        if layer.conv is not None:  # a kernel bit moves every position at once
            grad = op.per_sample_weight_grad(u, v)  # (B, K, C kh kw)
            wflat = op.w.flatten(1)
            rho_b = col("rho0", grad) + col("rho1", grad) * wflat
            coherent = (rho_b * grad * grad).flatten(1).sum(1)
            v2 = v * v
            spread = col("rho0", u) * op.sum(v2)
            if asym:
                spread = spread + col("rho1", u) * op(v2)
            extra = extra + 4 * (coherent - (u * u * spread).flatten(1).sum(1))
        if q_in is None:
            break
        sens = col("c0", u) * op.transpose(u, q_in) + col("c1", u) * op.transpose(
            u, q_in, ones=True
        )
        w_in = q_in * (1 - q_in)
        reach = col("cc", u) * op.sum(w_in)  # sum_j w_j omega_kj^2
        if asym:
            reach = reach + col("2c0c1", u) * op(w_in)
        off = (sens * sens * w_in).flatten(1).sum(1) - (u * u * reach).flatten(1).sum(1)
        extra = extra + 4 * off
    safe = var_d > 0
    kappa = torch.where(safe, (var_d + extra) / torch.where(safe, var_d, 1), 1).clamp_min(1)
    prob = _stay_correct(m, var_c * kappa.unsqueeze(1), y.squeeze(1), nodes)
    return prob.view(r, n_rows), correct


def _stay_correct(m: Tensor, var: Tensor, target: Tensor, nodes: int) -> Tensor:
    """``E_t[prod_{c != y} Phi((m_y - m_c - t_c + s_y t) / s_c)]`` by Gauss-Hermite, ``(B,)``.

    ``t_c = +1`` for ``c < y`` and ``-1`` for ``c > y``: argmax breaks ties toward index 0.
    """
    t_nodes, t_weights = np.polynomial.hermite_e.hermegauss(nodes)
    t_nodes = torch.as_tensor(t_nodes, dtype=m.dtype, device=m.device)
    t_weights = torch.as_tensor(t_weights / t_weights.sum(), dtype=m.dtype, device=m.device)
    y = target.view(-1, 1)
    s = var.clamp_min(0).sqrt()
    index = torch.arange(m.shape[1], device=m.device).view(1, -1)
    gap = m.gather(1, y) - m - torch.where(index < y, 1.0, -1.0).to(m.dtype)  # (B, C)
    num = gap.unsqueeze(-1) + s.gather(1, y).unsqueeze(-1) * t_nodes  # (B, C, T)
    zero = (s == 0).unsqueeze(-1)
    arg = torch.where(zero, torch.where(num >= 0, torch.inf, -torch.inf), num / s.unsqueeze(-1))
    phi = torch.where((index == y).unsqueeze(-1), 1.0, torch.special.ndtr(arg))
    return (phi.prod(1) * t_weights).sum(-1)


@torch.no_grad()
def predict_correct_reference(
    layers: Sequence[PropagationLayer],
    x: Tensor,
    target: Tensor,
    read_rates: Sequence[tuple[float, float]],
    nodes: int = GAUSS_HERMITE_NODES,
) -> tuple[Tensor, Tensor]:
    """Float64 reference of :func:`predict_correct` for fully connected networks.

    One error rate at a time, with explicit ``(N, K, J)`` matrices of the per-weight wrong-bit
    probability ``e_kj = pi_kj + (1 - 2 pi_kj) q_j``, the Jacobian ``J_kj = 2 g_k omega_kj``
    and the off-diagonal shared-flip variance, and a loop over the output classes. Slow; for
    tests and small networks.

    Returns:
        ``(P, correct)`` as :func:`predict_correct`, ``P`` in float64.

    """
    if any(layer.conv is not None for layer in layers):
        raise ValueError("Expected fully connected `layers` in the reference, but got a conv layer")
    out = []
    correct = None
    t_nodes, t_weights = np.polynomial.hermite_e.hermegauss(nodes)
    t_weights = t_weights / t_weights.sum()
    for pp, pm in read_rates:
        h = x.to(torch.float64).flatten(1)
        q = None
        saved = []
        for layer in layers[:-1]:
            w = layer.weight.to(torch.float64)
            if layer.binary_input:
                h = sign(h)
            pi = torch.where(w >= 0, float(pp), float(pm)).to(torch.float64)  # (K, J)
            omega = w * (1 - 2 * pi)
            n = w.shape[1]
            a = h @ w.T
            if q is None:
                mu = h @ omega.T
                var = (h * h) @ (4 * pi * (1 - pi)).T
            else:
                e = pi.unsqueeze(0) + (1 - 2 * pi).unsqueeze(0) * q.unsqueeze(1)  # (N, K, J)
                mu = (w.unsqueeze(0) * h.unsqueeze(1) * (1 - 2 * e)).sum(2)
                var = (4 * e * (1 - e)).sum(2)
            tau, d = layer.tau.to(torch.float64), layer.direction.to(torch.float64)
            s = d * (a - torch.where(torch.isfinite(tau), tau, 0))
            g = torch.where(s >= 0, 1.0, -1.0)
            if layer.binary_input:
                t = tolerated_flips(a, tau, d, n).to(torch.float64)
                t_raw = torch.where(s >= 0, torch.floor(s / 2), torch.ceil(-s / 2) - 1)
                fixed = t >= n  # unreachable threshold or gamma = 0: cannot flip
                delta = 2 * t_raw + 1
            else:
                fixed = ~torch.isfinite(tau).expand_as(a)
                delta = s.abs()
            sigma = var.sqrt()
            z = (g * d * (a - mu) - delta) / sigma
            qk = torch.where(fixed, 0.0, torch.special.ndtr(z))
            slope = torch.where(
                fixed, 0.0, d * torch.exp(-z * z / 2) / math.sqrt(2 * math.pi) / sigma
            )
            saved.append((omega, q, slope))
            h = torch.where(s >= 0, 1.0, -1.0)
            h = torch.where(torch.isfinite(tau), h, torch.where(tau < 0, 1.0, -1.0))
            h = h.to(torch.float64)
            q = qk
        w = layers[-1].weight.to(torch.float64)
        pi = torch.where(w >= 0, float(pp), float(pm)).to(torch.float64)
        omega = w * (1 - 2 * pi)
        logits = h @ w.T
        correct = logits.argmax(1) == target
        e = pi.unsqueeze(0) + (1 - 2 * pi).unsqueeze(0) * q.unsqueeze(1)  # (N, C, J)
        m = (w.unsqueeze(0) * h.unsqueeze(1) * (1 - 2 * e)).sum(2)
        v_c = (4 * e * (1 - e)).sum(2)
        probs = torch.empty(h.shape[0], dtype=torch.float64)
        for i in range(h.shape[0]):
            yi = int(target[i])
            others = [c for c in range(w.shape[0]) if c != yi]
            cs = others[int(torch.argmax(m[i, others]))]
            cov = 0.0
            for k in range(w.shape[1]):
                qk = float(q[i, k])
                cov += float(omega[yi, k] * omega[cs, k]) * 4 * qk * (1 - qk)
            var_d = float(v_c[i, yi] + v_c[i, cs]) - 2 * cov
            sens = (omega[yi] - omega[cs]) * torch.ones_like(h[i])
            extra = 0.0
            for omega_l, q_in, slope in reversed(saved):
                jac = 2 * slope[i].unsqueeze(1) * omega_l  # (K, J): dE[h_k]/dE[h_j]
                if q_in is None:
                    break
                contrib = sens.unsqueeze(1) * jac  # (K, J)
                wj = q_in[i] * (1 - q_in[i])
                extra += 4 * float(((contrib.sum(0) ** 2 - (contrib**2).sum(0)) * wj).sum())
                sens = contrib.sum(0)
            kappa = max(1.0, (var_d + extra) / var_d) if var_d > 0 else 1.0
            s_c = torch.sqrt(kappa * v_c[i])
            total = 0.0
            for tn, tw in zip(t_nodes, t_weights, strict=True):
                prod = 1.0
                for c in others:
                    tie = 1.0 if c < yi else -1.0
                    num = float(m[i, yi] - m[i, c]) - tie + float(s_c[yi]) * tn
                    if float(s_c[c]) == 0:
                        prod *= 1.0 if num >= 0 else 0.0
                    else:
                        prod *= float(torch.special.ndtr(torch.tensor(num / float(s_c[c]))))
                total += tw * prod
            probs[i] = total
        out.append(probs)
    return torch.stack(out), correct
