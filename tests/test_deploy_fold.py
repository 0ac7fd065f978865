"""Deploy mode: BatchNorm folding into integer thresholds and the integer reference forward."""

from __future__ import annotations

import functools
import math
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lightning_bet.data.digits import DigitsDataModule, load_digits_splits
from lightning_bet.deploy.fold import DeployModule, deploy_forward, fold_thresholds, to_deploy
from lightning_bet.deploy.model import DeployLayer, DeployModel
from lightning_bet.functional.binarize import sign
from lightning_bet.models import build_model
from lightning_bet.module import BNNClassifier
from tests.training import fit_plain

DIGITS_EPOCHS = 6


@functools.lru_cache(maxsize=1)
def trained_digits() -> tuple[BNNClassifier, Path]:
    """A digits FCNN trained with the recipe's settings for a few epochs, and its checkpoint.

    A plain loop over the recipe's model, optimizer and batch size (a Trainer adds seconds of
    overhead per epoch here); the checkpoint has Lightning's ``state_dict`` layout.
    """
    torch.manual_seed(0)
    module = BNNClassifier(
        arch="fcnn", hidden=[256, 256], lr=1e-3, weight_decay=0.0, lr_step_size=20, lr_gamma=0.5
    )
    x, y = load_digits_splits()["train"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: threads only contend on a shared machine
    try:
        fit_plain(module, x, y, DIGITS_EPOCHS, lr=1e-3, criterion=module.criterion)
    finally:
        torch.set_num_threads(threads)
    root = Path(tempfile.mkdtemp(prefix="lbet_digits_"))
    ckpt = root / "digits.ckpt"
    torch.save({"state_dict": module.state_dict()}, ckpt)
    return module.eval(), ckpt


def digits_test_pixels() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x float, q int64 pixels, y)`` of the digits test split."""
    x, y = load_digits_splits()["test"]
    q = torch.round(x * 16).to(torch.int64)
    return x, q, y


def randomize_batchnorm_(net: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm random statistics and affine parameters, including negative gammas."""
    for module in net.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=generator) * 4)
            module.running_var.copy_(torch.rand(c, generator=generator) * 3 + 0.1)
            module.weight.data.copy_(torch.randn(c, generator=generator))
            module.bias.data.copy_(torch.randn(c, generator=generator))


# --- the threshold rule against exact rational arithmetic ---------------------------------


@pytest.mark.parametrize("levels", [1, 3, 16, 255])
def test_fold_thresholds_matches_exact_rational_comparison(levels):
    rng = np.random.default_rng(levels)
    fan_in = 5
    bound = fan_in * levels
    # dyadic taus (exact as float64 and as Fraction), many landing exactly on a / levels
    tau = np.concatenate(
        [
            rng.integers(-bound - 3, bound + 4, 40) / levels,
            rng.normal(0, bound / levels, 40).round(3),
            np.arange(-40, 41) / 3,  # not dyadic: L * tau rounds onto integers in float64
            [np.inf, -np.inf, 0.0, bound / levels, -bound / levels],
        ]
    )
    tau = np.repeat(tau, 2)
    d = np.tile([1, -1], tau.size // 2)
    T = fold_thresholds(tau, d, levels, fan_in)
    assert T.dtype == np.int64
    assert np.all(np.abs(T) <= bound + 1)
    # the comparison is monotone in a: checking around T and at the ends of the range suffices
    for j in range(tau.size):
        around = {-bound, bound} | {int(T[j]) + k for k in range(-2, 3)}
        for a in sorted(x for x in around if -bound <= x <= bound):
            deploy = d[j] * (a - T[j]) >= 0
            if math.isinf(tau[j]):
                exact = (tau[j] < 0) == (d[j] > 0)
            else:
                exact = d[j] * (Fraction(a, levels) - Fraction(float(tau[j]))) >= 0
            assert deploy == exact, (a, tau[j], d[j], T[j])


def test_fold_thresholds_rejects_nan_and_int32_overflow():
    with pytest.raises(ValueError, match="contain no NaN"):
        fold_thresholds(np.array([np.nan]), np.array([1]), 16, 4)
    with pytest.raises(ValueError, match="to fit int32"):
        fold_thresholds(np.array([0.0]), np.array([1]), 2**20, 2**12)


# --- deploy mode against the float network ----------------------------------------------


def _float_hidden_outputs(net, x):
    outputs = []
    h = x
    for block in net.blocks:
        y = block.bn(block.preactivation(h))
        outputs.append(y)
        h = sign(y)
    return outputs


def test_exact_ties_follow_the_zero_free_sign():
    """BatchNorm output exactly 0 gives +1 in the float net and in deploy mode, for both gammas."""
    net = build_model("fcnn", (1, 2, 2), 3, (4,)).eval()
    with torch.no_grad():
        net.blocks[0].layer.weight.copy_(torch.tensor([[1.0, 1, 1, 1]] * 4))
        bn = net.blocks[0].bn
        bn.running_mean.copy_(torch.tensor([0.5, 0.5, 0.3, 0.3]))
        bn.running_var.copy_(torch.full((4,), 1.0 - bn.eps))
        bn.weight.copy_(torch.tensor([1.0, -1.0, 0.0, 0.0]))
        bn.bias.copy_(torch.tensor([0.0, 0.0, 0.0, -0.5]))
    model = to_deploy(net, input_levels=16)
    assert model.layers[0].threshold.tolist()[:2] == [8, 8]
    q = torch.tensor([[8, 0, 0, 0], [7, 0, 0, 0], [9, 0, 0, 0], [0, 0, 0, 0]])
    expected = torch.tensor([[1, 1, 1, -1], [-1, 1, 1, -1], [1, -1, 1, -1], [-1, 1, 1, -1]])
    (y,) = _float_hidden_outputs(net, q.float() / 16)
    assert torch.equal(sign(y).long(), expected)
    layer = model.layers[0]
    a = q.numpy() @ layer.weight.T.astype(np.int64)
    deploy = np.where(layer.direction * (a - layer.threshold) >= 0, 1, -1)
    assert np.array_equal(deploy, expected.numpy())


@pytest.mark.parametrize("levels", [16, 255])
def test_deploy_forward_equals_float_network_hidden_signs(levels):
    generator = torch.Generator().manual_seed(levels)
    net = build_model("fcnn", (1, 6, 5), 7, (33, 17)).eval()
    randomize_batchnorm_(net, generator)
    model = to_deploy(net, input_levels=levels)
    q = torch.randint(0, levels + 1, (300, 30), generator=generator)
    x = (q.double() / levels).float()
    ys = _float_hidden_outputs(net, x.view(-1, 1, 6, 5))
    module = DeployModule(model)
    v = q.double()
    for i, y in enumerate(ys):
        layer = model.layers[i]
        a = v @ torch.from_numpy(layer.weight.astype(np.float64)).T
        t = torch.from_numpy(layer.threshold).double()
        d = torch.from_numpy(layer.direction).double()
        v = torch.where(d * (a - t) >= 0, 1.0, -1.0).double()
        differ = v.float() != sign(y)
        # float32 BatchNorm may round differently only within rounding distance of its zero
        assert (y[differ].abs() < 1e-4).all()
        v = sign(y).double()  # continue from the float net's signs: compare layer by layer
    logits = deploy_forward(model, q)
    assert logits.dtype == torch.int64
    assert torch.equal(logits, module(q))
    float_logits = net(x.view(-1, 1, 6, 5))
    agree = (float_logits.argmax(1) == logits.argmax(1)).float().mean().item()
    assert agree >= 0.99


def test_digits_deploy_mode_agrees_with_float_network():
    module, _ = trained_digits()
    net = module.net
    model = to_deploy(net, input_levels=DigitsDataModule.input_levels)
    x, q, y = digits_test_pixels()
    with torch.no_grad():
        float_logits = net(x)
        ys = _float_hidden_outputs(net, x)
    logits = deploy_forward(model, q)
    # digits pixels are q/16 and every partial sum is exact in float32, so only a float32
    # BatchNorm output within rounding of 0 could disagree; none does on this test set
    nearest_tie = min(float(t.abs().min()) for t in ys)
    print(f"digits: smallest |BatchNorm output| {nearest_tie:.3g}")
    agree = (float_logits.argmax(1) == logits.argmax(1)).float().mean().item()
    accuracy = (logits.argmax(1) == y).float().mean().item()
    print(f"digits: deploy/float agreement {agree:.4f}, deploy accuracy {accuracy:.4f}")
    assert agree == 1.0
    assert accuracy > 0.8
    # the integer logits scaled by s are the float logits
    scale = float(net.head.scale.detach())
    assert torch.allclose(float_logits.double(), scale * logits.double(), atol=1e-4)


def test_deploy_module_moves_with_to_and_is_device_agnostic():
    net = build_model("fcnn", (1, 8, 8), 10, (16,))
    module = DeployModule(to_deploy(net, 16))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    module = module.to(device)
    q = torch.randint(0, 17, (4, 1, 8, 8), device=device)
    assert module(q).device.type == device


# --- bad input ---------------------------------------------------------------------------


def test_to_deploy_rejects_unsupported_networks():
    with pytest.raises(ValueError, match="binarize_input=True, which the export does not"):
        to_deploy(build_model("fcnn", (1, 8, 8), 10, (16,), binarize_input=True), 16)
    net = build_model("fcnn", (1, 8, 8), 10, (16, 16))
    net.blocks[1].bn = nn.Identity()
    with pytest.raises(ValueError, match=r"`blocks.1.bn` \(Identity\) breaks the pattern"):
        to_deploy(net, 16)
    net = build_model("fcnn", (1, 8, 8), 10, (16,))
    net.blocks[0].pool = nn.Identity()
    with pytest.raises(ValueError, match=r"`blocks.0.pool` \(Identity\) breaks the pattern: only"):
        to_deploy(net, 16)
    net = build_model("fcnn", (1, 8, 8), 10, (16,))
    net.blocks[0].bn = nn.BatchNorm1d(16, track_running_stats=False)
    with pytest.raises(ValueError, match="track running statistics"):
        to_deploy(net, 16)
    with pytest.raises(ValueError, match="Expected `net` to contain binary layers"):
        to_deploy(nn.Linear(3, 2), 16)
    with pytest.raises(ValueError, match=r"`input_levels` to be an int >= 1, but got 0"):
        to_deploy(build_model("fcnn", (1, 8, 8), 10, (16,)), 0)


def test_deploy_forward_rejects_bad_pixels():
    model = to_deploy(build_model("fcnn", (1, 8, 8), 10, (16,)), 16)
    with pytest.raises(ValueError, match=r"shape \(N, 64\) or \(N, 1, 8, 8\), but got \(2, 63\)"):
        deploy_forward(model, torch.zeros(2, 63))
    with pytest.raises(ValueError, match=r"integer pixels in \[0, 16\], but got values in"):
        deploy_forward(model, torch.full((2, 64), 17))
    with pytest.raises(ValueError, match="not all integers"):
        deploy_forward(model, torch.full((2, 64), 0.5))
    with pytest.raises(TypeError, match="to be a torch.Tensor"):
        deploy_forward(model, np.zeros((2, 64)))


def _layer(out=3, n=4, hidden=True, binary=False):
    return DeployLayer(
        weight=np.ones((out, n), np.int8),
        threshold=np.zeros(out, np.int64) if hidden else None,
        direction=np.ones(out, np.int8) if hidden else None,
        binary_input=binary,
    )


def test_deploy_model_validation_messages():
    with pytest.raises(ValueError, match="non-empty 2-D array"):
        DeployLayer(np.zeros((2, 2), np.int8), None, None, False)
    with pytest.raises(ValueError, match="both given"):
        DeployLayer(np.ones((2, 2), np.int8), np.zeros(2, np.int64), None, False)
    with pytest.raises(ValueError, match=r"`threshold` to be an integer array of shape \(2,\)"):
        DeployLayer(np.ones((2, 2), np.int8), np.zeros(2), np.ones(2), False)
    with pytest.raises(ValueError, match="`direction` to be an array of shape"):
        DeployLayer(np.ones((2, 2), np.int8), np.zeros(2, np.int64), np.zeros(2), False)
    with pytest.raises(ValueError, match="exactly one output layer"):
        DeployModel((_layer(),), 16, 1.0)
    with pytest.raises(ValueError, match="layer 1 to have binary_input=True"):
        DeployModel((_layer(), _layer(2, 3, hidden=False, binary=False)), 16, 1.0)
    with pytest.raises(ValueError, match="layer 1 to have 3 input features"):
        DeployModel((_layer(), _layer(2, 5, hidden=False, binary=True)), 16, 1.0)
    with pytest.raises(ValueError, match="`scale` to be a finite float > 0, but got -1.0"):
        DeployModel((_layer(hidden=False),), 16, -1.0)
    with pytest.raises(ValueError, match="`input_levels` to be an int >= 1"):
        DeployModel((_layer(hidden=False),), 0, 1.0)
    with pytest.raises(ValueError, match=r"`input_shape` \(1, 5\) to have 4 elements"):
        DeployModel((_layer(hidden=False),), 16, 1.0, (1, 5))
