"""``BitErrorTolerance``: the margin-based bit error tolerance metric (METHOD §4).

A torchmetrics ``Metric`` that holds a binarized network (as torchmetrics' FID holds its feature
network), runs it on batches ``update(x, y)`` and accumulates, per hidden layer, the normalized
margins ``m / sqrt(n)``, the tolerated flips ``t`` and the analytic neuron flip probability at
configured error rates. All states are sum-reduced counts or sums, so DDP reduces them exactly;
quantiles and medians come from fixed-bin histograms of those counts.

The scalar ``bet`` (logged as ``val/bet``) is the *predicted BET area* ``bet_pred`` (METHOD
§4b): the accuracy under bit errors predicted by propagating flip probabilities through the
network (:mod:`lightning_bet.functional.propagation`), integrated over the METHOD §6 grid like
the fault-injection BET area. The §4 predicted neuron *survival* rate (``1 - mean over hidden
layers and configured error rates of the predicted neuron flip rate``) stays available as
``survival``. ``lightning-bet validity`` tests both against the fault-injection BET area.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics import Metric

from lightning_bet._plotting import pyplot
from lightning_bet._threads import single_torch_thread
from lightning_bet._validation import check_positive_int
from lightning_bet.functional.faults import FaultModel
from lightning_bet.functional.margins import (
    fold_batchnorm,
    output_margin,
)
from lightning_bet.functional.propagation import (
    network_layers,
    predict_correct,
    read_error_rates,
)
from lightning_bet.layers import BinaryLinear, binary_layers
from lightning_bet.models import BNN
from lightning_bet.network import Network, fan_in
from lightning_bet.network import blocks as network_blocks

__all__ = ["BitErrorTolerance", "capture_activations", "resolve_bnn"]

#: Default error rates of the predicted flip rate (a spread over the METHOD §6 grid).
DEFAULT_ERROR_RATES = (0.005, 0.01, 0.02, 0.05, 0.1)

_SQRT_HALF = math.sqrt(0.5)
#: Rows the prediction waits for before it runs (see ``BitErrorTolerance._predict``).
PREDICT_CHUNK = 64


def resolve_bnn(model: nn.Module) -> BNN:
    """The :class:`~lightning_bet.models.BNN` inside ``model`` (itself, or ``model.net``).

    Raises:
        ValueError: ``model`` has no binary layers.
        TypeError: ``model`` has binary layers but is not a ``BNN`` nor holds one as ``.net``.

    """
    if isinstance(model, BNN):
        return model
    net = getattr(model, "net", None)
    if isinstance(net, BNN):
        return net
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected `model` to be an nn.Module, but got {type(model).__name__}")
    if next(binary_layers(model), None) is None:
        raise ValueError(
            f"Expected `model` to contain binary layers (BinaryLinear/BinaryConv2d), but "
            f"{type(model).__name__} has none"
        )
    raise TypeError(
        "Expected `model` to be a lightning_bet BNN or to hold one as `.net` (e.g. "
        f"BNNClassifier), but got {type(model).__name__}"
    )


@contextmanager
def capture_activations(net: Network, rows: int | None = None) -> Iterator[dict[str, Any]]:
    """Record, during forward passes of ``net``, what the metric needs.

    Yields a dict that every forward pass fills: ``"inputs"`` (list per hidden block: the input
    of its binary layer), ``"preacts"`` (list per hidden block: the BatchNorm input ``a``) and
    ``"logits"`` (the head's unscaled integer logits). Hooks are removed on exit, also after an
    exception.

    Args:
        net: the block view of the network (:func:`lightning_bet.network.blocks`).
        rows: of the hidden blocks' activations, keep copies of only the first ``rows`` samples
            of each batch (``None``: keep references to the whole tensors). Holding whole
            activations would keep them from being freed and reused during the forward pass;
            small copies let them go. The logits (one small row per sample) are always kept
            whole.
    """
    records: dict[str, Any] = {"inputs": {}, "preacts": {}, "logits": None}
    handles = []

    def kept(t: Tensor) -> Tensor:
        t = t.detach()
        return t if rows is None or t.shape[0] <= rows else t[:rows].clone()

    def keep(store: dict, index: int) -> Any:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            store[index] = kept(args[0])

        return hook

    def keep_logits(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        records["logits"] = output.detach()

    try:
        for i, block in enumerate(net.blocks):
            handles.append(block.layer.register_forward_pre_hook(keep(records["inputs"], i)))
            handles.append(block.bn.register_forward_pre_hook(keep(records["preacts"], i)))
        handles.append(net.head.layer.register_forward_hook(keep_logits))
        yield records
    finally:
        for handle in handles:
            handle.remove()


def _sum_squares(block: nn.Module, x: Tensor) -> Tensor:
    """``sum_i x_i^2`` over each neuron's receptive field, broadcastable to the pre-activation."""
    layer = block.layer
    x = x.detach()
    if isinstance(layer, BinaryLinear):
        return (x.flatten(1) ** 2).sum(1, keepdim=True)
    ones = torch.ones(1, layer.in_channels, *layer.kernel_size, dtype=x.dtype, device=x.device)
    sq = F.conv2d(x**2, ones, None, layer.stride, layer.padding, layer.dilation)
    return block.pool(sq) if block.pool is not None else sq


class BitErrorTolerance(Metric):
    """Bit error tolerance of a BNN without fault injection (METHOD §4 and §4b).

    Predicted accuracy (METHOD §4b): for each sample the probability ``P`` that it stays
    correctly classified when the stored weight bits read wrong, from one clean forward pass
    (:func:`~lightning_bet.functional.propagation.predict_correct`), at every error rate of the
    METHOD §6 grid and of ``error_rates``. The accuracy estimate is the control variate
    ``acc_pred(p) = clean accuracy (all samples) + mean over evaluated rows of (P - correct)``,
    so evaluating only some rows of each batch (``predict_rows``) adds little noise.

    Margin statistics (METHOD §4): for every hidden layer ``l`` (fan-in ``n``) and every neuron
    output of every sample: normalized margin ``m / sqrt(n)``, tolerated flips ``t`` (exact for
    binary inputs; for the real-valued first layer the guaranteed count ``t = max k with 2 k
    max_i |x_i| within the margin``, a lower bound) and the analytic probability that the
    output changes at each error rate in ``error_rates`` (lattice form with continuity
    correction for binary inputs, the continuous METHOD §4 formula with ``sum_i x_i^2`` for real
    inputs). For the output layer: the margin ``a_y - max_{c != y} a_c`` normalized by
    ``sqrt(n)``.

    Cost: the margin statistics are about fifteen elementwise passes per layer plus one ``erf``
    pass over all error rates, run on one intra-op thread (on a busy CPU, waking a thread pool
    for each of these cheap passes costs more than the arithmetic: measured 5-15x slower with 2
    threads than with 1 on a loaded 2-core machine), with the BatchNorm folding cached while
    the BatchNorm is unchanged. The prediction costs about two matrix products per hidden
    layer, evaluated row and error rate (``lightning-bet bench metric_cost``).
    :class:`~lightning_bet.callbacks.bet_logging.BetLogging` reuses the validation forward pass
    and feeds only the first samples of each batch to the hidden-layer statistics and the
    prediction.

    ``compute()`` returns a flat dict of 0-dim tensors:

    - ``"bet"`` = ``"bet_pred"``: the predicted BET area, the trapezoid area under
      ``acc_pred(p)`` over ``predict_grid`` (default: the METHOD §6 grid 0, 0.1%, 0.5%, 1%, 2%,
      3.3%, 5%, 7.5%, 10%) divided by the grid width, i.e. the fault-injection BET area of
      :func:`lightning_bet.sweeps.bet_area` predicted without fault injection; in [0, 1], higher
      is better. The documented scalar logged as ``val/bet``.
    - ``"acc_pred_p{p}"`` for each rate of ``error_rates`` (e.g. ``acc_pred_p0.01``, the
      predicted accuracy at ``p = 0.01``; key names use only characters every Lightning
      logger accepts).
    - ``"survival"``: ``1 - mean_{l, p} flip_rate_l(p)``, the METHOD §4 predicted neuron
      survival rate (the scalar ``val/bet`` was before the predictor).
    - ``"layer{l}/margin_mean"``, ``"layer{l}/margin_q{q}"`` (low quantiles of ``m / sqrt(n)``,
      resolved to the histogram bin width ``margin_range / margin_bins`` and reported as the
      lower edge of the bin), ``"layer{l}/tolerated_fraction_median"`` (median ``t / n``, exact:
      one bin per integer ``t``), ``"layer{l}/flip_rate_p{p}"`` (e.g. ``flip_rate_p0.01``).
    - ``"output/margin_mean"``, ``"output/margin_q{q}"`` (same binning over
      ``[-margin_range, margin_range]``).

    All states are sums (``dist_reduce_fx="sum"``), so under DDP the result equals one process
    seeing all the data.

    The model is held by reference, not registered as a submodule: the metric's ``state_dict``
    holds only its states, and moving the metric does not move the model. The forward pass runs
    with the network in eval mode (BatchNorm running statistics), restoring its mode after.

    Args:
        model: any module made of the project's binary layers (a
            :class:`~lightning_bet.models.BNN`, a ``BNNClassifier``, a user's ``nn.Sequential``
            or ``LightningModule``): its blocks are found by :func:`lightning_bet.network.blocks`.
        error_rates: error rates of the predicted flip rate and of ``acc_pred_p{p}``, each in
            [0, 1], non-empty.
        quantiles: low quantiles of the normalized margin to report, each in (0, 1).
        margin_range: upper end of the normalized margin histogram (larger values go to an
            overflow bin).
        margin_bins: number of histogram bins over ``[0, margin_range]``.
        fault_model: ``p -> FaultModel`` of the prediction (default: symmetric flips
            ``FaultModel(p=p)``), e.g. ``lambda p: FaultModel(p01=p, p10=p / 2)``.
        predict_grid: error rates of ``bet_pred`` (default: the METHOD §6 grid).
        predict_rows: predict only the first this many samples of each update (``None``: all
            samples given; clean accuracy always uses every sample).
        kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> from lightning_bet.models import build_model
        >>> metric = BitErrorTolerance(build_model(hidden=(32,)))
        >>> metric.update(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,)))
        >>> 0.0 <= float(metric.compute()["bet"]) <= 1.0
        True

    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def __init__(
        self,
        model: nn.Module,
        error_rates: Sequence[float] = DEFAULT_ERROR_RATES,
        quantiles: Sequence[float] = (0.01, 0.05, 0.1),
        margin_range: float = 16.0,
        margin_bins: int = 1024,
        fault_model: Callable[[float], FaultModel] | None = None,
        predict_grid: Sequence[float] | None = None,
        predict_rows: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        net = network_blocks(model, argument="model")
        if len(net.blocks) == 0:
            raise ValueError("Expected `model` to have at least one hidden binary block, but got 0")
        rates = tuple(error_rates) if isinstance(error_rates, Sequence) else (error_rates,)
        if not rates:
            raise ValueError("Expected `error_rates` to be a non-empty list, but got []")
        for p in rates:
            if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
                raise ValueError(
                    f"Expected `error_rates` to hold floats in [0, 1], but got {list(rates)!r}"
                )
        for q in quantiles:
            if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 < q < 1.0:
                raise ValueError(
                    f"Expected `quantiles` to hold floats in (0, 1), but got {list(quantiles)!r}"
                )
        if not isinstance(margin_range, int | float) or not margin_range > 0:
            raise ValueError(f"Expected `margin_range` to be a float > 0, but got {margin_range!r}")
        if isinstance(margin_bins, bool) or not isinstance(margin_bins, int) or margin_bins < 1:
            raise ValueError(
                f"Expected `margin_bins` to be a positive int, but got {margin_bins!r}"
            )
        if predict_rows is not None:
            check_positive_int("predict_rows", predict_rows, "a positive int or None")
        from lightning_bet.sweeps import DEFAULT_ERROR_RATES as BET_GRID
        from lightning_bet.sweeps import _check_grid

        grid = _check_grid(BET_GRID if predict_grid is None else predict_grid)
        make_fault = fault_model if fault_model is not None else (lambda p: FaultModel(p=p))
        object.__setattr__(self, "_net", net)  # held by reference, see the class docstring
        self.predict_grid = tuple(sorted(set(grid)))
        self.predict_rows = predict_rows
        self.predict_rates = tuple(sorted(set(self.predict_grid) | {float(p) for p in rates}))
        read = []
        for p in self.predict_rates:
            fm = make_fault(p)
            if not isinstance(fm, FaultModel):
                raise TypeError(
                    f"Expected `fault_model({p!r})` to return a FaultModel, but got "
                    f"{type(fm).__name__}"
                )
            read.append(read_error_rates(fm))
        self._read_rates = torch.tensor(read, dtype=torch.float64)
        # rates that can change a weight (P = correct exactly where no bit reads wrong)
        self._faulty = [i for i, rr in enumerate(read) if rr != (0.0, 0.0)]
        self._layers_cache: tuple[Any, list] | None = None
        self._pending: list[tuple[Tensor, Tensor]] = []  # rows waiting for the prediction
        self._pending_rows = 0
        self.error_rates = tuple(float(p) for p in rates)
        self.rates = self.error_rates
        self.quantiles = tuple(float(q) for q in quantiles)
        self.margin_range = float(margin_range)
        self.margin_bins = margin_bins
        self.fan_ins = [fan_in(block.layer) for block in net.blocks]
        self.head_fan_in = fan_in(net.head.layer)
        self._constants: dict[int, tuple[Any, dict[str, Any]]] = {}
        for i, n in enumerate(self.fan_ins):
            zeros = torch.zeros
            self.add_state(f"count_{i}", zeros((), dtype=torch.long), dist_reduce_fx="sum")
            self.add_state(f"margin_sum_{i}", zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(
                f"margin_hist_{i}", zeros(margin_bins + 1, dtype=torch.long), dist_reduce_fx="sum"
            )
            self.add_state(
                f"tolerated_hist_{i}", zeros(n + 1, dtype=torch.long), dist_reduce_fx="sum"
            )
            self.add_state(
                f"flip_sum_{i}",
                zeros(len(self.error_rates), dtype=torch.float64),
                dist_reduce_fx="sum",
            )
        self.add_state("out_count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("clean_correct", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("pred_rows", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state(
            "pred_gap_sum",
            torch.zeros(len(self.predict_rates), dtype=torch.float64),
            dist_reduce_fx="sum",
        )
        self.add_state("out_margin_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state(
            "out_margin_hist",
            torch.zeros(2 * margin_bins + 2, dtype=torch.long),
            dist_reduce_fx="sum",
        )

    @property
    def net(self) -> Network:
        """The block view of the network the metric measures."""
        return self._net

    def update(self, x: Tensor | dict[str, Any], y: Tensor, predict: bool = True) -> None:
        """Run the network on ``x`` (eval mode) and accumulate statistics.

        Args:
            x: ``(N, *input_shape)`` inputs, or the records of one forward pass taken with
                :func:`capture_activations` (lets a callback reuse the validation step's own
                forward pass instead of running the network a second time; the hidden blocks'
                records may hold only the first samples of the batch, the logits hold all).
            y: ``(N,)`` integer class labels.
            predict: also feed rows of this batch to the predicted accuracy (``False``: only
                clean accuracy and the margin statistics; the control variate stays unbiased).

        """
        if isinstance(x, dict):
            with single_torch_thread():
                self._accumulate(x, y)
            if predict:
                self._predict(x["inputs"][0], y.to(x["logits"].device))  # matmuls: all threads
            return
        self._check_batch(x, y)
        net = self._net.module
        modes = [m.training for m in net.modules()]
        try:
            net.eval()
            with torch.no_grad(), capture_activations(self._net) as records:
                net(x)
        finally:
            for module, mode in zip(net.modules(), modes, strict=True):
                module.training = mode
        with single_torch_thread():
            self._accumulate(records, y)
        if predict:
            self._predict(records["inputs"][0], y.to(x.device))

    @staticmethod
    def _check_batch(x: Tensor, y: Tensor) -> None:
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise TypeError(
                f"Expected `x` and `y` to be tensors, but got {type(x).__name__} and "
                f"{type(y).__name__}"
            )
        if y.dim() != 1 or x.dim() < 2 or x.shape[0] != y.shape[0]:
            raise ValueError(
                "Expected `x` of shape (N, ...) and `y` of shape (N,) with the same N, but got "
                f"{tuple(x.shape)} and {tuple(y.shape)}"
            )

    @torch.no_grad()
    def _accumulate(self, records: dict[str, Any], y: Tensor) -> None:
        """Accumulate statistics from activations recorded by :func:`capture_activations`."""
        net = self._net
        if records["logits"] is None or len(records["preacts"]) != len(net.blocks):
            raise ValueError(
                "Expected `records` from one complete forward pass of the network, but got "
                f"{len(records['preacts'])} of {len(net.blocks)} blocks"
            )
        logits = records["logits"]
        if y.dim() != 1 or logits.shape[0] != y.shape[0]:
            raise ValueError(
                f"Expected `y` of shape ({logits.shape[0]},) to match the recorded batch, but got "
                f"{tuple(y.shape)}"
            )
        for i, block in enumerate(net.blocks):
            self._update_layer(i, block, records["inputs"][i], records["preacts"][i])
        n = self.head_fan_in
        margin = output_margin(logits, y.to(logits.device)) / math.sqrt(n)
        width = self.margin_range / self.margin_bins
        index = torch.floor(margin / width).clamp(-self.margin_bins - 1, self.margin_bins)
        index = (index + self.margin_bins + 1).long()
        self.out_count += margin.numel()
        self.out_margin_sum += margin.sum().to(self.out_margin_sum.device)
        self.out_margin_hist += torch.bincount(index, minlength=2 * self.margin_bins + 2).to(
            self.out_margin_hist.device
        )
        target = y.to(logits.device)
        self.clean_correct += (logits.argmax(1) == target).sum().to(self.clean_correct.device)

    def _predict(self, x: Tensor, y: Tensor) -> None:
        """Queue the first rows of the batch; predict once :data:`PREDICT_CHUNK` rows wait.

        One call on many rows reads each weight matrix once for all of them: on the FCNN
        784-2048-2048-10, 16 rows in one call took 190 ms and 16 calls of one row 670 ms.
        """
        rows = x.shape[0] if self.predict_rows is None else min(x.shape[0], self.predict_rows)
        if rows == 0:
            return
        self._pending.append((x[:rows].detach().clone(), y[:rows].clone()))
        self._pending_rows += rows
        if self._pending_rows >= PREDICT_CHUNK:
            self._flush()

    def _flush(self) -> None:
        """Predict the queued rows and add ``sum (P - correct)`` per error rate to the state."""
        if not self._pending:
            return
        x = torch.cat([xb for xb, _ in self._pending])
        y = torch.cat([yb for _, yb in self._pending])
        self._pending, self._pending_rows = [], 0
        self.pred_rows += x.shape[0]
        if not self._faulty:
            return
        with torch.no_grad():
            prob, correct = predict_correct(
                self._propagation_layers(), x, y, self._read_rates[self._faulty]
            )
        gap = (prob.to(torch.float64) - correct.to(torch.float64)).sum(1)
        faulty = torch.tensor(self._faulty, device=self.device)
        self.pred_gap_sum.index_add_(0, faulty, gap.to(self.device))

    def sync(self, *args: Any, **kwargs: Any) -> None:
        """Predict the queued rows, then ``torchmetrics.Metric.sync`` (``compute`` syncs first)."""
        if not self._is_synced:
            self._flush()
        super().sync(*args, **kwargs)

    def _propagation_layers(self) -> list:
        """:func:`network_layers` of the network, cached while its tensors are unchanged."""
        net = self._net
        try:
            key = tuple(
                (id(t), t.data_ptr(), t._version, t.device)
                for t in (*net.module.parameters(), *net.module.buffers())
            )
        except RuntimeError:  # inference tensors have no version counter: do not cache
            key = None
        if key is not None and self._layers_cache is not None and self._layers_cache[0] == key:
            return self._layers_cache[1]
        layers = network_layers(net.blocks, net.head)
        self._layers_cache = (key, layers) if key is not None else None
        return layers

    def reset(self) -> None:
        """Reset the states and drop the cached per-layer constants."""
        super().reset()
        self._constants.clear()  # the propagation layers' cache is keyed by tensor versions
        self._pending, self._pending_rows = [], 0

    def _layer_constants(self, i: int, block: nn.Module, a: Tensor) -> dict[str, Any]:
        """Per-layer constants of the statistics, cached while the BatchNorm is unchanged.

        The cache key holds the identity, storage and version counter of every BatchNorm tensor
        (in-place updates such as optimizer steps or ``load_state_dict`` bump the version), so
        in validation the thresholds are folded once per epoch, not once per batch.
        """
        bn = block.bn
        try:
            key = (float(bn.eps), a.device, a.dim()) + tuple(
                (id(t), t.data_ptr(), t._version) if t is not None else None
                for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias)
            )
        except RuntimeError:  # inference tensors have no version counter: do not cache
            key = None
        cached = self._constants.get(i)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        n, device = self.fan_ins[i], a.device
        shape = (1, -1) + (1,) * (a.dim() - 2)
        rate_shape = (-1,) + (1,) * a.dim()  # broadcasts against (R, N, C, ...)
        tau, d = fold_batchnorm(bn)
        d64 = d.detach().to(device=device, dtype=torch.float64)
        dtau = d64 * tau.detach().to(device=device, dtype=torch.float64)
        constant = ~torch.isfinite(dtau)
        positive = [r for r, p in enumerate(self.rates) if p > 0.0]
        p = torch.tensor([self.rates[r] for r in positive], dtype=torch.float64, device=device)
        consts: dict[str, Any] = {
            "d": d64.to(torch.float32).view(shape),
            "positive": None
            if len(positive) == len(self.rates)
            else torch.tensor(positive, dtype=torch.long, device=device),
        }
        if block.layer.binarize_input:
            c = torch.ceil(dtau)
            constant = constant | (c <= -n) | (c > n)
            c = torch.where(constant, torch.zeros_like(c), c)
            consts["c"] = c.to(torch.float32).view(shape)
            consts["frac"] = (c - dtau).to(torch.float32).view(shape)  # in [0, 1)
            inv = torch.where(p < 1, torch.rsqrt(p * (1 - p) * n), torch.zeros_like(p))
            inv = inv * _SQRT_HALF
            consts["k_side"] = (inv * p).to(torch.float32).view(rate_shape)
            consts["k_half"] = inv.to(torch.float32).view(rate_shape)
        else:
            consts["dtau"] = (
                torch.where(constant, torch.zeros_like(dtau), dtau).to(torch.float32).view(shape)
            )
            consts["pq"] = (p * (1 - p)).to(torch.float32).view(rate_shape)
            consts["p_sqrt_half"] = (p * _SQRT_HALF).to(torch.float32).view(rate_shape)
        consts["constant"] = constant.view(shape) if bool(constant.any()) else None
        if key is not None:
            self._constants[i] = (key, consts)
        return consts

    def _update_layer(self, i: int, block: nn.Module, x: Tensor, a: Tensor) -> None:
        """Accumulate layer ``i`` in float32 with few passes over the ``(N, C, ...)`` values.

        Binary inputs (exact, integer arithmetic in float32): with ``b = d a`` and the integer
        ``c = ceil(d tau)``, ``u = b - c >= 0`` iff the output is ``+1`` and the tolerated flips
        are ``floor(u / 2)`` (``u >= 0``) or ``floor((-u - 1) / 2)`` (``u < 0``), i.e.
        ``t + 1/2 = |floor(u / 2) + 1/2|``, the same as
        :func:`~lightning_bet.functional.margins.tolerated_flips`. The flip probability is the
        lattice form of :func:`~lightning_bet.functional.margins.flip_probability`.
        Real inputs: tolerated flips use the bound ``2 k max_i |x_i|`` on how far ``k`` flips
        move ``a`` (a lower bound on the worst case; ``t + 1/2 = |floor(s / (2 max_i |x_i|)) +
        1/2|`` with the signed ``s = d (a - tau)``), and the flip probability the continuous
        METHOD formula with ``sum_i x_i^2``. The probabilities ``Phi(z) = (1 + erf(z /
        sqrt 2)) / 2`` of all ``R`` error rates are one ``(R, N, C, ...)`` pass; the per-layer
        constants are cached (:meth:`_layer_constants`).
        """
        n = self.fan_ins[i]
        k = self._layer_constants(i, block, a)
        constant = k["constant"]
        binary = block.layer.binarize_input
        a = a.to(torch.float32)
        b = a * k["d"]
        if binary:
            u = b - k["c"]
            half = u.mul(0.5).floor_().add_(0.5).abs_()  # t + 1/2
            s = u.add_(k["frac"])  # u + frac has the sign of u
        else:
            s = b - k["dtau"]
            xmax = x.detach().flatten(1).to(torch.float32).abs().amax(1).clamp_min(1e-30)
            step = s / xmax.mul_(2).view((-1,) + (1,) * (a.dim() - 1))
            half = step.floor_().add_(0.5).abs_().clamp_(max=n + 0.5)  # t + 1/2
        if constant is not None:
            s = torch.where(constant, torch.full_like(s, float("inf")), s)
            half = torch.where(constant, torch.full_like(half, n + 0.5), half)
        tolerated = half.int()  # trunc(t + 1/2) = t
        m = s.abs()
        # sb = b if s >= 0 else -b (where s is -0.0, b is 0 too)
        sb = torch.copysign(b, b * s)
        if binary:
            k_side, k_half, half_of = k["k_side"], k["k_half"], half
        else:  # z / sqrt(2) = (p sb - m / 2) / sqrt(2 p (1 - p) sum_i x_i^2)
            sum_sq = _sum_squares(block, x).to(torch.float32)
            inv = (k["pq"] * sum_sq).clamp_min_(1e-30).rsqrt_()
            k_side, k_half, half_of = inv * k["p_sqrt_half"], inv.mul_(0.5 * _SQRT_HALF), m
        # binary: z / sqrt(2) = (p sb - (t + 1/2)) / sqrt(2 p (1 - p) n); all error rates at once
        z = torch.mul(sb, k_side).addcmul_(half_of, k_half, value=-1.0)
        if constant is not None:
            z = torch.where(constant, torch.full_like(z, float("-inf")), z)
        flips = z.erf_().flatten(1).sum(1, dtype=torch.float64).add_(sb.numel()).mul_(0.5)
        scale = 1.0 / (math.sqrt(n) * self.margin_range / self.margin_bins)
        index = (m * scale).clamp_(max=self.margin_bins).int().flatten()
        if constant is not None:
            m = torch.nan_to_num(m, posinf=self.margin_range * math.sqrt(n))
        dev = self.device
        getattr(self, f"count_{i}").add_(m.numel())
        getattr(self, f"margin_sum_{i}").add_((m.sum(dtype=torch.float64) / math.sqrt(n)).to(dev))
        getattr(self, f"margin_hist_{i}").add_(
            torch.bincount(index, minlength=self.margin_bins + 1).to(dev)
        )
        getattr(self, f"tolerated_hist_{i}").add_(
            torch.bincount(tolerated.flatten(), minlength=n + 1).to(dev)
        )
        flip_sum = getattr(self, f"flip_sum_{i}")
        if k["positive"] is None:
            flip_sum.add_(flips.to(dev))
        else:
            flip_sum.index_add_(0, k["positive"].to(dev), flips.to(dev))

    @staticmethod
    def _hist_quantile(hist: Tensor, q: float) -> int:
        """Index of the bin holding the ``q`` quantile (the smallest with cumulative >= q)."""
        cum = hist.cumsum(0)
        total = int(cum[-1])
        return int(torch.searchsorted(cum, torch.tensor(math.ceil(q * total), device=cum.device)))

    def compute(self) -> dict[str, Tensor]:
        """Per-layer statistics and the scalar ``"bet"`` (see the class docstring)."""
        out: dict[str, Tensor] = {}
        width = self.margin_range / self.margin_bins
        rates = []
        for i, n in enumerate(self.fan_ins):
            count = int(getattr(self, f"count_{i}"))
            if count == 0:
                raise ValueError("Expected `update` to be called before `compute`, but got no data")
            out[f"layer{i}/margin_mean"] = getattr(self, f"margin_sum_{i}") / count
            hist = getattr(self, f"margin_hist_{i}")
            for q in self.quantiles:
                out[f"layer{i}/margin_q{q:g}"] = torch.tensor(
                    self._hist_quantile(hist, q) * width, dtype=torch.float64, device=self.device
                )
            t_median = self._hist_quantile(getattr(self, f"tolerated_hist_{i}"), 0.5)
            out[f"layer{i}/tolerated_fraction_median"] = torch.tensor(
                t_median / n, dtype=torch.float64, device=self.device
            )
            flip = getattr(self, f"flip_sum_{i}") / count
            rates.append(flip)
            for p, rate in zip(self.error_rates, flip, strict=True):
                out[f"layer{i}/flip_rate_p{p:g}"] = rate
        count = int(self.out_count)
        out["output/margin_mean"] = self.out_margin_sum / max(count, 1)
        for q in self.quantiles:
            k = self._hist_quantile(self.out_margin_hist, q) - self.margin_bins - 1
            out[f"output/margin_q{q:g}"] = torch.tensor(
                k * width, dtype=torch.float64, device=self.device
            )
        out["survival"] = 1.0 - torch.stack(rates).mean()
        rows = int(self.pred_rows)
        if rows == 0:
            raise ValueError("Expected `update` to be called before `compute`, but got no data")
        clean = self.clean_correct.to(torch.float64) / max(count, 1)
        acc = (clean + self.pred_gap_sum / rows).clamp(0.0, 1.0)
        for p in self.error_rates:
            out[f"acc_pred_p{p:g}"] = acc[self.predict_rates.index(p)]
        grid = torch.tensor(self.predict_grid, dtype=torch.float64, device=acc.device)
        on_grid = acc[[self.predict_rates.index(p) for p in self.predict_grid]]
        width = self.predict_grid[-1] - self.predict_grid[0]
        area = torch.trapezoid(on_grid, grid) / width if width > 0 else on_grid.mean()
        out["bet_pred"] = area
        out["bet"] = area
        return out

    def plot(self, val: dict[str, Tensor] | None = None, ax: Any = None) -> tuple[Any, Any]:
        """Predicted neuron flip rate over error rate, one line per hidden layer.

        Args:
            val: a result of :meth:`compute` (computed now when ``None``).
            ax: a matplotlib axis to draw into (a new figure when ``None``).

        Returns:
            ``(figure, axis)``.

        """
        plt = pyplot()

        val = self.compute() if val is None else val
        if ax is None:
            fig, ax = plt.subplots(figsize=(5, 3.5))
        else:
            fig = ax.get_figure()
        for i in range(len(self.fan_ins)):
            rates = [float(val[f"layer{i}/flip_rate_p{p:g}"]) for p in self.error_rates]
            ax.plot(self.error_rates, rates, marker="o", label=f"layer {i}")
        ax.set_xlabel("weight error rate p")
        ax.set_ylabel("predicted neuron flip rate")
        ax.set_title(f"BitErrorTolerance: bet = {float(val['bet']):.4f}")
        ax.legend()
        return fig, ax
