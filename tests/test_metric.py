import math
import pickle

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from lightning_bet.callbacks.bet_logging import BetLogging
from lightning_bet.metrics import BitErrorTolerance
from lightning_bet.models import build_model

RATES = (0.01, 0.05)


def _model(seed=0, hidden=(24, 16)):
    torch.manual_seed(seed)
    net = build_model("fcnn", (1, 8, 8), 10, hidden)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in net.blocks:
            c = block.bn.num_features
            n = block.layer.in_features
            block.layer.weight.uniform_(-1, 1, generator=g)
            block.bn.running_mean.copy_(torch.randn(c, generator=g) * math.sqrt(n) / 2)
            block.bn.running_var.copy_(torch.rand(c, generator=g) * n + 1)
            sign = torch.where(torch.rand(c, generator=g) < 0.25, -1.0, 1.0)
            block.bn.weight.copy_(sign * (torch.rand(c, generator=g) + 0.2))
            block.bn.bias.copy_(torch.randn(c, generator=g))
        net.head.layer.weight.uniform_(-1, 1, generator=g)
    return net.eval()


def _data(n=96, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 17, (n, 1, 8, 8), generator=g).float() / 16
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def _reference(net, x, y, rates):
    """Independent numpy forward and statistics (METHOD §4 formulas)."""
    h = x.flatten(1).double().numpy()
    result = {}
    flips = []
    for i, block in enumerate(net.blocks):
        w = np.where(block.layer.weight.detach().double().numpy() >= 0, 1.0, -1.0)
        n = w.shape[1]
        a = h @ w.T
        bn = block.bn
        mu, var = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
        gamma, beta = bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy()
        std = np.sqrt(var + bn.eps)
        tau = mu - beta * std / gamma
        d = np.sign(gamma)
        s = d * (a - tau)
        m = np.abs(a - tau)
        result[f"layer{i}/margin_mean"] = (m / math.sqrt(n)).mean()
        binary = i > 0
        rate_i = []
        for p in rates:
            g = d * np.where(s >= 0, 1.0, -1.0)
            if binary:
                t = np.where(s >= 0, np.floor(s / 2), np.ceil(-s / 2) - 1)
                prob = norm.cdf((g * p * a - (t + 0.5)) / math.sqrt(p * (1 - p) * n))
            else:
                var_a = 4 * p * (1 - p) * (h**2).sum(1, keepdims=True)
                prob = norm.cdf(-g * ((1 - 2 * p) * a - tau) / np.sqrt(var_a))
            result[f"layer{i}/flip_rate_p{p:g}"] = prob.mean()
            rate_i.append(prob.mean())
        flips.append(rate_i)
        if binary:
            t = np.where(s >= 0, np.floor(s / 2), np.ceil(-s / 2) - 1)
        else:  # bound: k flips move a by at most 2 k max|x|
            step = m / (2 * np.abs(h).max(1, keepdims=True))
            t = np.clip(np.where(s >= 0, np.floor(step), np.ceil(step) - 1), 0, n)
        t = t.astype(int).ravel()
        result[f"layer{i}/tolerated_fraction_median"] = np.sort(t)[(t.size + 1) // 2 - 1] / n
        h = np.where(gamma * (a - mu) / std + beta >= 0, 1.0, -1.0)
    w = np.where(net.head.layer.weight.detach().double().numpy() >= 0, 1.0, -1.0)
    logits = h @ w.T
    yy = y.numpy()
    own = logits[np.arange(len(yy)), yy]
    logits[np.arange(len(yy)), yy] = -np.inf
    result["output/margin_mean"] = ((own - logits.max(1)) / math.sqrt(w.shape[1])).mean()
    result["survival"] = 1 - np.mean(flips)
    return result


def test_metric_matches_numpy_reference():
    net = _model()
    x, y = _data()
    metric = BitErrorTolerance(net, error_rates=RATES)
    metric.update(x, y)
    values = metric.compute()
    ref = _reference(net, x, y, RATES)
    for key, expected in ref.items():
        assert float(values[key]) == pytest.approx(expected, rel=1e-4, abs=1e-7), key
    # quantiles: within one bin of the exact empirical quantile, reported as the lower edge
    width = 16.0 / 1024
    assert float(values["layer1/margin_q0.1"]) <= float(values["layer1/margin_mean"])
    assert float(values["layer1/margin_q0.1"]) % width == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("rows", [None, 5])
def test_predicted_accuracy_and_area_match_the_functional_core(rows):
    from lightning_bet.functional.faults import FaultModel
    from lightning_bet.functional.propagation import (
        network_layers,
        predict_correct,
        read_error_rates,
    )
    from lightning_bet.sweeps import DEFAULT_ERROR_RATES, bet_area

    net = _model()
    x, y = _data()
    make = lambda p: FaultModel(p01=p, p10=p / 2)  # noqa: E731
    metric = BitErrorTolerance(net, error_rates=RATES, fault_model=make, predict_rows=rows)
    batches = list(zip(x.split(16), y.split(16), strict=True))
    for xb, yb in batches:
        metric.update(xb, yb)
    values = metric.compute()
    grid = sorted(set(DEFAULT_ERROR_RATES) | set(RATES))
    read = torch.tensor([read_error_rates(make(p)) for p in grid])
    layers = network_layers(net.blocks, net.head)
    gaps, count = torch.zeros(len(grid), dtype=torch.float64), 0
    for xb, yb in batches:
        xb, yb = (xb, yb) if rows is None else (xb[:rows], yb[:rows])
        prob, correct = predict_correct(layers, xb, yb, read)
        gaps += (prob.double() - correct.double()).sum(1)
        count += len(yb)
    clean = float((net(x).argmax(1) == y).double().mean())
    acc = np.clip(clean + gaps.numpy() / count, 0, 1)
    for p in RATES:
        assert float(values[f"acc_pred_p{p:g}"]) == pytest.approx(acc[grid.index(p)], abs=1e-6)
    area = bet_area(DEFAULT_ERROR_RATES, [acc[grid.index(p)] for p in DEFAULT_ERROR_RATES])
    assert float(values["bet_pred"]) == float(values["bet"]) == pytest.approx(area, abs=1e-6)
    assert 0.0 <= float(values["survival"]) <= 1.0


def test_predictor_arguments():
    net = _model()
    with pytest.raises(ValueError, match="Expected `predict_rows` to be a positive int or None"):
        BitErrorTolerance(net, predict_rows=0)
    with pytest.raises(ValueError, match="Expected `predict_every` to be a positive int"):
        BetLogging(predict_every=0)
    with pytest.raises(ValueError, match="Expected every error rate in `error_rates` to be"):
        BitErrorTolerance(net, predict_grid=(0.0, 2.0))
    with pytest.raises(TypeError, match=r"Expected `fault_model\(0.0\)` to return a FaultModel"):
        BitErrorTolerance(net, fault_model=lambda p: p)


def test_quantile_within_one_bin_of_empirical():
    net = _model()
    x, y = _data()
    metric = BitErrorTolerance(net, error_rates=RATES, quantiles=(0.05, 0.1))
    metric.update(x, y)
    values = metric.compute()
    block = net.blocks[0]
    from lightning_bet.functional.margins import fold_batchnorm

    tau, _ = fold_batchnorm(block.bn)
    a = x.flatten(1).double() @ torch.where(block.layer.weight >= 0, 1.0, -1.0).double().T
    m = ((a - tau.double()).abs() / 8).flatten()
    for q in (0.05, 0.1):
        exact = float(torch.quantile(m.detach(), q, interpolation="higher"))
        got = float(values[f"layer0/margin_q{q:g}"])
        assert got <= exact < got + 16.0 / 1024 + 1e-12


def test_accumulating_batches_equals_one_update_and_restores_mode():
    net = _model()
    net.train()
    x, y = _data()
    whole = BitErrorTolerance(net, error_rates=RATES)
    whole.update(x, y)
    parts = BitErrorTolerance(net, error_rates=RATES)
    for xb, yb in zip(x.split(40), y.split(40), strict=True):
        parts.update(xb, yb)
    a, b = whole.compute(), parts.compute()
    for key in a:
        assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-12, abs=1e-12), key
    assert net.training and all(m.training for m in net.modules())


def test_pickle_state_dict_and_flags():
    net = _model()
    x, y = _data()
    metric = BitErrorTolerance(net, error_rates=RATES)
    metric.update(x, y)
    clone = pickle.loads(pickle.dumps(metric))
    assert float(clone.compute()["bet"]) == float(metric.compute()["bet"])
    metric.persistent(True)
    state = metric.state_dict()
    assert not any(k.startswith("_net") or "weight" in k for k in state)
    fresh = BitErrorTolerance(net, error_rates=RATES)
    fresh.persistent(True)
    fresh.load_state_dict(state)
    assert float(fresh.compute()["bet"]) == float(metric.compute()["bet"])
    assert BitErrorTolerance.higher_is_better is True
    assert BitErrorTolerance.is_differentiable is False
    assert BitErrorTolerance.full_state_update is False


def test_plot():
    pytest.importorskip("matplotlib")
    net = _model()
    x, y = _data()
    metric = BitErrorTolerance(net, error_rates=RATES)
    metric.update(x, y)
    fig, ax = metric.plot()
    assert "bet" in ax.get_title()
    assert len(ax.get_lines()) == len(net.blocks)


def test_bad_input():
    with pytest.raises(ValueError, match="Expected `model` to contain binary layers"):
        BitErrorTolerance(nn.Sequential(nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="at least one hidden binary block, but got 0"):
        from lightning_bet.layers import BinaryLinear

        BitErrorTolerance(nn.Sequential(BinaryLinear(4, 2)))
    with pytest.raises(ValueError, match=r"`model` \(Sequential\) to be made of hidden blocks"):
        BitErrorTolerance(nn.Sequential(BinaryLinear(4, 4), nn.ReLU(), BinaryLinear(4, 2)))
    net = _model()
    with pytest.raises(ValueError, match=r"Expected `error_rates` to hold floats in \[0, 1\]"):
        BitErrorTolerance(net, error_rates=(0.1, 1.5))
    with pytest.raises(ValueError, match="Expected `error_rates` to be a non-empty list"):
        BitErrorTolerance(net, error_rates=())
    with pytest.raises(ValueError, match=r"Expected `quantiles` to hold floats in \(0, 1\)"):
        BitErrorTolerance(net, quantiles=(0.0,))
    metric = BitErrorTolerance(net)
    x, y = _data()
    with pytest.raises(ValueError, match="with the same N, but got"):
        metric.update(x, y[:5])
    with pytest.raises(ValueError, match="Expected `update` to be called before `compute`"):
        metric.compute()


def _ddp_worker(rank, world, port, path):
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        net = _model()
        x, y = _data()
        metric = BitErrorTolerance(net, error_rates=RATES, predict_rows=7)
        # uneven shards, several updates per rank
        shard = x[:40] if rank == 0 else x[40:]
        labels = y[:40] if rank == 0 else y[40:]
        for xb, yb in zip(shard.split(16), labels.split(16), strict=True):
            metric.update(xb, yb)
        values = metric.compute()
        if rank == 0:
            torch.save({k: v.clone() for k, v in values.items()}, path)
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_equal_one(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, port, str(path)), nprocs=2, join=True)
    ddp = torch.load(path, weights_only=True)
    net = _model()
    x, y = _data()
    single = BitErrorTolerance(net, error_rates=RATES, predict_rows=7)
    for xb, yb in zip(x[:40].split(16), y[:40].split(16), strict=True):  # same rows as the ranks
        single.update(xb, yb)
    for xb, yb in zip(x[40:].split(16), y[40:].split(16), strict=True):
        single.update(xb, yb)
    values = single.compute()
    assert "acc_pred_p0.05" in values and "bet_pred" in values
    assert set(ddp) == set(values)
    for key in values:
        assert float(ddp[key]) == pytest.approx(float(values[key]), rel=1e-12, abs=1e-12), key


def test_callback_logs_val_bet(tmp_path):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_bet.module import BNNClassifier

    torch.manual_seed(0)
    module = BNNClassifier(hidden=(24, 16))
    x, y = _data(64)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    logger = CSVLogger(tmp_path)
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[BetLogging(error_rates=RATES)],
        logger=logger,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, loader, loader)
    logged = trainer.logged_metrics
    assert "val/bet" in logged and "val/bet/layer0/margin_mean" in logged
    assert "val/bet/layer1/flip_rate_p0.05" in logged
    assert "val/bet/survival" in logged and "val/bet/acc_pred_p0.05" in logged
    module.eval()
    metric = BitErrorTolerance(module, error_rates=RATES, predict_rows=1)  # the callback's rows
    for i, (xb, yb) in enumerate(zip(x.split(16), y.split(16), strict=True)):
        metric.update(xb, yb, predict=i % 2 == 0)  # predict_every=2
    values = metric.compute()
    assert float(logged["val/bet"]) == pytest.approx(float(values["bet_pred"]), rel=1e-5)
    assert float(logged["val/bet/survival"]) == pytest.approx(float(values["survival"]), rel=1e-5)
    # hooks are removed after validation
    assert all(not b.bn._forward_pre_hooks for b in module.net.blocks)
    logger.save()
    text = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "val/bet" in text


def test_callback_subsamples_hidden_layers_but_not_the_output(tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_bet.module import BNNClassifier

    torch.manual_seed(0)
    module = BNNClassifier(hidden=(24, 16))
    x, y = _data(64)
    callback = BetLogging(error_rates=RATES, samples_per_batch=5)
    trainer = L.Trainer(
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.validate(module, DataLoader(TensorDataset(x, y), batch_size=16), verbose=False)
    logged = trainer.callback_metrics
    module.eval()
    first = torch.cat([x[k : k + 5] for k in range(0, 64, 16)])
    hidden = BitErrorTolerance(module, error_rates=RATES)
    hidden.update(first, torch.cat([y[k : k + 5] for k in range(0, 64, 16)]))
    everything = BitErrorTolerance(module, error_rates=RATES)
    everything.update(x, y)
    for key, value in hidden.compute().items():
        if key.startswith("layer"):
            assert float(logged[f"val/bet/{key}"]) == pytest.approx(float(value), rel=1e-5), key
    for key, value in everything.compute().items():
        if key.startswith("output"):
            assert float(logged[f"val/bet/{key}"]) == pytest.approx(float(value), rel=1e-5), key
    assert int(callback.metric.out_count) == 0  # reset after logging


def test_metric_cost_benchmark_writes_results(tmp_path):
    import json

    from lightning_bet.bench.metric_cost import run

    result = run(out_dir=tmp_path, repeats=1, samples=64, batch_size=32, hidden=(16, 16))
    stored = json.loads((tmp_path / "results.json").read_text())["metric_cost"]
    assert stored["ratio"] == result["ratio"] > 0
    assert 0 < result["hook_share"] and result["setup"] == "FCNN 784-16-16-10, 64 samples, batch 32"


def test_conv_model_matches_functional_core():
    from lightning_bet.functional.margins import flip_probability, fold_batchnorm, tolerated_flips
    from lightning_bet.metrics import capture_activations, fan_in

    torch.manual_seed(0)
    net = build_model("vgg3", (1, 8, 8), 10, (32,)).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for block in net.blocks:
            c = block.bn.num_features
            block.bn.running_mean.copy_(torch.randn(c, generator=g) * 4)
            block.bn.running_var.copy_(torch.rand(c, generator=g) * 20 + 1)
            block.bn.weight.copy_(torch.randn(c, generator=g))
    x, y = _data(24)
    metric = BitErrorTolerance(net, error_rates=(0.01,))
    metric.update(x, y)
    values = metric.compute()
    with torch.no_grad(), capture_activations(net) as records:
        net(x)
    for i in (1, 2):  # binary-input conv block and dense block
        block = net.blocks[i]
        a = records["preacts"][i]
        tau, d = fold_batchnorm(block.bn)
        n = fan_in(block.layer)
        t = tolerated_flips(a, tau, d, n).flatten().sort().values
        assert float(values[f"layer{i}/tolerated_fraction_median"]) == float(
            int(t[(t.numel() + 1) // 2 - 1]) / n
        )
        prob = flip_probability(a, tau, d, 0.01, float(n), n=n).mean()
        assert float(values[f"layer{i}/flip_rate_p0.01"]) == pytest.approx(float(prob), rel=1e-4)


def test_constant_channels_and_cached_constants_follow_batchnorm_updates():
    from lightning_bet.functional.margins import flip_probability, fold_batchnorm, tolerated_flips
    from lightning_bet.metrics import capture_activations

    net = _model(seed=4)
    x, y = _data(48, seed=5)
    with torch.no_grad():
        bn = net.blocks[1].bn
        bn.weight[:3] = 0.0  # gamma = 0: constant outputs
        bn.running_mean[3] = 1e6  # thresholds out of reach
        bn.running_mean[4] = -1e6

    def check(metric):
        values = metric.compute()
        with torch.no_grad(), capture_activations(net) as records:
            net(x)
        a = records["preacts"][1]
        tau, d = fold_batchnorm(bn)
        n = net.blocks[1].layer.in_features
        t = tolerated_flips(a, tau, d, n).flatten().sort().values
        assert (
            float(values["layer1/tolerated_fraction_median"])
            == int(t[(t.numel() + 1) // 2 - 1]) / n
        )
        for p in RATES:
            prob = flip_probability(a, tau, d, p, float(n), n=n)
            assert torch.isfinite(prob).all()
            expected = float(prob.mean())
            assert float(values[f"layer1/flip_rate_p{p:g}"]) == pytest.approx(expected, rel=1e-4)
        return values

    metric = BitErrorTolerance(net, error_rates=RATES)
    metric.update(x, y)
    before = check(metric)
    with torch.no_grad():  # in-place change of the BatchNorm: the cached folding is stale
        bn.running_mean.mul_(0.5)
        bn.bias.add_(0.3)
    metric.update(x, y)  # no reset: the cache must follow the in-place update
    fresh = BitErrorTolerance(net, error_rates=RATES)
    fresh.update(x, y)
    after = check(fresh)
    assert float(after["layer1/flip_rate_p0.01"]) != float(before["layer1/flip_rate_p0.01"])
    # mixed: the first update with the old statistics, the second with the new ones
    mixed = metric.compute()
    both = (float(before["layer1/flip_rate_p0.01"]) + float(after["layer1/flip_rate_p0.01"])) / 2
    assert float(mixed["layer1/flip_rate_p0.01"]) == pytest.approx(both, rel=1e-12)
