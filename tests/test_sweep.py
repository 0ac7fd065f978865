import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from lightning_bet.functional.faults import FaultModel, make_generator, sample_fault_indices
from lightning_bet.layers import binary_layers
from lightning_bet.models import build_model
from lightning_bet.sweeps import (
    DEFAULT_ERROR_RATES,
    _flipped_copy,
    bet_area,
    cli_main,
    fault_maps,
    naive_accuracy,
    sweep,
)
from tests.test_deploy_conv import conv_net

# numpy 2 renamed trapz
_trapezoid = getattr(np, "trapezoid", None) or np.trapz


def _trained_like(net, seed=1):
    """Random weights and BatchNorm statistics with both gamma signs and a gamma = 0 channel."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in net.blocks:
            c = block.bn.num_features
            layer = block.layer
            n = layer.weight[0].numel()
            layer.weight.uniform_(-1, 1, generator=g)
            block.bn.running_mean.copy_(torch.randn(c, generator=g) * math.sqrt(n) / 3)
            block.bn.running_var.copy_(torch.rand(c, generator=g) * n + 1)
            gamma = torch.randn(c, generator=g)
            gamma[0] = 0.0
            block.bn.weight.copy_(gamma)
            block.bn.bias.copy_(torch.randn(c, generator=g))
        net.head.layer.weight.uniform_(-1, 1, generator=g)
    return net.eval()


def _digits_like(n=300, levels=16, seed=0, shape=(1, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, levels + 1, (n, *shape), generator=g).float() / levels
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


GRID = (0.0, 0.01, 0.05, 0.2)


def _deploy_predictions(net, maps, q, levels):
    """Deploy-mode (exact integer) predictions of the copied, flipped network: the reference."""
    from lightning_bet.deploy.fold import deploy_forward, to_deploy

    return deploy_forward(to_deploy(_flipped_copy(net, maps), levels), q).argmax(1).numpy()


FAST_NETS = {
    "fcnn": lambda: build_model("fcnn", (1, 8, 8), 10, (48, 40)),
    "vgg3": lambda: build_model("vgg3", (1, 8, 8), 10, (16,)),
    "conv_padded_pooled": lambda: conv_net((1, 8, 8), ((5, 3, 1, 1, 1), (70, 3, 1, 1, 2)), (7,)),
    "conv_strided_even_kernel": lambda: conv_net((1, 8, 8), ((4, 3, 2, 0, 1), (5, 2, 1, 1, 2))),
    "conv_no_dense": lambda: conv_net((1, 8, 8), ((3, 5, 1, 2, 2),), ()),
}


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("levels", [16, 255])
@pytest.mark.parametrize("name", sorted(FAST_NETS))
def test_fast_predictions_equal_deploy_mode_of_the_flipped_network(name, levels, backend):
    from lightning_bet.fast_sweep import FastEvaluator

    torch.manual_seed(0)
    net = _trained_like(FAST_NETS[name](), seed=len(name))
    x, y = _digits_like(n=120, levels=levels)
    q = torch.round(x * levels).long()
    ev = FastEvaluator(net, x, y, backend=backend)
    assert ev.input_levels == levels and ev.kernels.name == backend
    layers = [layer for _, layer in binary_layers(net)]
    clean = _deploy_predictions(net, [torch.empty(0, dtype=torch.long)] * len(layers), q, levels)
    changed = 0
    for p in (0.0, 0.003, 0.05, 0.3):
        for r in range(2):
            maps = fault_maps(layers, FaultModel(p=p), 7, p, r)
            expected = _deploy_predictions(net, maps, q, levels)
            np.testing.assert_array_equal(ev.predictions(maps), expected)
            np.testing.assert_array_equal(ev.predictions(maps, slice(17, 90)), expected[17:90])
            changed += int((expected != clean).sum())
    assert changed > 0  # the faults really change predictions


@pytest.mark.parametrize("arch", ["fcnn", "vgg3"])
def test_fast_equals_naive_per_realization_on_dyadic_inputs(arch):
    torch.manual_seed(0)
    net = _trained_like(build_model(arch, (1, 8, 8), 10, (48, 40) if arch == "fcnn" else (16,)))
    x, y = _digits_like(levels=16)
    fast = sweep(net, (x, y), GRID, realizations=3, seed=5, evaluator="fast")
    naive = sweep(net, (x, y), GRID, realizations=3, seed=5, evaluator="naive")
    assert fast.config["evaluator"] == "fast" and naive.config["evaluator"] == "naive"
    assert fast.config["input_levels"] == 16
    np.testing.assert_array_equal(fast.accuracy, naive.accuracy)
    assert len(set(fast.accuracy[-1])) > 1  # faults really change the accuracy


def test_auto_falls_back_to_the_float_loop_where_the_fast_path_does_not_apply():
    net = _trained_like(build_model("fcnn", (1, 8, 8), 10, (32,)))
    x, y = _digits_like(n=60)
    standardized = (x - 0.3) / 0.7  # not q / L
    result = sweep(net, (standardized, y), (0.0, 0.1), realizations=2)
    assert result.config["evaluator"] == "naive" and result.config["input_levels"] is None
    assert "Expected inputs q / L with integer q in [0, L]" in result.config["why_naive"]
    with pytest.raises(ValueError, match="Expected inputs q / L with integer q in"):
        sweep(net, (standardized, y), (0.1,), evaluator="fast")
    binary_first = _trained_like(build_model("fcnn", (1, 8, 8), 10, (32,), binarize_input=True))
    result = sweep(binary_first, (x, y), (0.0, 0.1), realizations=2)
    assert result.config["evaluator"] == "naive" and "binarize_input" in result.config["why_naive"]


def test_detect_input_levels():
    from lightning_bet.fast_sweep import detect_input_levels, integer_pixels

    q = torch.randint(0, 256, (50, 28))
    assert detect_input_levels(q.float() / 255) == 255
    assert detect_input_levels(q.float() * (1 / 255)) == 255  # rounded differently: still q/255
    assert detect_input_levels((q // 16).float() / 16) == 16
    assert detect_input_levels((q % 2).float()) == 1
    assert detect_input_levels(torch.rand(50, 28)) is None
    assert detect_input_levels(q.float() / 255 - 0.5) is None  # negative values
    assert torch.equal(integer_pixels(q.float() / 255, 255), q)
    with pytest.raises(ValueError, match=r"Expected the inputs to be q / 16 with integer q in"):
        integer_pixels(q.float() / 255, 16)


def test_fast_first_layer_kernels_are_exercised():
    from lightning_bet.fast_sweep import FastEvaluator

    net = _trained_like(build_model("fcnn", (1, 8, 8), 10, (32,)))
    x16, y = _digits_like(levels=16)
    assert FastEvaluator(net, x16, y).first_kernel == "int8"
    assert FastEvaluator(net, _digits_like(levels=255)[0], y).offset == 128
    assert FastEvaluator(net, _digits_like(levels=1000)[0], y).first_kernel == "exact"
    torch_ev = FastEvaluator(net, x16, y, backend="torch")
    native_ev = FastEvaluator(net, x16, y)
    maps = fault_maps([layer for _, layer in binary_layers(net)], FaultModel(p=0.1), 0, 0.1, 0)
    assert np.array_equal(torch_ev.predictions(maps), native_ev.predictions(maps))


@pytest.mark.parametrize("levels", [16, 255])
@pytest.mark.parametrize("sparse_cost", [0, 10**9], ids=["sparse-correction", "dense-int8"])
def test_int8_first_layer_sparse_correction_and_dense_agree_with_deploy(
    monkeypatch, sparse_cost, levels
):
    import lightning_bet.fast_sweep as fs

    monkeypatch.setattr(fs, "_SPARSE_COST", sparse_cost)  # 0: always sparse; 1e9: always dense
    net = _trained_like(build_model("fcnn", (1, 8, 8), 10, (72, 40)), seed=3)
    x, y = _digits_like(n=250, levels=levels, seed=2)
    q = torch.round(x * levels).long()
    ev = fs.FastEvaluator(net, x, y)
    assert ev.first_kernel == "int8"
    layers = [layer for _, layer in binary_layers(net)]
    for p in (0.002, 0.03, 0.3):
        for r in range(2):
            maps = fault_maps(layers, FaultModel(p=p), 11, p, r)
            expected = _deploy_predictions(net, maps, q, levels)
            np.testing.assert_array_equal(ev.predictions(maps), expected)
            np.testing.assert_array_equal(ev.predictions(maps, slice(37, 190)), expected[37:190])


def test_int8_first_layer_split_over_threads_agrees_with_deploy(monkeypatch):
    import lightning_bet.fast_sweep as fs

    monkeypatch.setattr(fs, "_SPARSE_COST", 10**9)  # always the dense int8 matmul
    monkeypatch.setattr(fs, "_MIN_ROWS_PER_THREAD", 16)
    net = _trained_like(build_model("fcnn", (1, 8, 8), 10, (72, 40)), seed=4)
    x, y = _digits_like(n=101, levels=255, seed=3)  # 101 rows: uneven chunks
    layers = [layer for _, layer in binary_layers(net)]
    maps = fault_maps(layers, FaultModel(p=0.05), 2, 0.05, 0)
    expected = _deploy_predictions(net, maps, torch.round(x * 255).long(), 255)
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        ev = fs.FastEvaluator(net, x, y)
        np.testing.assert_array_equal(ev.predictions(maps), expected)
        np.testing.assert_array_equal(ev.predictions(maps, slice(5, 90)), expected[5:90])
        assert ev._pool is not None and ev._pool._max_workers == 3  # the split path ran
        assert torch.get_num_threads() == 3  # restored
    finally:
        torch.set_num_threads(previous)


def test_per_batch_semantics_fast_equals_naive_and_differs_from_fixed():
    net = _trained_like(build_model("fcnn", (1, 8, 8), 10, (32, 32)))
    x, y = _digits_like(n=250)
    kw = dict(error_rates=(0.05, 0.2), realizations=2, seed=3, batch_size=64)
    fast = sweep(net, (x, y), semantics="per_batch", evaluator="fast", **kw)
    naive = sweep(net, (x, y), semantics="per_batch", evaluator="naive", **kw)
    fixed = sweep(net, (x, y), semantics="fixed", **kw)
    np.testing.assert_array_equal(fast.accuracy, naive.accuracy)
    assert not np.array_equal(fast.accuracy, fixed.accuracy)


def test_conv_model_reference_path_uses_the_documented_key_scheme():
    torch.manual_seed(0)
    net = _trained_like(build_model("vgg3", (1, 8, 8), 10, (16,)))
    x, y = _digits_like(n=40)
    result = sweep(net, (x, y), (0.0, 0.1), realizations=2, seed=2, evaluator="naive")
    assert result.config["evaluator"] == "naive"
    assert sweep(net, (x, y), (0.0,), realizations=1).config["evaluator"] == "fast"
    layers = [layer for _, layer in binary_layers(net)]
    maps = [
        sample_fault_indices(
            layer.weight.reshape(layer.weight.shape[0], -1),
            FaultModel(p=0.1),
            make_generator(2, 0.1, 1, index),
        )
        for index, layer in enumerate(layers)
    ]
    assert result.accuracy[1, 1] == naive_accuracy(net, x, y, maps)
    assert result.accuracy[0, 0] == int((net(x).argmax(1) == y).sum()) / len(y)


def test_reproducible_and_seeded():
    net = _trained_like(build_model("fcnn", (1, 8, 8), 10, (32,)))
    x, y = _digits_like()
    a = sweep(net, (x, y), (0.1,), realizations=4, seed=0)
    b = sweep(net, (x, y), (0.1,), realizations=4, seed=0)
    c = sweep(net, (x, y), (0.1,), realizations=4, seed=1)
    np.testing.assert_array_equal(a.accuracy, b.accuracy)
    assert not np.array_equal(a.accuracy, c.accuracy)


def test_fault_family_and_flip_semantics():
    net = _trained_like(build_model("fcnn", (1, 8, 8), 10, (32,)))
    x, y = _digits_like()
    # stuck-at-1 of every cell: every weight reads -1, whatever the model
    stuck = sweep(
        net, (x, y), (0.5,), realizations=1, fault_model=lambda p: FaultModel(stuck_at_1=1.0)
    )
    all_neg = build_model("fcnn", (1, 8, 8), 10, (32,))
    all_neg.load_state_dict(net.state_dict())
    with torch.no_grad():
        for _, layer in binary_layers(all_neg):
            layer.weight.fill_(-0.5)
    expected = int((all_neg.eval()(x).argmax(1) == y).sum()) / len(y)
    assert stuck.accuracy[0, 0] == expected
    # zero latent weights read +1; their flip must read -1
    layers = [layer for _, layer in binary_layers(net)]
    with torch.no_grad():
        layers[0].weight[0, 0] = 0.0
    from lightning_bet.sweeps import _flipped_copy

    flipped = _flipped_copy(net, [torch.tensor([0])] + [torch.empty(0, dtype=torch.long)])
    assert float(next(binary_layers(flipped))[1].weight[0, 0]) == -1.0


def test_bet_area_and_outputs(tmp_path):
    rates = [0.0, 0.01, 0.05, 0.1]
    acc = [0.9, 0.85, 0.6, 0.3]
    assert bet_area(rates, acc) == pytest.approx(_trapezoid(acc, rates) / 0.1)
    assert bet_area([0.02], [0.7]) == 0.7
    net = _trained_like(build_model("fcnn", (1, 8, 8), 10, (32,)))
    x, y = _digits_like()
    result = sweep(net, (x, y), rates, realizations=3)
    assert result.area == pytest.approx(_trapezoid(result.accuracy.mean(1), rates) / 0.1)
    assert result.std.shape == (4,) and (result.std >= 0).all()
    from lightning_bet.sweeps import write_outputs

    files = write_outputs(result, tmp_path)
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    md = (tmp_path / "sweep.md").read_text()
    assert "| 0.05 |" in md and "BET area" in md
    rows = (tmp_path / "sweep.csv").read_text().splitlines()
    assert rows[0].startswith("error_rate,mean,std,acc_r0") and len(rows) == 5
    assert json.loads((tmp_path / "sweep.json").read_text())["bet_area"] == result.area
    assert set(files) == {"csv", "md", "png", "json"}
    assert DEFAULT_ERROR_RATES == (0.0, 0.001, 0.005, 0.01, 0.02, 0.033, 0.05, 0.075, 0.1)


def test_bad_input():
    net = _trained_like(build_model("fcnn", (1, 8, 8), 10, (32,)))
    x, y = _digits_like(n=20)
    with pytest.raises(ValueError, match="Expected `error_rates` to be a non-empty list"):
        sweep(net, (x, y), [])
    with pytest.raises(ValueError, match=r"to be a float in \[0, 1\], but got 1.5"):
        sweep(net, (x, y), [0.0, 1.5])
    with pytest.raises(ValueError, match=r"to be a float in \[0, 1\], but got -0.1"):
        sweep(net, (x, y), [-0.1])
    with pytest.raises(ValueError, match="Expected `realizations` to be an int >= 1, but got 0"):
        sweep(net, (x, y), realizations=0)
    with pytest.raises(ValueError, match="Expected `semantics` to be one of"):
        sweep(net, (x, y), semantics="sometimes")
    with pytest.raises(ValueError, match="with the same N, but got"):
        sweep(net, (x, y[:5]))
    with pytest.raises(ValueError, match="Expected `model` to contain binary layers"):
        sweep(nn.Sequential(nn.Linear(64, 10)), (x, y))
    with pytest.raises(TypeError, match="to return a FaultModel"):
        sweep(net, (x, y), [0.1], fault_model=lambda p: p)
    with pytest.raises(ValueError, match="binarize_input=True, which the export does not"):
        sweep(build_model(hidden=(16,), binarize_input=True), (x, y), evaluator="fast")


def test_callback_logs_after_fit_and_every_n_epochs(tmp_path):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_bet.callbacks.sweep import SweepCallback
    from lightning_bet.module import BNNClassifier

    torch.manual_seed(0)
    module = BNNClassifier(hidden=(32,))
    x, y = _digits_like(n=64)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    callback = SweepCallback(
        error_rates=(0.0, 0.1), realizations=2, every_n_epochs=1, out_dir=str(tmp_path / "sw")
    )
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[callback],
        logger=CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader, loader)
    assert "sweep/area" in trainer.logged_metrics and "sweep/acc_p0.1" in trainer.logged_metrics
    expected = sweep(module, (x, y), (0.0, 0.1), realizations=2)
    np.testing.assert_array_equal(callback.result.accuracy, expected.accuracy)
    assert (tmp_path / "sw" / "sweep_epoch1.png").exists()
    with pytest.raises(ValueError, match="Expected `every_n_epochs` to be a positive int"):
        SweepCallback(every_n_epochs=0)


def _recipe_checkpoint(tmp_path, hidden=None):
    from lightning_bet.cli import make_cli

    cli = make_cli(args=["--config", "recipes/digits_fcnn.yaml"], run=False)
    module = cli.model
    if hidden is not None:
        from lightning_bet.module import BNNClassifier

        module = BNNClassifier(hidden=hidden)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": module.state_dict()}, path)
    return path


def test_cli_writes_outputs(tmp_path, capsys):
    ckpt = _recipe_checkpoint(tmp_path)
    out = tmp_path / "out"
    result = cli_main(
        [
            "--ckpt", str(ckpt), "--config", "recipes/digits_fcnn.yaml", "--out", str(out),
            "--error-rates", "0,0.05", "-R", "2", "--fault", "asymmetric:0.5",
        ]
    )  # fmt: skip
    assert result["result"]["error_rates"] == [0.0, 0.05]
    for name in ("sweep.csv", "sweep.png", "sweep.md", "sweep.json"):
        assert (out / name).exists()
    assert "BET area" in capsys.readouterr().out


def test_fault_family_names():
    from lightning_bet.sweeps import fault_family

    assert fault_family("symmetric")(0.1) == FaultModel(p=0.1)
    assert fault_family("asymmetric:0.5")(0.1) == FaultModel(p01=0.1, p10=0.05)
    assert fault_family("stuck_at_1")(0.2) == FaultModel(stuck_at_1=0.2)
    with pytest.raises(ValueError, match="Expected `--fault` to be 'symmetric'"):
        fault_family("gaussian")
    with pytest.raises(ValueError, match="with a finite ratio R >= 0, but got 'asymmetric:x'"):
        fault_family("asymmetric:x")


def test_cli_rejects_mismatched_checkpoint(tmp_path):
    ckpt = _recipe_checkpoint(tmp_path, hidden=(16, 16))
    with pytest.raises(ValueError, match="to match the model built from"):
        cli_main(["--ckpt", str(ckpt), "--config", "recipes/digits_fcnn.yaml"])
    with pytest.raises(FileNotFoundError, match="Expected `--ckpt` to be an existing file"):
        cli_main(["--ckpt", str(tmp_path / "nope.ckpt"), "--config", "recipes/digits_fcnn.yaml"])


def test_demo_measure(tmp_path):
    from lightning_bet.data.digits import DigitsDataModule
    from lightning_bet.metrics import BitErrorTolerance
    from lightning_bet.module import BNNClassifier
    from lightning_bet.sweeps import demo_measure

    torch.manual_seed(0)
    module = BNNClassifier(hidden=(32, 32)).eval()
    data = DigitsDataModule(batch_size=64)
    out = demo_measure(module, data, tmp_path)
    assert out["sweep"]["error_rates"] == [0.0, 0.01, 0.02, 0.05, 0.1]
    assert len(out["sweep"]["accuracy"][0]) == 5
    metric = BitErrorTolerance(module)
    for xb, yb in data.val_dataloader():
        metric.update(xb, yb)
    assert out["bet"] == pytest.approx(float(metric.compute()["bet"]))
    for name in ("sweep.png", "sweep.md", "sweep.csv", "sweep.json", "bet.png"):
        assert (tmp_path / name).exists()
