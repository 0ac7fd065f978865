"""BitFlipTraining: exact gradients of both variants, no leaked flips, accumulation, DDP, resume."""

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

from lightning_bet.callbacks.bitflip import BitFlipTraining
from lightning_bet.functional.faults import FaultModel, make_generator, sample_fault_indices
from lightning_bet.functional.flips import (
    SignFlips,
    binarize_weight_flipped,
    negate_at_,
    scale_fault_model,
)
from lightning_bet.layers import BinaryLinear, binary_layers
from lightning_bet.module import BNNClassifier

# ------------------------------------------------------------------------------------ helpers


def fake_trainer(epoch: int = 0, rank: int = 0, strategy: object | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        strategy=strategy if strategy is not None else object(),
        current_epoch=epoch,
        global_rank=rank,
    )


def boundary_weights() -> torch.Tensor:
    """Latent weights with exact zeros (both signs), the +-1 boundaries and clipped-out values."""
    values = [0.0, -0.0, 1.0, -1.0, 1.5, -1.5, 0.25, -0.25, 0.75, -0.5, 1e-30, -1e-30]
    return torch.tensor(values, dtype=torch.float32).reshape(3, 4)


def one_layer() -> nn.Sequential:
    layer = BinaryLinear(4, 3, bias=False, binarize_input=False)
    with torch.no_grad():
        layer.weight.copy_(boundary_weights())
    return nn.Sequential(layer)


def sign_np(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0, -1.0)


def mask_from(index: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.ones(int(np.prod(shape)))
    mask[index.cpu().numpy()] = -1.0
    return mask.reshape(shape)


def digits_like(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 17, (n, 1, 8, 8), generator=g).float() / 16
    y = torch.randint(0, 10, (n,), generator=g)
    return TensorDataset(x, y)


def loader(n: int = 32, batch_size: int = 8, seed: int = 0) -> DataLoader:
    return DataLoader(digits_like(n, seed), batch_size=batch_size, shuffle=False)


def small_model(seed: int = 0) -> BNNClassifier:
    torch.manual_seed(seed)
    return BNNClassifier(hidden=(16, 12), lr_step_size=1)


def trainer(**kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def assert_same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if x.is_floating_point():
            x, y = x.reshape(-1).view(torch.int32), y.reshape(-1).view(torch.int32)
        assert torch.equal(x, y), key


# ------------------------------------------------------------------------------------ functional


@pytest.mark.parametrize("negate_gradient", [False, True])
def test_binarize_weight_flipped_against_dense_mask(negate_gradient):
    w = boundary_weights().requires_grad_()
    before = w.detach().clone()
    index = torch.tensor([0, 1, 3, 4, 10])  # +0.0, -0.0, -1.0, 1.5 (clipped out), 1e-30
    upstream = torch.arange(12.0).reshape(3, 4) - 5.0
    wb = binarize_weight_flipped(w, SignFlips(index, negate_gradient))
    (wb * upstream).sum().backward()
    m = mask_from(index, (3, 4))
    w0 = before.numpy().astype(np.float64)
    np.testing.assert_array_equal(wb.detach().numpy(), m * sign_np(w0))
    dense = upstream.numpy() * (np.abs(w0) <= 1)
    np.testing.assert_array_equal(w.grad.numpy(), m * dense if negate_gradient else dense)
    assert torch.equal(w.detach().view(torch.int32), before.view(torch.int32))  # never written


def test_copies_and_pickles_of_a_layer_drop_its_fault_map():
    import pickle

    layer = one_layer()[0]
    layer.sign_flips = SignFlips(torch.tensor([0, 5]))
    x = torch.ones(1, 4)
    for copy_ in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert copy_.sign_flips is None
        np.testing.assert_array_equal(
            copy_(x).detach().numpy(), x.numpy() @ sign_np(boundary_weights().numpy()).T
        )
    assert layer.sign_flips is not None  # the original keeps it
    assert not torch.equal(layer(x), copy.deepcopy(layer)(x))


def test_binarize_weight_flipped_rejects_bad_indices():
    w = torch.zeros(2, 3)
    with pytest.raises(
        ValueError,
        match=r"Expected `flips.index` to be a 1-D int64 tensor on the weights' device cpu, but "
        r"got dtype torch.int32, shape \(2,\) on cpu",
    ):
        binarize_weight_flipped(w, SignFlips(torch.tensor([0, 1], dtype=torch.int32)))
    with pytest.raises(ValueError, match=r"shape \(1, 2\)"):
        binarize_weight_flipped(w, SignFlips(torch.tensor([[0, 1]])))


def test_negate_at_and_scale_fault_model():
    g = torch.arange(6.0).reshape(2, 3)
    out = negate_at_(g, torch.tensor([1, 5]))
    np.testing.assert_array_equal(out.numpy(), [[0, -1, 2], [3, 4, -5]])
    nc = torch.arange(6.0).reshape(3, 2).t()  # non-contiguous: a contiguous copy is negated
    np.testing.assert_array_equal(
        negate_at_(nc, torch.tensor([0])).numpy(), [[-0, 2, 4], [1, 3, 5]]
    )
    scaled = scale_fault_model(FaultModel(p01=1.0, p10=0.25, stuck_at_1=0.5), 0.1)
    assert scaled.to_dict() == pytest.approx(
        {"p": 0.0, "p01": 0.1, "p10": 0.025, "stuck_at_0": 0.0, "stuck_at_1": 0.05}
    )


# ------------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("variant", ["straight_through", "hirtzlin"])
def test_forward_and_gradient_against_hand_computation(variant):
    model = one_layer()
    w0 = boundary_weights().numpy().astype(np.float64)
    cb = BitFlipTraining(p=0.5, variant=variant, seed=3, log_rate=False)
    cb.setup(fake_trainer(), model, "fit")
    x = torch.tensor([[0.5, -1.0, 0.0, 2.0], [1.0, 0.25, -0.75, 0.0]])
    c = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    cb.flip(epoch=0)
    (index,) = cb.last_indices
    assert 0 < index.numel() < 12
    m = mask_from(index, (3, 4))
    out = model(x)
    we = m * sign_np(w0)
    np.testing.assert_allclose(out.detach().numpy(), x.numpy() @ we.T, rtol=0, atol=1e-6)
    (out * c).sum().backward()
    cb.restore()
    g_we = c.numpy().T @ x.numpy()  # dL/dWe
    g_wb = m * g_we if variant == "hirtzlin" else g_we
    expected = g_wb * (np.abs(w0) <= 1)
    np.testing.assert_allclose(model[0].weight.grad.numpy(), expected, rtol=0, atol=1e-6)
    assert torch.equal(
        model[0].weight.detach().view(torch.int32), boundary_weights().view(torch.int32)
    )


def test_variants_share_the_forward_and_differ_exactly_on_flipped_positions():
    outs, grads, indices = {}, {}, {}
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    for variant in ("straight_through", "hirtzlin"):
        model = one_layer()
        cb = BitFlipTraining(p=0.3, variant=variant, seed=11, log_rate=False)
        cb.setup(fake_trainer(), model, "fit")
        cb.flip(epoch=0)
        outs[variant] = model(x)
        outs[variant].square().sum().backward()
        cb.restore()
        grads[variant] = model[0].weight.grad.flatten()
        indices[variant] = cb.last_indices[0]
    assert torch.equal(indices["straight_through"], indices["hirtzlin"])
    assert torch.equal(outs["straight_through"], outs["hirtzlin"])
    flipped = torch.zeros(12, dtype=torch.bool)
    flipped[indices["hirtzlin"]] = True
    st, hz = grads["straight_through"], grads["hirtzlin"]
    assert torch.equal(hz[flipped], -st[flipped])
    assert torch.equal(hz[~flipped], st[~flipped])
    assert (st[flipped] != 0).any()


def test_fault_maps_follow_the_shared_core_and_asymmetric_model():
    model = nn.Sequential(BinaryLinear(400, 300, bias=False), BinaryLinear(300, 10, bias=False))
    cb = BitFlipTraining(p=0.2, fault={"p01": 1.0, "p10": 0.0}, seed=5, log_rate=False)
    cb.setup(fake_trainer(rank=1), model, "fit")
    stored = [model[0].weight.detach().clone(), model[1].weight.detach().clone()]
    signs = [w >= 0 for w in stored]
    cb.flip(epoch=0, rank=1)
    generator = make_generator(5, "bitflip", 1, 0)
    for w, index, positive in zip(stored, cb.last_indices, signs, strict=True):
        expected = sample_fault_indices(w, FaultModel(p01=0.2, p10=0.0), generator)
        assert torch.equal(index, expected)
        assert positive.flatten()[index].all()  # only stored +1 (bit 0) reads wrong
    cb.restore()
    rate = sum(i.numel() for i in cb.last_indices) / sum(s.sum().item() for s in signs)
    assert abs(rate - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 60000)


# ------------------------------------------------------------------------------------ trainer


class Probe(L.Callback):
    """Records clean weights before flips, the flip indices, and weights seen in validation."""

    def __init__(self, flip_cb: BitFlipTraining | None = None) -> None:
        self.flip_cb = flip_cb
        self.clean: dict[str, torch.Tensor] | None = None
        self.indices: list[list[torch.Tensor]] = []
        self.after_step: dict[str, torch.Tensor] | None = None
        self.in_validation: list[tuple[dict, dict]] = []
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.flip_cb is not None and self.flip_cb.is_flipped:
            self.indices.append([i.clone() for i in self.flip_cb.last_indices])
        else:
            self.clean = params(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after_step = weights(pl_module)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.in_validation.append((weights(pl_module), self.after_step))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads.append(
            {k: None if p.grad is None else p.grad.clone() for k, p in pl_module.named_parameters()}
        )


class RaiseAt(L.Callback):
    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise RuntimeError("planned crash")


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("backward failure")


class Failing(BNNClassifier):
    def __init__(self, where: str, at_batch: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.where, self.at_batch = where, at_batch

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if batch_idx == self.at_batch:
            if self.where == "forward":
                raise RuntimeError("forward failure")
            if self.where == "backward":
                return _FailingBackward.apply(loss)
            if self.where == "save":
                self.trainer.save_checkpoint(self.save_path)
            if self.where == "skip":
                return None
        return loss


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_exception_in_forward_or_backward_leaves_clean_weights(where):
    model = Failing(where, hidden=(16, 12))
    cb = BitFlipTraining(p=0.3, variant="hirtzlin", log_rate=False)
    probe = Probe(cb)
    with pytest.raises(RuntimeError, match=f"{where} failure"):
        trainer(max_epochs=1, callbacks=[probe, cb]).fit(model, loader())
    assert not cb.is_flipped
    assert_same_bits(params(model), probe.clean)
    assert all(layer.sign_flips is None for _, layer in binary_layers(model))


def test_checkpoint_inside_training_step_holds_clean_weights(tmp_path):
    model = Failing("save", hidden=(16, 12))
    model.save_path = tmp_path / "mid.ckpt"
    cb = BitFlipTraining(p=0.3, log_rate=False)
    seen = {}

    class Snapshot(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 2:
                seen["clean"] = params(pl_module)

        def on_before_backward(self, trainer, pl_module, loss):
            if trainer.fit_loop.batch_idx == 2:
                seen["maps"] = [layer.sign_flips for _, layer in binary_layers(pl_module)]

    trainer(max_epochs=1, limit_train_batches=3, callbacks=[Snapshot(), cb]).fit(model, loader())
    checkpoint = torch.load(model.save_path, weights_only=False)
    state = checkpoint["state_dict"]
    assert_same_bits({k: state[k] for k in seen["clean"]}, seen["clean"])
    # the faulty forward really ran while the checkpoint was written; no map travels with it
    assert all(flips is not None and flips.index.numel() > 0 for flips in seen["maps"])
    assert "sign_flips" not in repr(checkpoint)


def test_validation_sees_clean_weights_and_rate_is_logged():
    model = Failing("skip", hidden=(16, 12))  # batch 2 skips backward: maps cleared at batch end
    cb = BitFlipTraining(p=0.25, variant="straight_through")
    probe = Probe(cb)
    t = trainer(max_epochs=2, val_check_interval=2, callbacks=[cb, probe])
    t.fit(model, loader(), loader(16, seed=1))
    assert len(probe.in_validation) >= 4
    for during, before in probe.in_validation:
        assert_same_bits(during, before)
    rate = float(t.callback_metrics["flip/rate_epoch"])
    bits_per_epoch = 4 * sum(p.numel() for n, p in model.named_parameters() if "layer" in n)
    assert abs(rate - 0.25) < 4 * math.sqrt(0.25 * 0.75 / bits_per_epoch)
    assert cb.micro_step == 8


@pytest.mark.parametrize("every", [1, 3])
def test_requested_rate_and_flipped_bits_are_logged_at_the_loggers_steps(tmp_path, every):
    """flip/p follows the schedule; flip/flipped_bits is the size of a step's fault map; the
    step values are written at the logger's steps, the epoch means at the end of each epoch."""
    from lightning.pytorch.loggers import CSVLogger

    drawn: list[tuple[float, float, int]] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            flips = sum(index.numel() for index in cb.last_indices)
            drawn.append((cb.last_p, cb.last_rate, flips))

    cb = BitFlipTraining(p=lambda epoch: 0.1 if epoch == 0 else 0.3, seed=2)
    logger = CSVLogger(tmp_path, name="", version="")
    t = trainer(max_epochs=2, logger=logger, log_every_n_steps=every, callbacks=[cb, Record()])
    t.fit(small_model(), loader())
    assert [p for p, _, _ in drawn] == [0.1] * 4 + [0.3] * 4
    assert cb.last_flips == drawn[-1][2] > 0
    lines = [line.split(",") for line in (tmp_path / "metrics.csv").read_text().splitlines()]
    header, rows = lines[0], lines[1:]
    names = ("flip/p", "flip/rate", "flip/flipped_bits")

    def logged(when: str) -> np.ndarray:
        columns = [header.index(f"{name}_{when}") for name in names]
        return np.array([[float(r[c]) for c in columns] for r in rows if r[columns[0]]])

    step_rows = [k for k in range(8) if (k + 1) % every == 0]
    np.testing.assert_allclose(logged("step"), np.array(drawn)[step_rows], rtol=1e-6)
    epochs = [np.mean(drawn[:4], axis=0), np.mean(drawn[4:], axis=0)]
    np.testing.assert_allclose(logged("epoch"), np.array(epochs), rtol=1e-6)


def test_gradient_accumulation_matches_reference():
    data = loader(16, batch_size=4, seed=2)
    model = small_model(1)
    reference = copy.deepcopy(model)
    cb = BitFlipTraining(p=0.2, variant="hirtzlin", seed=9, log_rate=False)
    probe = Probe(cb)
    t = trainer(max_steps=1, accumulate_grad_batches=2, callbacks=[cb, probe])
    t.fit(model, data)
    assert cb.micro_step == 2
    # reference: dense masks M, hirtzlin through the chain rule of sign(M * W)
    layers = [m for _, m in binary_layers(reference)]
    originals = [layer.weight for layer in layers]
    for k, (x, y) in enumerate(list(data)[:2]):
        generator = make_generator(9, "bitflip", 0, k)
        for layer, original in zip(layers, originals, strict=True):
            index = sample_fault_indices(original, FaultModel(p=0.2), generator)
            mask = torch.ones(original.numel())
            mask[index] = -1
            del layer.weight
            layer.weight = original * mask.view_as(original)
        loss = reference.criterion(reference(x), y) / 2
        loss.backward()
        for layer, original in zip(layers, originals, strict=True):
            del layer.weight
            layer.weight = original
    for name, param in reference.named_parameters():
        torch.testing.assert_close(probe.grads[0][name], param.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_schedule_and_invalid_schedule_value_mid_training():
    model = small_model()
    cb = BitFlipTraining(p=lambda epoch: 0.1 * (epoch + 1))
    assert cb.rate(0) == pytest.approx(0.1) and cb.rate(2) == pytest.approx(0.3)
    bad = BitFlipTraining(p=lambda epoch: 0.1 if epoch == 0 else 1.5, log_rate=False)
    probe = Probe(bad)
    with pytest.raises(
        ValueError,
        match=r"Expected the `p` schedule to return a float in \[0, 1\], but got 1.5 at epoch 1",
    ):
        trainer(max_epochs=2, callbacks=[probe, bad]).fit(model, loader())
    assert not bad.is_flipped
    with pytest.raises(ValueError, match="but got nan at epoch 0"):
        BitFlipTraining(p=lambda e: float("nan")).rate(0)


def test_resume_continues_the_fault_stream_exactly(tmp_path):
    def run(callbacks, ckpt_path=None, seed=0):
        model = small_model(seed)
        cb = BitFlipTraining(p=0.1, variant="hirtzlin", seed=4, log_rate=False)
        probe = Probe(cb)
        t = trainer(
            max_epochs=3,
            callbacks=[cb, probe, *callbacks],
            enable_checkpointing=True,
            default_root_dir=tmp_path,
        )
        t.fit(model, loader(24, batch_size=8), ckpt_path=ckpt_path)
        return model, cb, probe

    full_model, full_cb, full = run([])
    ckpt = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ck", save_last=True, every_n_epochs=1, save_top_k=-1
    )
    with pytest.raises(RuntimeError, match="planned crash"):
        run([ckpt, RaiseAt(epoch=1, batch=2)])
    resumed_model, resumed_cb, resumed = run([], ckpt_path=tmp_path / "ck" / "last.ckpt", seed=123)
    assert full_cb.micro_step == resumed_cb.micro_step == 9
    assert len(resumed.indices) == 6  # epochs 1 and 2 after resuming at the end of epoch 0
    for got, want in zip(resumed.indices, full.indices[3:], strict=True):
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)
    assert_same_bits(weights(resumed_model), weights(full_model))


# ------------------------------------------------------------------------------------ DDP


class _SaveWeights(L.Callback):
    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_train_end(self, trainer, pl_module):
        torch.save(
            {"weights": params(pl_module), "first": self.first},
            f"{self.directory}/rank{trainer.global_rank}.pt",
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not hasattr(self, "first"):
            cb = next(c for c in trainer.callbacks if isinstance(c, BitFlipTraining))
            self.first = [i.clone() for i in cb.last_indices]


def test_ddp_replicas_stay_identical(tmp_path):
    model = small_model()
    cb = BitFlipTraining(p=0.2, variant="hirtzlin", seed=1, log_rate=False)
    t = trainer(
        strategy="ddp_spawn", devices=2, max_steps=3, callbacks=[cb, _SaveWeights(str(tmp_path))]
    )
    t.fit(model, loader(48, batch_size=8))
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert_same_bits(r0["weights"], r1["weights"])
    assert not torch.equal(r0["first"][0], r1["first"][0])  # per-rank fault maps
    assert not torch.equal(
        r0["weights"]["net.blocks.0.layer.weight"],
        params(small_model())["net.blocks.0.layer.weight"],
    )


# ------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"p": 1.5}, ValueError, r"Expected `p` to be a float in \[0, 1\], but got 1.5"),
        ({"p": -0.1}, ValueError, r"Expected `p` to be a float in \[0, 1\], but got -0.1"),
        ({"p": float("nan")}, ValueError, r"Expected `p` to be a float in \[0, 1\], but got nan"),
        ({"p": "0.1"}, ValueError, r"Expected `p` to be a float in \[0, 1\], but got '0.1'"),
        (
            {"variant": "exact"},
            ValueError,
            r"Expected `variant` to be one of \['straight_through', 'hirtzlin'\], but got 'exact'",
        ),
        (
            {"fault": {"p": 1.0, "p01": 0.5}},
            ValueError,
            r"Invalid `fault` .*Expected either `p` \(symmetric flips\) or `p01`/`p10`",
        ),
        ({"fault": {"q": 1.0}}, ValueError, r"Invalid `fault` .*unknown \['q'\]"),
        (
            {"fault": {"stuck_at_0": 0.7, "stuck_at_1": 0.6}},
            ValueError,
            r"`stuck_at_0 \+ stuck_at_1` to be at most 1",
        ),
        ({"fault": {"p": 0.0}}, ValueError, r"Expected `fault` to have at least one non-zero rate"),
        (
            {"fault": 0.1},
            TypeError,
            r"Expected `fault` to be a FaultModel, a dict of its arguments or None, but got 0.1",
        ),
        (
            {"parameters_to_flip": []},
            ValueError,
            r"select at least one binary layer .* but got \[\]",
        ),
        ({"parameters_to_flip": "net"}, TypeError, r"Expected `parameters_to_flip` to be a list"),
        (
            {"parameters_to_flip": [(nn.Linear(2, 2), "weight")]},
            ValueError,
            r"'weight' of binary layers \(BinaryLinear, BinaryConv2d\), "
            r"but got \(Linear, 'weight'\)",
        ),
        (
            {"parameters_to_flip": [(BinaryLinear(2, 2), "bias")]},
            ValueError,
            r"but got \(BinaryLinear, 'bias'\)",
        ),
        (
            {"parameters_to_flip": [3]},
            TypeError,
            r"entries to be \(module, 'weight'\) pairs or module names, but got 3",
        ),
        ({"include_first": 1}, TypeError, r"Expected `include_first` to be a bool, but got 1"),
        ({"seed": 1.5}, TypeError, r"Expected `seed` to be an int, but got 1.5"),
        (
            {"prefetch": "yes"},
            TypeError,
            r"Expected `prefetch` to be a bool or None, but got 'yes'",
        ),
    ],
)
def test_invalid_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        BitFlipTraining(**kwargs)


def test_invalid_selection_and_strategies_at_setup():
    model = small_model()
    with pytest.raises(
        ValueError,
        match=r"non-empty selection .* `include_first`=False and `include_last`=False selects none",
    ):
        BitFlipTraining(
            parameters_to_flip=["net.blocks.0.layer", "net.head.layer"],
            include_first=False,
            include_last=False,
        ).setup(fake_trainer(), model, "fit")
    with pytest.raises(
        ValueError, match=r"'weight' of binary layers .* but got \(BatchNorm1d, 'weight'\)"
    ):
        BitFlipTraining(parameters_to_flip=["net.blocks.0.bn"]).setup(fake_trainer(), model, "fit")
    with pytest.raises(ValueError, match=r"name modules of the model, but got 'net.nope'"):
        BitFlipTraining(parameters_to_flip=["net.nope"]).setup(fake_trainer(), model, "fit")
    with pytest.raises(
        ValueError, match=r"layers of the trained model, but got \(BinaryLinear, 'weight'\)"
    ):
        BitFlipTraining(parameters_to_flip=[(BinaryLinear(3, 3), "weight")]).setup(
            fake_trainer(), model, "fit"
        )
    with pytest.raises(ValueError, match="contain binary layers to flip, but Linear has none"):
        BitFlipTraining().setup(fake_trainer(), nn.Linear(2, 2), "fit")
    for name in ("FSDPStrategy", "DeepSpeedStrategy"):
        strategy = type(name, (), {})()
        with pytest.raises(
            ValueError, match=f"the strategy {name} shards parameters; use a single device or DDP"
        ):
            BitFlipTraining().setup(fake_trainer(strategy=strategy), model, "fit")
    from lightning.pytorch.strategies import FSDPStrategy

    with pytest.raises(ValueError, match="FSDPStrategy shards parameters"):
        BitFlipTraining().setup(fake_trainer(strategy=FSDPStrategy()), model, "fit")


def test_selection_switches():
    model = small_model()
    layers = [model.net.blocks[0].layer, model.net.blocks[1].layer, model.net.head.layer]

    def selected(**kwargs):
        cb = BitFlipTraining(p=1.0, log_rate=False, **kwargs)
        cb.setup(fake_trainer(), model, "fit")
        before = [layer.weight.detach().clone() for layer in layers]
        cb.flip(0)
        changed = [layer.sign_flips is not None for layer in layers]
        cb.restore()
        assert all(layer.sign_flips is None for layer in layers)
        assert all(torch.equal(b, layer.weight) for b, layer in zip(before, layers, strict=True))
        return changed

    assert selected() == [True, True, True]
    assert selected(include_first=False) == [False, True, True]
    assert selected(include_last=False) == [True, True, False]
    assert selected(parameters_to_flip=[(layers[1], "weight")]) == [False, True, False]
    assert selected(parameters_to_flip=["net.head.layer", "net.blocks.0.layer"]) == [
        True,
        False,
        True,
    ]


def _flip_run(cb: BitFlipTraining, module: BNNClassifier, plan) -> list[list[torch.Tensor]]:
    """Drive ``flip``/``restore`` through ``plan`` = [(epoch, rank, jump_to_step or None)]."""
    seen = []
    before = params(module)
    for epoch, rank, jump in plan:
        if jump is not None:
            cb.load_state_dict({"micro_step": jump, "seed": cb.seed, "variant": cb.variant})
        cb.flip(epoch, rank)
        seen.append([i.clone() for i in cb.last_indices])
        cb.restore()
        assert_same_bits(params(module), before)
    return seen


def test_prefetch_gives_the_same_maps_as_direct_sampling():
    # the schedule switches fault model at epoch 1; micro_step jumps; the rank changes: every
    # prefetched map that does not match is discarded, every one that does is the same
    schedule = lambda epoch: (0.05, 0.2, 0.0, 0.3)[epoch]  # noqa: E731
    plan = [(0, 0, None), (0, 0, None), (1, 0, None), (1, 0, 7), (1, 1, None), (2, 1, None)]
    plan += [(3, 1, None), (3, 1, None), (3, 0, 2), (3, 0, None)]
    runs = {}
    for prefetch in (True, False):
        module = small_model()
        cb = BitFlipTraining(p=schedule, seed=3, prefetch=prefetch, log_rate=False)
        cb.setup(fake_trainer(), module, "fit")
        runs[prefetch] = _flip_run(cb, module, plan)
        cb.teardown(fake_trainer(), module, "fit")
        assert cb._executor is None and cb._pending is None
    # and both equal the shared core, drawn here independently
    module = small_model()
    targets = [m.weight for m in (b.layer for b in module.net.blocks)] + [
        module.net.head.layer.weight
    ]
    step = 0
    for (epoch, rank, jump), with_prefetch, without in zip(
        plan, runs[True], runs[False], strict=True
    ):
        step = jump if jump is not None else step
        generator = make_generator(3, "bitflip", rank, step)
        fault = FaultModel(p=schedule(epoch))
        expected = [sample_fault_indices(w.detach(), fault, generator) for w in targets]
        step += 1
        for a, b, c in zip(with_prefetch, without, expected, strict=True):
            assert torch.equal(a, c) and torch.equal(b, c)
    assert sum(i.numel() for maps in runs[True] for i in maps) > 0


def test_prefetch_skips_asymmetric_models_and_copies_drop_the_thread():
    module = small_model()
    cb = BitFlipTraining(p=0.1, fault={"p01": 1.0, "p10": 0.5}, seed=1, log_rate=False)
    cb.setup(fake_trainer(), module, "fit")
    cb.flip(0)
    assert cb._pending is None  # asymmetric maps depend on the weights at flip time
    cb.restore()
    on_cpu = BitFlipTraining(p=0.1, seed=1, log_rate=False)  # default: no thread on a CPU
    on_cpu.setup(fake_trainer(), module, "fit")
    on_cpu.flip(0)
    on_cpu.restore()
    assert on_cpu._pending is None
    sym = BitFlipTraining(p=0.1, seed=1, log_rate=False, prefetch=True)
    sym.setup(fake_trainer(), module, "fit")
    sym.flip(0)
    sym.restore()
    assert sym._pending is not None
    sym.wait_for_prefetch()
    assert sym._pending[1].done()
    clone = copy.deepcopy(sym)  # also what pickling for ddp_spawn goes through
    assert clone._pending is None and clone._executor is None
    clone._targets = sym._targets
    assert clone.micro_step == sym.micro_step == 1
    clone.flip(0)
    sym.flip(0)
    for a, b in zip(clone.last_indices, sym.last_indices, strict=True):
        assert torch.equal(a, b)
    sym.restore()
    clone.restore()
    sym.teardown(fake_trainer(), module, "fit")


def test_state_dict_round_trip():
    cb = BitFlipTraining(p=0.1, seed=3)
    cb.micro_step = 17
    other = BitFlipTraining(p=0.1, seed=3)
    other.load_state_dict(cb.state_dict())
    assert other.micro_step == 17 and other.state_key == cb.state_key
    assert BitFlipTraining(variant="hirtzlin").state_key != cb.state_key


def test_flip_overhead_benchmark_writes_results(tmp_path, capsys):
    import json

    from lightning_bet.bench.flip_overhead import run

    result = run(out_dir=tmp_path, repeats=1, widths=(32, 16), rates=(0.1,), variants=("hirtzlin",))
    assert set(result["by_width"]) == {"32", "16"}
    assert result["ratio_p0.1"] == result["by_width"]["32"]["ratio_hirtzlin_p0.1"] > 0
    stored = json.loads((tmp_path / "results.json").read_text())["flip_overhead"]
    assert stored["ratio_p0.1"] == result["ratio_p0.1"]
    assert "hirtzlin_p0.1" in capsys.readouterr().out
