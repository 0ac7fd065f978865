"""Fault emulation on packed conv weights (format v2): the PyTorch sweep's maps and accuracies."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from lightning_bet.deploy.bitstream import parse_bitstream, read_bitstream, write_bitstream
from lightning_bet.deploy.emulate import emulate, fault_indices, faulty_bitstreams, inject_faults
from lightning_bet.deploy.fold import to_deploy
from lightning_bet.deploy.interpreter import predict_bitstream
from lightning_bet.functional.faults import FaultModel
from lightning_bet.layers import binary_layers
from lightning_bet.sweeps import fault_maps, naive_accuracy, sweep
from tests.test_bitstream_v2 import GEOMETRIES
from tests.test_deploy_conv import conv_net
from tests.test_deploy_fold import digits_test_pixels, randomize_batchnorm_

FAMILIES = {
    "symmetric": lambda p: FaultModel(p=p),
    "asymmetric": lambda p: FaultModel(p01=p, p10=p / 2),
    "stuck": lambda p: FaultModel(p=p / 5, stuck_at_0=p / 2, stuck_at_1=p),
}


@functools.lru_cache(maxsize=1)
def _digits_cnn() -> tuple[torch.nn.Module, bytes]:
    """The digits CNN C32-MP-C64-MP-FC-10 with random weights and BatchNorm, and its bitstream.

    BatchNorm statistics come from the digits test images (running means and variances of the
    real pre-activations), so that faults move predictions; gammas are random, some negative.
    """
    torch.manual_seed(0)
    net = conv_net(**GEOMETRIES["digits_cnn"])
    randomize_batchnorm_(net, torch.Generator().manual_seed(0))
    x, _, _ = digits_test_pixels()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # cumulative average: exact batch statistics
        net.train()
        net(x)
        net.eval()
    return net, write_bitstream(to_deploy(net, 16))


def _layers(net):
    return [layer for _, layer in binary_layers(net)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_conv_fault_maps_are_the_sweep_maps(family):
    net, data = _digits_cnn()
    assert parse_bitstream(data).layers[0].is_conv
    for p, r in [(0.01, 0), (0.05, 2)]:
        fault_model = FAMILIES[family](p)
        ours = fault_indices(data, fault_model, seed=3, realization=r, key=p)
        theirs = fault_maps(_layers(net), fault_model, 3, p, r)
        assert len(ours) == len(theirs) == 3
        for index, expected in enumerate(theirs):
            assert torch.equal(ours[index], expected)
        assert sum(m.numel() for m in theirs[:2]) > 0  # conv kernels are faulted


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_injected_conv_bits_are_exactly_the_kernel_indices(family):
    net, data = _digits_cnn()
    model = read_bitstream(data)
    maps = fault_indices(data, FAMILIES[family](0.05), seed=1, realization=0)
    faulty = read_bitstream(inject_faults(data, maps))  # CRCs fresh, padding bits still 0
    for i, (clean, bad) in enumerate(zip(model.layers, faulty.layers, strict=True)):
        changed = np.flatnonzero(clean.weight.reshape(-1) != bad.weight.reshape(-1))
        assert np.array_equal(changed, maps[i].numpy())
        if clean.threshold is not None:
            assert np.array_equal(clean.threshold, bad.threshold)
            assert np.array_equal(clean.direction, bad.direction)
    # a kernel bit is one cell: the flipped bit is the same at every output position
    layer = parse_bitstream(data).layers[0]
    assert layer.weight_words.shape == (9,)  # 32 x 1 x 3 x 3 = 288 bits, no padding
    with pytest.raises(ValueError, match=r"indices of layer 0 in \[0, 288\), but got values"):
        inject_faults(data, {0: [288]})


def test_conv_padding_bits_are_never_faulted():
    """27 kernel bits in one word: p = 0.9 flips nearly every cell, never bits 27..31."""
    net = conv_net(input_shape=(1, 6, 6), convs=((3, 3, 1, 1, 2),), dense=(), num_classes=3)
    randomize_batchnorm_(net, torch.Generator().manual_seed(2))
    data = write_bitstream(to_deploy(net, 16))
    for faulty in faulty_bitstreams(data, FaultModel(p=0.9), 5, seed=2):
        word = parse_bitstream(faulty).layers[0].weight_words  # parse checks the padding
        assert int(word[0]) >> 27 == 0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_emulated_accuracy_equals_the_pytorch_sweep_on_a_cnn(family):
    """Same seed and maps: the sweep's accuracies (naive loop and fast path), exactly."""
    net, data = _digits_cnn()
    x, q, y = digits_test_pixels()
    rates, realizations, seed = [0.02, 0.1], 3, 5
    swept = sweep(
        net, (x, y), rates, realizations, seed, fault_model=FAMILIES[family], evaluator="naive"
    )
    fast = sweep(net, (x, y), rates, realizations, seed, fault_model=FAMILIES[family])
    assert fast.config["evaluator"] == "fast"
    assert np.array_equal(fast.accuracy, swept.accuracy)
    for i, p in enumerate(rates):
        emulated = emulate(data, q.numpy(), y.numpy(), FAMILIES[family](p), realizations, seed, p)
        assert np.array_equal(emulated.accuracies, swept.accuracy[i]), (p, swept.accuracy[i])
    clean = float(np.mean(predict_bitstream(data, q.numpy()) == y.numpy()))
    assert len(set(swept.accuracy.ravel().tolist()) | {clean}) > 2  # faults change accuracy
    # one realization by hand: the sweep's maps applied to the float net and to the bits
    maps = fault_maps(_layers(net), FAMILIES[family](0.1), seed, 0.1, 0)
    faulty = inject_faults(data, dict(enumerate(maps)))
    accuracy = float(np.mean(predict_bitstream(faulty, q.numpy()) == y.numpy()))
    assert accuracy == naive_accuracy(net, x, y, maps)
