"""MarginRegularization and the margin penalty R against a float64 numpy reference."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_bet.callbacks.margin_regularization import MarginRegularization
from lightning_bet.functional.binarize import binarize_activation
from lightning_bet.functional.penalties import batch_statistics, margin_hinge, margin_penalty
from lightning_bet.module import BNNClassifier


def reference_r(
    preacts: list[np.ndarray],
    bns: list[nn.modules.batchnorm._BatchNorm],
    fan_ins: list[int],
    delta: float,
    statistics: str = "batch",
) -> float:
    """R in float64 numpy: per layer mean over samples/positions/non-constant channels."""
    terms = []
    for a, bn, n in zip(preacts, bns, fan_ins, strict=True):
        a = a.astype(np.float64)
        axes = (0, *range(2, a.ndim))
        if statistics == "batch":
            mu, var = a.mean(axis=axes), a.var(axis=axes)
        else:
            mu = bn.running_mean.double().numpy()
            var = bn.running_var.double().numpy()
        gamma = bn.weight.detach().double().numpy()
        beta = bn.bias.detach().double().numpy()
        keep = gamma != 0
        tau = mu[keep] - beta[keep] * np.sqrt(var[keep] + bn.eps) / gamma[keep]
        a_keep = np.take(a, np.flatnonzero(keep), axis=1)
        shape = (1, -1) + (1,) * (a.ndim - 2)
        margin = np.abs(a_keep - tau.reshape(shape)) / math.sqrt(n)
        terms.append(np.maximum(delta - margin, 0).mean() if keep.any() else 0.0)
    return float(np.mean(terms))


def integer_preacts(shape: tuple[int, ...], n: int, seed: int) -> torch.Tensor:
    """Pre-activations of binary inputs: integers of n's parity in [-n, n], with ties at 0."""
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.randint(0, n + 1, shape, generator=g) - n).float()


def random_bn(channels: int, conv: bool, seed: int) -> nn.modules.batchnorm._BatchNorm:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels) if conv else nn.BatchNorm1d(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(channels, generator=g))
        bn.weight[0] = 0.0  # constant channel: excluded
        bn.weight[1] = -abs(bn.weight[1]) - 0.1  # negative gamma
        bn.bias.copy_(torch.randn(channels, generator=g))
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) + 0.5)
    return bn


@pytest.mark.parametrize("statistics", ["batch", "running"])
def test_penalty_matches_float64_reference(statistics):
    a_dense = integer_preacts((32, 7), 9, seed=0)
    a_conv = integer_preacts((8, 5, 4, 4), 27, seed=1)
    bns = [random_bn(7, False, 2), random_bn(5, True, 3)]
    got = margin_penalty([a_dense, a_conv], bns, [9, 27], delta=1.5, statistics=statistics)
    want = reference_r([a_dense.numpy(), a_conv.numpy()], bns, [9, 27], 1.5, statistics)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want, rel=1e-5)
    got.backward()
    assert all(torch.isfinite(bn.weight.grad).all() for bn in bns)


def test_gamma_sign_and_zero_channels():
    a = integer_preacts((16, 4), 5, seed=4)
    bn = nn.BatchNorm1d(4)
    flipped = nn.BatchNorm1d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 2.0, 1.0, 0.3]))
        bn.bias.copy_(torch.tensor([0.1, -0.4, 0.2, 0.0]))
        flipped.weight.copy_(-bn.weight)  # same threshold, opposite direction
        flipped.bias.copy_(-bn.bias)
    r = margin_penalty([a], [bn], [5], delta=1.0)
    assert margin_penalty([a], [flipped], [5], delta=1.0).item() == pytest.approx(r.item())
    dead = nn.BatchNorm1d(4)
    with torch.no_grad():
        dead.weight.zero_()
    a.requires_grad_(True)
    zero = margin_penalty([a], [dead], [5], delta=1.0)
    zero.backward()
    assert zero.item() == 0.0 and torch.equal(a.grad, torch.zeros_like(a))
    assert margin_hinge(a, torch.tensor([0.0, 1.0, 2.0, 3.0]), 4, delta=0.5).item() == (
        pytest.approx(np.maximum(0.5 - np.abs(a.detach().numpy() - [0, 1, 2, 3]) / 2, 0).mean())
    )
    mean, var = batch_statistics(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
    assert mean.tolist() == [2.0, 4.0] and var.tolist() == [1.0, 4.0]


def test_penalty_messages():
    bn = nn.BatchNorm1d(2)
    a = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"of the same length, but got 1, 2 and 1"):
        margin_penalty([a], [bn, bn], [2])
    with pytest.raises(ValueError, match=r"at least one hidden layer in `preactivations`"):
        margin_penalty([], [], [])
    with pytest.raises(
        ValueError,
        match=r"Expected `statistics` to be one of \['batch', 'running'\], but got 'ema'",
    ):
        margin_penalty([a], [bn], [2], statistics="ema")


# ------------------------------------------------------------------------------------ callback


def fake_trainer() -> SimpleNamespace:
    return SimpleNamespace(strategy=None, current_epoch=0, global_rank=0)


def captured_reference(model: BNNClassifier, x: torch.Tensor, delta: float) -> float:
    """Walk the blocks independently of the hooks and compute R in float64."""
    preacts, bns, fan_ins = [], [], []
    h = x
    with torch.no_grad():
        for block in model.net.blocks:
            a = block.preactivation(h)
            preacts.append(a.double().numpy())
            bns.append(block.bn)
            fan_ins.append(block.layer.weight[0].numel())
            h = block(h)
    return reference_r(preacts, bns, fan_ins, delta)


@pytest.mark.parametrize(
    ("arch", "shape", "hidden", "fan_in0"),
    [("fcnn", (1, 8, 8), (16, 12), 64), ("vgg3", (1, 8, 8), (8,), 9)],
)
def test_callback_penalty_equals_reference(arch, shape, hidden, fan_in0):
    torch.manual_seed(0)
    model = BNNClassifier(arch=arch, input_shape=shape, hidden=hidden)
    cb = MarginRegularization(lam=0.25, delta=2.0)
    cb.setup(fake_trainer(), model, "fit")
    x = torch.rand(16, *shape, generator=torch.Generator().manual_seed(1))
    reference = copy.deepcopy(model)
    cb.on_train_batch_start(None, model, None, 0)
    model(x)
    with pytest.warns(UserWarning, match="log"):
        term = cb.loss_penalty(model)
    assert model.net.blocks[0].layer.weight[0].numel() == fan_in0
    want = captured_reference(reference, x, 2.0)
    assert term.item() == pytest.approx(0.25 * want, rel=1e-5)
    assert cb.loss_penalty(model) is None  # nothing captured since
    model.eval()
    model(x)  # evaluation forward passes are not captured
    assert cb.penalty() is None
    cb.teardown(None, model, "fit")
    assert not any(block.bn._forward_pre_hooks for block in model.net.blocks)


def test_bf16_autocast_matches_float64_reference_of_the_same_preactivations():
    torch.manual_seed(0)
    model = BNNClassifier(hidden=(32, 32))
    cb = MarginRegularization(lam=1.0, delta=1.0)
    cb.setup(fake_trainer(), model, "fit")
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    cb.on_train_batch_start(None, model, None, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
        captured = [cb._captured[i] for i in range(len(cb._blocks))]
        assert captured[0].dtype == torch.bfloat16
        r = cb.penalty()
    assert r.dtype == torch.float32
    want = reference_r(
        [a.detach().double().numpy() for a in captured],
        [b.bn for b in cb._blocks],
        [b.layer.weight[0].numel() for b in cb._blocks],
        1.0,
    )
    assert r.item() == pytest.approx(want, rel=1e-5)
    r.backward()
    assert torch.isfinite(model.net.blocks[0].layer.weight.grad).all()


class GradProbe(L.Callback):
    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads.append({k: p.grad.clone() for k, p in pl_module.named_parameters()})


def test_gradient_accumulation_matches_reference():
    torch.manual_seed(3)
    model = BNNClassifier(hidden=(16, 12))
    reference = copy.deepcopy(model)
    g = torch.Generator().manual_seed(4)
    data = TensorDataset(
        torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
    )
    loader = DataLoader(data, batch_size=4, shuffle=False)
    probe = GradProbe()
    cb = MarginRegularization(lam=0.5, delta=1.5)
    trainer = L.Trainer(
        max_steps=1,
        accumulate_grad_batches=2,
        callbacks=[cb, probe],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, loader)
    for x, y in list(loader)[:2]:
        preacts, h = [], x
        for block in reference.net.blocks:
            a = block.preactivation(h)
            preacts.append(a)
            h = binarize_activation(block.bn(a))
        logits = reference.net.head(h)
        bns = [b.bn for b in reference.net.blocks]
        fan_ins = [b.layer.weight[0].numel() for b in reference.net.blocks]
        r = margin_penalty(preacts, bns, fan_ins, delta=1.5)
        ((reference.criterion(logits, y) + 0.5 * r) / 2).backward()
    for name, param in reference.named_parameters():
        torch.testing.assert_close(probe.grads[0][name], param.grad, rtol=1e-5, atol=1e-6, msg=name)
    assert "train/margin_reg" in trainer.callback_metrics


def test_schedule_and_messages():
    cb = MarginRegularization(lam=lambda epoch: 0.1 * epoch)
    assert cb.weight(3) == pytest.approx(0.3)
    with pytest.raises(
        ValueError,
        match=r"Expected `lam` to be a finite float >= 0 from the schedule at epoch 2, but got -1",
    ):
        MarginRegularization(lam=lambda epoch: -1).weight(2)
    for lam in (-0.1, float("nan"), float("inf"), "0.1", True):
        with pytest.raises(ValueError, match=r"Expected `lam` to be a finite float >= 0, but got"):
            MarginRegularization(lam=lam)
    for delta in (0, -1.0, float("inf"), None):
        with pytest.raises(ValueError, match=r"Expected `delta` to be a finite float > 0, but got"):
            MarginRegularization(delta=delta)
    with pytest.raises(
        ValueError,
        match=r"Expected `statistics` to be one of \['batch', 'running'\], but got 'ema'",
    ):
        MarginRegularization(statistics="ema")
    with pytest.raises(
        ValueError, match="Expected `pl_module` to contain binary layers .*, but Linear has none"
    ):
        MarginRegularization().setup(fake_trainer(), nn.Linear(2, 2), "fit")
