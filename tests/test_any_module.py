"""The callbacks, the metric, the summary and the export on a user's own LightningModule."""

from __future__ import annotations

import copy
import logging
import math

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_bet.callbacks import (
    BetLogging,
    BitFlipTraining,
    LatentClipping,
    MarginRegularization,
)
from lightning_bet.data.digits import DIGITS_LEVELS, load_digits_splits
from lightning_bet.deploy.bitstream import write_bitstream
from lightning_bet.deploy.fold import deploy_forward, to_deploy
from lightning_bet.deploy.interpreter import run_bitstream
from lightning_bet.layers import BinaryConv2d, BinaryLinear, Sign
from lightning_bet.metrics import BitErrorTolerance
from lightning_bet.model_summary import BitSummaryCallback, summary
from lightning_bet.models import build_model
from lightning_bet.module import BNNClassifier
from tests.test_margin_regularization import GradProbe


class UserClassifier(L.LightningModule):
    """What a user writes: an nn.Sequential of binary layers and their own training_step."""

    def __init__(self, hidden: int = 32, lr: float = 0.01, net: nn.Module | None = None) -> None:
        super().__init__()
        self.net = net or nn.Sequential(
            nn.Flatten(),
            BinaryLinear(64, hidden, bias=False, binarize_input=False),
            nn.BatchNorm1d(hidden),
            Sign(),
            BinaryLinear(hidden, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            Sign(),
            BinaryLinear(hidden, 10, bias=False),
        )
        self.lr = lr
        self.example_input_array = torch.zeros(1, 1, 8, 8)  # gives the export its input shape
        self.task_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.task_loss = loss.detach()
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def trainer(**kwargs) -> L.Trainer:
    options = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**options, **kwargs})


def loader(n: int = 64, batch_size: int = 16, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 17, (n, 1, 8, 8), generator=g).float() / 16
    return DataLoader(TensorDataset(x, torch.randint(0, 10, (n,), generator=g)), batch_size)


def test_user_module_trains_with_every_callback_and_the_metric_then_exports(caplog):
    splits = load_digits_splits()
    L.seed_everything(0)
    module = UserClassifier(hidden=48, lr=0.02)
    train = DataLoader(TensorDataset(*splits["train"]), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(*splits["val"]), batch_size=90)
    summary_cb = BitSummaryCallback()
    fit = trainer(
        max_epochs=4,
        callbacks=[
            BitFlipTraining(p=0.01, seed=1),
            MarginRegularization(lam=0.1, delta=1.0),
            LatentClipping(),
            BetLogging(error_rates=(0.01, 0.05)),
            summary_cb,
        ],
    )
    with caplog.at_level(logging.INFO):
        fit.fit(module, train, val)
    logged = fit.callback_metrics
    assert {"train/margin_reg", "val/bet", "val/bet/layer1/flip_rate_p0.05"} <= set(logged)
    assert 0.0 <= float(logged["val/bet"]) <= 1.0 and float(logged["train/margin_reg"]) > 0
    assert "Model summary in bits of UserClassifier" in caplog.text
    assert summary_cb.summary.binary_params == 64 * 48 + 48 * 48 + 48 * 10
    latent = [m.weight for m in module.modules() if isinstance(m, BinaryLinear)]
    assert len(latent) == 3 and all(w.abs().max() <= 1 for w in latent)
    assert "training_step" not in module.__dict__  # the loss wrapper is gone after fit
    module.eval()
    x, y = splits["test"]
    metric = BitErrorTolerance(module, error_rates=(0.01, 0.05))
    metric.update(x, y)
    assert 0.0 <= float(metric.compute()["bet"]) <= 1.0
    with torch.no_grad():
        accuracy = (module(x).argmax(1) == y).float().mean().item()
        float_logits = module(x)
    assert accuracy > 0.8, accuracy
    deploy = to_deploy(module, DIGITS_LEVELS)
    q = (x * DIGITS_LEVELS).round().to(torch.int64)
    logits = deploy_forward(deploy, q)
    assert deploy.input_shape == (1, 8, 8)
    assert deploy.scale == 1.0 and [layer.shape for layer in deploy.layers] == [
        (48, 64),
        (48, 48),
        (10, 48),
    ]
    data = write_bitstream(deploy)
    np.testing.assert_array_equal(run_bitstream(data, q.numpy()), logits.numpy())
    agree = (logits.argmax(1) == float_logits.argmax(1)).float().mean().item()
    assert agree == 1.0
    # the file holds what the summary counts, plus headers, tables and CRCs (export/FORMAT.md)
    s = summary(module)
    assert len(data) == s.deploy_bytes - 4 + 56 + 36 * len(deploy.layers)


def fit_one_step(module: L.LightningModule, callbacks: list, accumulate: int = 2) -> GradProbe:
    probe = GradProbe()
    fit = trainer(max_steps=1, accumulate_grad_batches=accumulate, callbacks=[*callbacks, probe])
    fit.fit(module, loader(16, 4, seed=4))
    return probe


def test_penalty_reaches_the_loss_of_a_user_module_as_in_bnn_classifier():
    torch.manual_seed(3)
    reference = BNNClassifier(hidden=(16, 12))
    user = UserClassifier(net=copy.deepcopy(reference.net))
    plain = UserClassifier(net=copy.deepcopy(reference.net))
    got = fit_one_step(user, [MarginRegularization(lam=0.5, delta=1.5)]).grads[0]
    want = fit_one_step(reference, [MarginRegularization(lam=0.5, delta=1.5)]).grads[0]
    without = fit_one_step(plain, []).grads[0]
    for name, grad in got.items():
        torch.testing.assert_close(grad, want[name], rtol=0, atol=0, msg=name)
    assert not torch.equal(got["net.blocks.0.layer.weight"], without["net.blocks.0.layer.weight"])
    assert "training_step" not in user.__dict__


def test_dict_outputs_manual_optimization_and_what_cannot_apply():
    torch.manual_seed(0)

    class DictOutput(UserClassifier):
        def training_step(self, batch, batch_idx):
            return {"loss": super().training_step(batch, batch_idx), "extra": 1}

    class NoForward(UserClassifier):
        def training_step(self, batch, batch_idx):
            return sum(p.sum() for p in self.parameters()) * 0.0

    class NotALoss(UserClassifier):
        def training_step(self, batch, batch_idx):
            super().training_step(batch, batch_idx)
            return 1.5

    class Manual(UserClassifier):
        def __init__(self, ask: bool) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.ask = ask

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            if self.ask:
                (cb,) = [c for c in self.trainer.callbacks if isinstance(c, MarginRegularization)]
                loss = loss + cb.loss_penalty(self)
            optimizer = self.optimizers()
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()

    module = DictOutput()
    probe = fit_one_step(module, [MarginRegularization(lam=0.5)], accumulate=1)
    reference = fit_one_step(
        UserClassifier(net=copy.deepcopy(module.net)), [MarginRegularization(lam=0.5)], 1
    )
    assert probe.grads and reference.grads  # ran; dict losses are penalized too
    for cls, message in (
        (NoForward, r"captured the pre-activations of 0 of 2 hidden blocks during training_step"),
        (NotALoss, r"to return the loss as a tensor or as the 'loss' of a dict, .* but got float"),
    ):
        with pytest.raises(RuntimeError, match=message):
            fit_one_step(cls(), [MarginRegularization()], accumulate=1)
    with pytest.raises(
        RuntimeError, match=r"under manual optimization, add `callback.loss_penalty"
    ):
        trainer(max_steps=1, callbacks=[MarginRegularization()]).fit(Manual(False), loader())
    fit = trainer(max_steps=2, callbacks=[MarginRegularization()])
    fit.fit(Manual(True), loader())
    assert "train/margin_reg" in fit.callback_metrics
    with pytest.raises(ValueError, match=r"one MarginRegularization callback per module, but"):
        fit_one_step(UserClassifier(), [MarginRegularization(), MarginRegularization()])


def test_margin_regularization_on_a_user_conv_module_matches_the_penalty():
    from lightning_bet.functional.penalties import margin_penalty
    from lightning_bet.network import blocks
    from tests.test_network import conv_sequential

    torch.manual_seed(0)
    module = UserClassifier(net=conv_sequential())
    reference = copy.deepcopy(module)
    cb = MarginRegularization(lam=0.25, delta=2.0)
    probe = fit_one_step(module, [cb], accumulate=1)
    x, y = next(iter(loader(16, 4, seed=4)))
    view = blocks(reference)
    preacts, logits = view.run(x)
    r = margin_penalty(preacts, [b.bn for b in view.blocks], [b.fan_in for b in view.blocks], 2.0)
    (F.cross_entropy(logits, y) + 0.25 * r).backward()
    for name, param in reference.named_parameters():
        torch.testing.assert_close(probe.grads[0][name], param.grad, rtol=1e-5, atol=1e-6)


def test_latent_clipping_clips_any_module_after_optimizer_steps():
    torch.manual_seed(0)
    module = UserClassifier(lr=5.0)
    trainer(max_steps=3, callbacks=[LatentClipping()]).fit(module, loader())
    latent = [m.weight for m in module.modules() if isinstance(m, BinaryLinear | BinaryConv2d)]
    assert max(w.abs().max().item() for w in latent) == 1.0  # clipped, and lr 5 reached the bound
    unclipped = UserClassifier(lr=5.0, net=copy.deepcopy(module.net))
    trainer(max_steps=3).fit(unclipped, loader())
    assert max(m.weight.abs().max().item() for m in unclipped.net if hasattr(m, "weight")) > 1.0
    both = BNNClassifier(hidden=(16,), lr=5.0)  # clips itself too: harmless
    trainer(max_steps=2, callbacks=[LatentClipping(0.5)]).fit(both, loader())
    assert both.net.blocks[0].layer.weight.abs().max().item() <= 0.5
    for bound in (0, -1.0, float("inf"), True, "1"):
        with pytest.raises(ValueError, match=r"Expected `bound` to be a finite float > 0, but got"):
            LatentClipping(bound)
    with pytest.raises(ValueError, match=r"to contain binary layers .* to clip, but Linear has"):
        LatentClipping().setup(None, nn.Linear(2, 2), "fit")


def test_summary_counts_bits_of_a_conv_network(capsys):
    from lightning_bet.cli import main
    from tests.test_network import conv_sequential

    s = summary(conv_sequential())
    rows = [
        (r.name, r.shape, r.fan_in, r.binary_params, r.float_params, r.packed_bytes)
        for r in s.layers
    ]
    assert rows == [
        ("0", (4, 1, 3, 3), 9, 36, 8, 8),  # format v2: one vector of 36 bits, 2 words
        ("4", (6, 4, 3, 3), 36, 216, 12, 7 * 4),
        ("8", (16, 96), 96, 1536, 32, 16 * 3 * 4),
        ("10", (10, 16), 16, 160, 0, 10 * 4),
    ]
    assert [r.threshold_bits for r in s.layers] == [4 * 32 + 32, 6 * 32 + 32, 16 * 32 + 32, 0]
    assert s.layers[0].kind == "BinaryConv2d + MaxPool2d"
    assert s.deploy_bytes == 8 + 28 + 192 + 40 + (160 + 224 + 544) // 8 + 4
    assert s.float32_bytes == 4 * (36 + 216 + 1536 + 160 + 52)
    assert s.compression == pytest.approx(s.float32_bytes / s.deploy_bytes)
    table = str(s)
    assert "4x1x3x3" in table and "Total" in table and "Deploy size: 388 bytes" in table
    import lightning_bet

    assert lightning_bet.summary is summary  # the function, not a submodule
    # the deploy bytes are the bitstream's payload: v2 adds 48 + 4 + 4 bytes and 52 per layer
    cnn = build_model("cnn", (1, 8, 8), 10, hidden=(16,), channels=(8, 16)).eval()
    deploy = to_deploy(cnn, input_levels=16)
    assert len(write_bitstream(deploy)) == summary(cnn).deploy_bytes - 4 + 56 + 52 * 4
    main(["summary", "--config", "recipes/digits_fcnn.yaml"])
    out = capsys.readouterr().out
    assert "net.blocks.0.layer" in out and "Deploy size: 12,676 bytes" in out


class PenaltyCheck(L.Callback):
    """Raises in the worker if a training step's loss lacks the margin penalty."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not float(outputs["loss"]) > float(pl_module.task_loss) + 1e-4:
            raise RuntimeError("the margin penalty did not reach the loss under DDP")

    def on_train_end(self, trainer, pl_module):
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        gathered = pl_module.all_gather(flat)
        if not torch.equal(gathered[0], gathered[1]):
            raise RuntimeError("DDP replicas diverged")
        if pl_module.net[1].weight.abs().max() > 1:
            raise RuntimeError("latent weights not clipped")


def test_two_process_ddp_user_module_gets_the_penalty():
    L.seed_everything(0)
    fit = trainer(
        max_steps=3,
        devices=2,
        strategy="ddp_spawn",
        callbacks=[MarginRegularization(lam=1.0, delta=100.0), LatentClipping(), PenaltyCheck()],
    )
    fit.fit(UserClassifier(lr=1.0), loader(64, 8))
    assert math.isfinite(float(fit.callback_metrics["train/margin_reg"]))
