"""Device agnosticism: every tensor path on ``device`` against the same computation on the CPU.

The ``device`` fixture runs each test on ``"cpu"`` and, when a GPU is present, on ``"cuda"``. A
test computes something on ``device`` and compares it with the same computation on the CPU from
the same inputs and seeds (random streams are never pinned), or checks where outputs live. On a
CPU-only machine the ``"cpu"`` case still runs every path and checks that it is deterministic.

How exact a comparison can be depends on the arithmetic, so the inputs are chosen for it:

- Pixels ``q / 16`` and ``+-1`` activations are exact in float32, TF32 and bf16, so binary
  pre-activations are exact whatever order a device sums them in; with BatchNorm running
  statistics that are random (not on that grid), no pre-activation lies on its threshold and
  signs, predictions and fault-injection accuracies must be *identical* on every device.
- A training-mode BatchNorm normalizes with batch statistics that a GPU reduces in another order
  (an exact mean can come out one ulp off, and a pre-activation equal to the mean then changes
  sign when ``beta = 0``), so training-mode comparisons use continuous inputs, random BatchNorm
  biases (integer pre-activations of binary inputs often equal their batch mean) and tolerances.
- cuDNN may pick Winograd/FFT convolution kernels that round integer sums; comparisons that need
  exact convolutions turn cuDNN off (the library code under test is the same either way).
"""

from __future__ import annotations

import contextlib
import copy
import functools

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_bet.callbacks.bet_logging import BetLogging
from lightning_bet.callbacks.bitflip import BitFlipTraining
from lightning_bet.callbacks.margin_regularization import MarginRegularization
from lightning_bet.callbacks.sweep import SweepCallback
from lightning_bet.deploy.fold import DeployModule, deploy_forward, to_deploy
from lightning_bet.functional.binarize import binarize_activation, binarize_weight, sign
from lightning_bet.functional.faults import FaultModel, make_generator, sample_fault_indices
from lightning_bet.functional.flips import SignFlips, binarize_weight_flipped
from lightning_bet.functional.losses import LOSSES, resolve_loss
from lightning_bet.functional.margins import (
    binary_preactivation,
    decision_side,
    flip_probability,
    fold_batchnorm,
    neuron_margins,
    output_margin,
    tolerated_flips,
    tolerated_flips_real,
)
from lightning_bet.functional.penalties import margin_penalty
from lightning_bet.layers import BinaryConv2d, BinaryLinear, binary_layers
from lightning_bet.metrics import BitErrorTolerance
from lightning_bet.models import build_model
from lightning_bet.module import BNNClassifier
from lightning_bet.sweeps import fault_family, predicted_sweep, sweep
from tests.test_bitflip import boundary_weights, small_model, trainer
from tests.test_losses import logits_and_targets
from tests.test_margin_regularization import integer_preacts, random_bn, reference_r
from tests.test_sweep import _digits_like, _trained_like

CPU = torch.device("cpu")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=CUDA)])
def device(request) -> torch.device:
    """The device under test; ``cuda`` is the current CUDA device (``cuda:0``), never bare."""
    if request.param == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return CPU


# ------------------------------------------------------------------------------------ helpers


def assert_on(device: torch.device, *tensors: torch.Tensor) -> None:
    for t in tensors:
        assert t.device == device, f"{tuple(t.shape)} {t.dtype} on {t.device}, expected {device}"


def assert_same(got: torch.Tensor, want: torch.Tensor, **tolerance) -> None:
    """``got`` (any device) equals ``want`` (CPU): exactly, or to ``tolerance`` when given."""
    if tolerance:
        torch.testing.assert_close(got.detach().cpu(), want.detach(), **tolerance)
    else:
        assert got.dtype == want.dtype
        assert torch.equal(got.detach().cpu(), want.detach())


def exact_convolutions(device: torch.device) -> contextlib.AbstractContextManager:
    """Convolutions that sum integer-valued products exactly (no cuDNN Winograd/FFT kernels)."""
    if device.type == "cuda":
        return torch.backends.cudnn.flags(enabled=False)
    return contextlib.nullcontext()


def eval_net(arch: str = "fcnn", hidden: tuple[int, ...] = (24, 16), seed: int = 0) -> nn.Module:
    """A small BNN (64-24-16-10 by default) in eval mode with random weights and statistics."""
    torch.manual_seed(seed)
    return _trained_like(build_model(arch, (1, 8, 8), 10, hidden), seed=seed + 1)


def continuous_loader(n: int = 32, batch_size: int = 8, seed: int = 0) -> DataLoader:
    """Continuous pixels: no training-mode pre-activation sits on its batch-statistics threshold.

    (``tests.test_bitflip.loader`` draws pixels ``q / 16``; see the module docstring.)
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def untie_batchnorm_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm biases: no training-mode threshold sits on an integer pre-activation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.5)
    return module


def state_on(module: nn.Module, device: torch.device) -> None:
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        assert t.device == device, f"{name} on {t.device}, expected {device}"


class StateOn(L.Callback):
    """``state_on`` after every training step (when fit ends, Lightning moves the module back
    to the CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        state_on(pl_module, self.device)
        self.steps += 1


# ------------------------------------------------------------------------------------ functional


@pytest.mark.parametrize("binarize", [binarize_weight, binarize_activation])
def test_sign_and_straight_through_gradient_match_cpu(device, binarize):
    # exact zeros of both signs, the +-1 STE boundaries, values beyond them
    x = torch.cat([boundary_weights().flatten(), torch.linspace(-2, 2, 33)])
    upstream = torch.arange(x.numel(), dtype=torch.float32) - 20

    def run(dev):
        leaf = x.detach().to(dev).requires_grad_()  # a new leaf, also on the CPU
        out = binarize(leaf)
        (out * upstream.to(dev)).sum().backward()
        return out, leaf.grad

    want, want_grad = run(CPU)
    got, grad = run(device)
    assert_on(device, got, grad)
    assert_same(got, want)
    assert_same(grad, want_grad)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        s = sign(x.to(device, dtype))
        assert_on(device, s)
        assert_same(s, sign(x.to(dtype)))


@pytest.mark.parametrize("negate_gradient", [False, True], ids=["straight_through", "hirtzlin"])
def test_binarize_weight_flipped_matches_cpu_with_the_same_flips(device, negate_gradient):
    g = torch.Generator().manual_seed(0)
    w = torch.cat([boundary_weights().flatten(), torch.rand(500, generator=g) * 3 - 1.5])
    w = w.reshape(32, 16)
    index = sample_fault_indices(w, FaultModel(p=0.1), make_generator(0, "devices"))
    assert index.numel() > 0
    upstream = torch.randint(-3, 4, w.shape, generator=g).float()

    def run(dev):
        leaf = w.detach().to(dev).requires_grad_()
        out = binarize_weight_flipped(leaf, SignFlips(index.to(dev), negate_gradient))
        (out * upstream.to(dev)).sum().backward()
        return out, leaf.grad, leaf.detach()

    want, want_grad, _ = run(CPU)
    got, grad, latent = run(device)
    assert_on(device, got, grad)
    assert_same(got, want)
    assert_same(grad, want_grad)
    assert_same(latent, w)  # the latent weights are read, never written
    if device.type != "cpu":
        with pytest.raises(ValueError, match="on the weights' device"):
            binarize_weight_flipped(w.to(device), SignFlips(index, negate_gradient))


FAULTS = {
    "p=0.01": FaultModel(p=0.01),
    "p=0.4": FaultModel(p=0.4),
    "asymmetric": FaultModel(p01=0.05, p10=0.01),
    "stuck_at": FaultModel(p=0.02, stuck_at_0=0.01, stuck_at_1=0.03),
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_sample_fault_indices_follow_the_weights_device(device, fault):
    stored = torch.randn(64, 300, generator=torch.Generator().manual_seed(1))
    want = sample_fault_indices(stored, fault, make_generator(3, "devices"))
    # a CPU generator: the same map wherever the weights live, returned on their device
    got = sample_fault_indices(stored.to(device), fault, make_generator(3, "devices"))
    assert_on(device, got)
    assert_same(got, want)
    # a generator on the device samples there: sorted unique flat indices on the device
    local = sample_fault_indices(
        stored.to(device), fault, make_generator(3, "devices", device=device)
    )
    assert_on(device, local)
    assert local.dtype == torch.long and local.numel() > 0
    assert bool((local[1:] > local[:-1]).all())
    assert 0 <= int(local[0]) and int(local[-1]) < stored.numel()


def test_margin_functions_match_cpu(device):
    g = torch.Generator().manual_seed(4)
    n = 33
    x = torch.where(torch.rand(40, n, generator=g) < 0.5, -1.0, 1.0)  # binary inputs
    pixels = torch.randint(0, 17, (40, n), generator=g).float() / 16  # real inputs, exact sums
    weight = torch.randn(8, n, generator=g)
    target = torch.randint(0, 8, (40,), generator=g)
    bn = random_bn(8, conv=False, seed=5)
    bn4 = random_bn(8, conv=True, seed=6)
    a4 = integer_preacts((6, 8, 3, 3), n, seed=7)

    def run(dev):
        to = lambda t: t.to(dev)  # noqa: E731
        tau, d = fold_batchnorm(copy.deepcopy(bn).to(dev))
        tau4, d4 = fold_batchnorm(copy.deepcopy(bn4).to(dev))
        a = binary_preactivation(to(x), to(weight))
        a_real = to(pixels) @ sign(to(weight)).T
        return {
            "tau": tau,
            "d": d,
            "a": a,
            "side": decision_side(a, tau, d),
            "margins": neuron_margins(a, tau),
            "tolerated": tolerated_flips(a, tau, d, n),
            "tolerated4": tolerated_flips(to(a4), tau4, d4, n),
            "tolerated_real": tolerated_flips_real(a_real, tau, d, to(pixels)),
            "p_binary": flip_probability(a, tau, d, 0.05, float(n), n=n),
            "p_binary4": flip_probability(to(a4), tau4, d4, 0.05, float(n), n=n),
            "p_real": flip_probability(
                a_real, tau, d, 0.05, (to(pixels) ** 2).sum(1, keepdim=True)
            ),
            "output": output_margin(a, to(target)),
        }

    want, got = run(CPU), run(device)
    for key in want:
        assert_on(device, got[key])
        if want[key].is_floating_point():
            assert_same(got[key], want[key], rtol=1e-6, atol=1e-12)
        else:  # integer pre-activations, tolerated flips
            assert_same(got[key], want[key])


@pytest.mark.parametrize("conv", [False, True], ids=["dense", "conv"])
@pytest.mark.parametrize("statistics", ["batch", "running"])
def test_margin_penalty_and_its_gradient_match_cpu(device, statistics, conv):
    a = integer_preacts((16, 6, 3, 3) if conv else (16, 6), 9, seed=2)
    bn = random_bn(6, conv, seed=3)

    def run(dev):
        bn_d = copy.deepcopy(bn).to(dev)
        leaf = a.detach().to(dev).requires_grad_()
        r = margin_penalty([leaf], [bn_d], [9], delta=2.0, statistics=statistics)
        r.backward()
        return r, leaf.grad, bn_d.weight.grad, bn_d.bias.grad

    want, got = run(CPU), run(device)
    assert got[0].dtype == torch.float32 and got[0].item() > 0
    for g, w in zip(got, want, strict=True):
        assert_on(device, g)
        assert_same(g, w, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", LOSSES)
def test_losses_and_their_gradients_match_cpu(device, name):
    z, y = logits_and_targets()
    loss_fn = resolve_loss(name, mhl_b=128.0, mcel_margin=3.0)

    def run(dev):
        leaf = torch.from_numpy(z).float().to(dev).requires_grad_()
        loss = loss_fn(leaf, torch.from_numpy(y).to(dev))
        loss.backward()
        return loss, leaf.grad

    (want, want_grad), (got, grad) = run(CPU), run(device)
    assert_on(device, got, grad)
    assert_same(got, want, rtol=1e-5, atol=1e-7)
    assert_same(grad, want_grad, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------ layers


@pytest.mark.parametrize("flipped", [False, True], ids=["clean", "sign_flips"])
@pytest.mark.parametrize("binarize_input", [False, True], ids=["real_input", "binary_input"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_binary_layer_forward_and_backward_match_cpu(device, kind, binarize_input, flipped):
    torch.manual_seed(0)
    if kind == "linear":
        layer = BinaryLinear(64, 32, binarize_input=binarize_input)
        shape, out_shape = (16, 64), (16, 32)
    else:
        layer = BinaryConv2d(3, 8, 3, padding=1, binarize_input=binarize_input)
        shape, out_shape = (4, 3, 6, 6), (4, 8, 6, 6)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 33, shape, generator=g).float() / 16 - 1  # [-1, 1] incl. 0 and +-1
    upstream = torch.randint(-4, 5, out_shape, generator=g).float() / 4
    index = sample_fault_indices(layer.weight, FaultModel(p=0.1), make_generator(1, "devices"))

    def run(dev):
        copy_ = copy.deepcopy(layer).to(dev)
        if flipped:  # a fault map as BitFlipTraining hands it over (Hirtzlin's backward rule)
            copy_.sign_flips = SignFlips(index.to(dev), negate_gradient=True)
        leaf = x.detach().to(dev).requires_grad_()  # a new leaf, also on the CPU
        out = copy_(leaf)
        (out * upstream.to(dev)).sum().backward()
        return out, leaf.grad, copy_.weight.grad, copy_.bias.grad

    want, got = run(CPU), run(device)
    for g_, w_ in zip(got, want, strict=True):
        assert_on(device, g_)
        # integer-valued sums: exact for dense layers; cuDNN may round in its own way
        assert_same(g_, w_, rtol=1e-5, atol=1e-4 if kind == "conv" else 1e-6)


@pytest.mark.parametrize("loss", LOSSES)
def test_classifier_forward_and_backward_match_cpu(device, loss):
    torch.manual_seed(0)
    reference = BNNClassifier(hidden=(32,), loss=loss)  # 64-32-10
    module = BNNClassifier(hidden=(32,), loss=loss).to(device)
    module.load_state_dict(reference.state_dict())
    state_on(module, device)
    x, y = next(iter(continuous_loader(n=16, batch_size=16)))

    def step(m, dev):
        m.train()
        logits = m(x.to(dev))
        value = m.criterion(logits, y.to(dev))
        value.backward()
        return logits, value

    (want_logits, want), (logits, value) = step(reference, CPU), step(module, device)
    assert_on(device, logits, value)
    assert_same(logits, want_logits, rtol=1e-5, atol=1e-5)
    assert_same(value, want, rtol=1e-5, atol=1e-6)
    for (name, p), (_, q) in zip(
        module.named_parameters(), reference.named_parameters(), strict=True
    ):
        assert_on(device, p.grad)
        torch.testing.assert_close(p.grad.cpu(), q.grad, rtol=1e-4, atol=1e-5, msg=name)
    for (name, b), (_, c) in zip(module.named_buffers(), reference.named_buffers(), strict=True):
        torch.testing.assert_close(b.cpu(), c, rtol=1e-5, atol=1e-6, msg=name)  # running stats
    module.eval()
    reference.eval()
    with torch.no_grad():
        assert_same(module(x.to(device)), reference(x), rtol=1e-5, atol=1e-5)
        assert_same(module.predict_step((x.to(device),), 0), reference.predict_step((x,), 0))


# ------------------------------------------------------------------------------------ training


class Record(L.Callback):
    """Per training step: the fault maps and the realized rate BitFlipTraining drew, the loss."""

    def __init__(self, flip: BitFlipTraining) -> None:
        self.flip = flip
        self.maps: list[list[torch.Tensor]] = []
        self.rates: list[float] = []
        self.losses: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        for _, layer in binary_layers(pl_module):
            if layer.sign_flips is not None:  # the map lives on the weights' device
                assert layer.sign_flips.index.device == layer.weight.device
        self.maps.append([index.cpu() for index in self.flip.last_indices])
        self.rates.append(self.flip.last_rate)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach().cpu())


STEPS = 4


@pytest.fixture
def restore_determinism(monkeypatch):
    """Undo what ``Trainer(deterministic=True)`` sets process-wide (a later Trainer does not)."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # restored on teardown
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark


def fit(device: torch.device, variant: str) -> tuple[BNNClassifier, Record, dict]:
    """``STEPS`` steps of BitFlipTraining + MarginRegularization on ``device``, fixed seeds.

    ``deterministic=True`` as in the recipes: every op of the training path must have a
    deterministic implementation on the device.
    """
    module = untie_batchnorm_(small_model(seed=0))  # 64-16-12-10
    flip = BitFlipTraining(p=0.05, variant=variant, seed=7)
    record = Record(flip)
    on_device = StateOn(device)
    callbacks = [flip, MarginRegularization(lam=0.5, delta=1.0), record, on_device]
    run = trainer(accelerator=device.type, max_steps=STEPS, deterministic=True, callbacks=callbacks)
    run.fit(module, continuous_loader())
    assert on_device.steps == STEPS
    assert not flip.is_flipped
    assert all(layer.sign_flips is None for _, layer in binary_layers(module))
    metrics = {k: v.detach().cpu() for k, v in run.callback_metrics.items()}
    return module, record, metrics


@functools.cache
def cpu_fit(variant: str) -> tuple[dict[str, torch.Tensor], Record, dict]:
    module, record, metrics = fit(CPU, variant)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}, record, metrics


@pytest.mark.usefixtures("restore_determinism")
@pytest.mark.parametrize("variant", ["straight_through", "hirtzlin"])
def test_bitflip_and_margin_training_on_device_follows_the_cpu_run(device, variant):
    module, record, metrics = fit(device, variant)
    want_state, want, want_metrics = cpu_fit(variant)
    state = module.state_dict()
    assert all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())
    # the fault maps come from a CPU generator: identical on every device, step by step
    assert len(record.maps) == len(want.maps) == STEPS
    for got_maps, want_maps in zip(record.maps, want.maps, strict=True):
        assert len(got_maps) == len(want_maps) == 3
        for a, b in zip(got_maps, want_maps, strict=True):
            assert torch.equal(a, b)
    assert record.rates == want.rates and sum(record.rates) > 0
    torch.testing.assert_close(
        torch.stack(record.losses), torch.stack(want.losses), rtol=1e-4, atol=1e-5
    )
    for key in ("flip/rate_epoch", "train/margin_reg_epoch", "train/loss"):
        torch.testing.assert_close(metrics[key], want_metrics[key], rtol=1e-4, atol=1e-6, msg=key)
    # weights: equal up to rounding, except where an Adam step turned a gradient that cancels
    # to rounding noise into a full +-lr step of opposite signs (rare; allowed for 0.5%)
    for key, want_value in want_state.items():
        got = state[key].cpu()
        if not want_value.is_floating_point():
            assert torch.equal(got, want_value), key
            continue
        close = torch.isclose(got, want_value, rtol=1e-4, atol=1e-5)
        assert close.float().mean() >= 0.995, key


class KeepPenalties(MarginRegularization):
    """MarginRegularization that keeps, per step, ``R`` and what it was computed from."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.kept: list[tuple[torch.Tensor, list[torch.Tensor], list[nn.Module]]] = []

    def penalty(self) -> torch.Tensor | None:
        captured = [self._captured.get(i) for i in range(len(self._blocks))]
        reg = super().penalty()
        if reg is not None:
            bns = [copy.deepcopy(block.bn).cpu() for block in self._blocks]
            self.kept.append((reg.detach(), [a.detach().cpu() for a in captured], bns))
        return reg


def test_margin_regularization_under_bf16_autocast_on_device(device):
    module = small_model(seed=0)
    reg = KeepPenalties(lam=0.5, delta=1.0)
    flip = BitFlipTraining(p=0.05, seed=7)
    on_device = StateOn(device)
    run = trainer(
        accelerator=device.type,
        max_steps=3,
        precision="bf16-mixed",
        callbacks=[flip, reg, on_device],
    )
    run.fit(module, continuous_loader())
    assert on_device.steps == 3
    for p in module.parameters():
        assert p.dtype == torch.float32 and bool(torch.isfinite(p).all())
    assert len(reg.kept) == 3
    fan_ins = [block.layer.weight[0].numel() for block in reg._blocks]
    for r, captured, bns in reg.kept:
        assert_on(device, r)
        assert r.dtype == torch.float32
        assert captured[0].dtype == torch.bfloat16  # autocast really ran the layers in bf16
        # R on the device equals the float64 CPU reference of the same pre-activations
        want = reference_r([a.double().numpy() for a in captured], bns, fan_ins, 1.0)
        assert r.item() == pytest.approx(want, rel=1e-5)
    assert bool(torch.isfinite(run.callback_metrics["train/margin_reg_epoch"]))


# ------------------------------------------------------------------------------------ metric


RATES = (0.0, 0.01, 0.05)  # 0.0: the metric's path for non-positive rates


@pytest.mark.parametrize("arch", ["fcnn", "vgg3"])
def test_bit_error_tolerance_matches_cpu(device, arch):
    net = eval_net(arch, hidden=(24, 16) if arch == "fcnn" else (16,))
    x, y = _digits_like(n=48)
    want_metric = BitErrorTolerance(net, error_rates=RATES)
    metric = BitErrorTolerance(copy.deepcopy(net).to(device), error_rates=RATES).to(device)
    with exact_convolutions(device):
        for half in (slice(0, 24), slice(24, 48)):  # two updates: accumulated states
            want_metric.update(x[half], y[half])
            metric.update(x[half].to(device), y[half].to(device))
    for name in metric._defaults:
        assert_on(device, getattr(metric, name))
    want, got = want_metric.compute(), metric.compute()
    assert got.keys() == want.keys()
    for key in want:
        assert_same(got[key], want[key], rtol=1e-5, atol=1e-7)


def test_bit_error_tolerance_compute_returns_values_on_the_metric_device(device):
    """``compute()`` keeps every value on the metric's device (torchmetrics' convention)."""
    metric = BitErrorTolerance(copy.deepcopy(eval_net()).to(device), error_rates=RATES)
    metric = metric.to(device)
    x, y = _digits_like(n=16)
    metric.update(x.to(device), y.to(device))
    values = metric.compute()
    wrong = {key: str(v.device) for key, v in values.items() if v.device != device}
    assert not wrong, f"compute() values not on {device}: {wrong}"


def test_bet_logging_on_device_logs_what_it_logs_on_cpu(device):
    x, y = _digits_like(n=64)
    state = eval_net().state_dict()

    def validate(dev):
        module = BNNClassifier(hidden=(24, 16))
        module.net.load_state_dict(state)
        callback = BetLogging(error_rates=RATES[1:])  # default: 16 samples per batch
        run = trainer(accelerator=dev.type, callbacks=[callback])
        run.validate(module, DataLoader(TensorDataset(x, y), batch_size=32), verbose=False)
        assert callback.metric.device == dev and callback.metric.net.module is module.net
        assert all(not b.bn._forward_pre_hooks for b in module.net.blocks)
        return {k: v.cpu() for k, v in run.callback_metrics.items() if k.startswith("val/bet")}

    want, got = validate(CPU), validate(device)
    assert "val/bet" in want and "val/bet/layer1/flip_rate_p0.05" in want
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-7, msg=key)


# ------------------------------------------------------------------------------------ sweeps


@pytest.mark.parametrize("fault", ["symmetric", "asymmetric:0.5", "stuck_at_1"])
@pytest.mark.parametrize("evaluator", ["fast", "naive"])
def test_sweep_of_a_device_model_matches_cpu(device, evaluator, fault):
    net = eval_net()
    x, y = _digits_like(n=120)
    kwargs = dict(
        error_rates=(0.0, 0.02, 0.1),
        realizations=2,
        seed=5,
        fault_model=fault_family(fault),
        evaluator=evaluator,
        batch_size=50,
    )
    want = sweep(net, (x, y), **kwargs)
    device_net = copy.deepcopy(net).to(device)
    got = sweep(device_net, (x.to(device), y.to(device)), **kwargs)
    assert got.config["evaluator"] == evaluator
    np.testing.assert_array_equal(got.accuracy, want.accuracy)
    assert len(np.unique(want.accuracy)) > 1  # the faults change something
    state_on(device_net, device)  # the sweep works on copies and leaves the model where it was
    assert not device_net.training
    # per-batch maps, data from a CPU loader (what a Lightning test loader yields)
    loader = DataLoader(TensorDataset(x, y), batch_size=50)
    kwargs["semantics"] = "per_batch"
    np.testing.assert_array_equal(
        sweep(device_net, loader, **kwargs).accuracy, sweep(net, loader, **kwargs).accuracy
    )


@pytest.mark.parametrize("arch", ["fcnn", "vgg3"])
def test_predicted_sweep_of_a_device_model_matches_cpu(device, arch):
    net = eval_net(arch, hidden=(24, 16) if arch == "fcnn" else (16,))
    x, y = _digits_like(n=40)
    kwargs = dict(error_rates=(0.0, 0.02, 0.1), fault_model=fault_family("asymmetric:0.5"))
    want = predicted_sweep(net, (x, y), **kwargs)
    device_net = copy.deepcopy(net).to(device)
    with exact_convolutions(device):
        got = predicted_sweep(device_net, (x.to(device), y.to(device)), **kwargs)
    np.testing.assert_allclose(got.accuracy, want.accuracy, rtol=0, atol=1e-5)
    assert want.accuracy[0, 0] != want.accuracy[-1, 0]  # the faults change something
    state_on(device_net, device)


@pytest.mark.parametrize("evaluator", ["fast", "naive"])
def test_conv_sweep_of_a_device_model_matches_cpu(device, evaluator):
    net = eval_net("vgg3", hidden=(16,))
    x, y = _digits_like(n=40)
    kwargs = dict(error_rates=(0.0, 0.1), realizations=2, seed=2, evaluator=evaluator)
    want = sweep(net, (x, y), **kwargs)
    with exact_convolutions(device):
        got = sweep(copy.deepcopy(net).to(device), (x.to(device), y), **kwargs)
    assert got.config["evaluator"] == evaluator
    np.testing.assert_array_equal(got.accuracy, want.accuracy)


def test_sweep_callback_on_device_matches_a_cpu_sweep_of_the_trained_model(device):
    torch.manual_seed(0)
    module = BNNClassifier(hidden=(32,))
    x, y = _digits_like(n=64)
    callback = SweepCallback(error_rates=(0.0, 0.05), realizations=2, data=(x, y))
    on_device = StateOn(device)
    run = trainer(accelerator=device.type, max_steps=2, callbacks=[callback, on_device])
    run.fit(module, DataLoader(TensorDataset(x, y), batch_size=32))
    assert on_device.steps == 2
    want = sweep(copy.deepcopy(module).cpu(), (x, y), (0.0, 0.05), realizations=2)
    np.testing.assert_array_equal(callback.result.accuracy, want.accuracy)


# ------------------------------------------------------------------------------------ export


def test_to_deploy_of_a_device_model_equals_the_cpu_fold(device):
    net = eval_net()  # a gamma = 0 channel per layer: infinite thresholds are clamped
    want = to_deploy(net, 16)
    device_net = copy.deepcopy(net).to(device)
    got = to_deploy(device_net, 16)
    state_on(device_net, device)
    assert (got.input_levels, got.scale, got.input_shape) == (
        want.input_levels,
        want.scale,
        want.input_shape,
    )
    assert len(got.layers) == len(want.layers) == 3
    for a, b in zip(got.layers, want.layers, strict=True):
        assert a.binary_input == b.binary_input
        np.testing.assert_array_equal(a.weight, b.weight)
        for field in ("threshold", "direction"):
            if getattr(b, field) is None:
                assert getattr(a, field) is None
            else:
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    # the integer reference forward runs where its input is and agrees with the CPU
    x, _ = _digits_like(n=32)
    q = torch.round(x * 16).to(torch.int64)
    logits = deploy_forward(got, q.to(device))
    assert_on(device, logits)
    assert_same(logits, deploy_forward(want, q))
    module = DeployModule(got).to(device)
    assert_same(module(q.to(device)), deploy_forward(want, q))
    # and predicts what the float network on the device predicts
    with torch.no_grad():
        float_pred = device_net(x.to(device)).argmax(1)
    assert_same(float_pred, logits.argmax(1).cpu())
