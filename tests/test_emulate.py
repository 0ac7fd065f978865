"""Fault emulation on packed bitstreams against the PyTorch fault core and deploy-mode reference."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lightning_bet.deploy.bitstream import read_bitstream, write_bitstream
from lightning_bet.deploy.emulate import (
    default_key,
    emulate,
    fault_indices,
    faulty_bitstreams,
    inject_faults,
)
from lightning_bet.deploy.fold import deploy_forward, to_deploy
from lightning_bet.deploy.model import DeployLayer, DeployModel
from lightning_bet.functional.faults import FaultModel, make_generator, sample_fault_indices
from lightning_bet.layers import binary_layers
from lightning_bet.sweeps import fault_maps, sweep
from tests.test_bitstream import random_model
from tests.test_deploy_fold import digits_test_pixels, trained_digits

FAULT_MODELS = [
    FaultModel(p=0.01),
    FaultModel(p01=0.03, p10=0.005),
    FaultModel(p=0.002, stuck_at_0=0.01, stuck_at_1=0.02),
]


def _digits_bitstream():
    module, _ = trained_digits()
    return module.net, write_bitstream(to_deploy(module.net, 16))


def _negated(model: DeployModel, maps: dict[int, torch.Tensor]) -> DeployModel:
    """Reference: negate the logical weights at the map's indices (no packing involved)."""
    layers = []
    for i, layer in enumerate(model.layers):
        weight = torch.from_numpy(layer.weight.copy()).flatten()
        if i in maps:
            weight[maps[i]] *= -1
        layers.append(
            DeployLayer(
                weight.view(layer.shape).numpy(),
                layer.threshold,
                layer.direction,
                layer.binary_input,
            )
        )
    return DeployModel(tuple(layers), model.input_levels, model.scale, model.input_shape)


@pytest.mark.parametrize("fault_model", FAULT_MODELS, ids=["symmetric", "asymmetric", "stuck"])
def test_fault_maps_equal_the_torch_maps_of_the_network(fault_model):
    net, data = _digits_bitstream()
    key = default_key(fault_model)
    for r in range(3):
        maps = fault_indices(data, fault_model, seed=11, realization=r)
        for index, (_, layer) in enumerate(binary_layers(net)):
            generator = make_generator(11, key, r, index)
            expected = sample_fault_indices(layer.binary_weight().detach(), fault_model, generator)
            assert torch.equal(maps[index], expected)


@pytest.mark.parametrize("fault_model", FAULT_MODELS, ids=["symmetric", "asymmetric", "stuck"])
def test_injected_bits_are_exactly_the_logical_indices(fault_model):
    rng = np.random.default_rng(5)
    model = random_model(rng, [45, 33, 70, 7])  # odd widths: padding in every row
    data = write_bitstream(model)
    maps = fault_indices(data, fault_model, seed=3, realization=0)
    faulty = read_bitstream(inject_faults(data, maps))  # CRCs valid, padding still 0
    for i, (clean, bad) in enumerate(zip(model.layers, faulty.layers, strict=True)):
        changed = np.flatnonzero(clean.weight != bad.weight)
        assert np.array_equal(changed, maps[i].numpy())
        if fault_model.p01 is not None:  # asymmetric: only +1 -> -1 at rate p01, -1 -> +1 at p10
            assert changed.size > 0
        if clean.threshold is not None:
            assert np.array_equal(clean.threshold, bad.threshold)
    assert sum(m.numel() for m in maps.values()) > 0


def test_symmetric_flip_rate_and_layer_selection():
    model = random_model(np.random.default_rng(1), [200, 300, 10])
    data = write_bitstream(model)
    maps = fault_indices(data, FaultModel(p=0.05), seed=0, realization=0, layers=[0])
    assert list(maps) == [0]
    rate = maps[0].numel() / 60_000
    assert abs(rate - 0.05) < 4 * np.sqrt(0.05 * 0.95 / 60_000)
    faulty = read_bitstream(inject_faults(data, maps))
    assert np.array_equal(faulty.layers[1].weight, model.layers[1].weight)
    # same seed: same bytes; another realization: other faults
    again = inject_faults(data, fault_indices(data, FaultModel(p=0.05), 0, 0, layers=[0]))
    assert again == inject_faults(data, maps)
    other = inject_faults(data, fault_indices(data, FaultModel(p=0.05), 0, 1, layers=[0]))
    assert other != again


def test_emulated_accuracy_equals_torch_paths_for_the_same_fault_maps():
    net, data = _digits_bitstream()
    model = read_bitstream(data)
    x, q, y = digits_test_pixels()
    fault_model, seed, realizations = FaultModel(p=0.02), 4, 4
    result = emulate(data, q.numpy(), y.numpy(), fault_model, realizations, seed=seed)
    assert result.accuracies.shape == (realizations,)
    for r, streamed in enumerate(faulty_bitstreams(data, fault_model, realizations, seed)):
        maps = fault_indices(data, fault_model, seed, r)
        # 1) deploy-mode reference in torch, weights negated at the same logical indices
        logits = deploy_forward(_negated(model, maps), q)
        reference = (logits.argmax(1) == y).double().mean().item()
        assert result.accuracies[r] == reference
        assert streamed == inject_faults(data, maps)
        # 2) the float BNN with the same signs negated (the PyTorch sweep's arithmetic)
        faulty_net = copy.deepcopy(net)
        with torch.no_grad():
            for index, (_, layer) in enumerate(binary_layers(faulty_net)):
                signs = layer.binary_weight().detach().flatten()
                signs[maps[index]] *= -1
                layer.weight.copy_(signs.view_as(layer.weight))
            agree = (faulty_net(x).argmax(1) == logits.argmax(1)).double().mean().item()
        assert agree >= 0.997  # float32 BatchNorm can only differ at a rounding-level tie
    assert result.mean == pytest.approx(result.accuracies.mean())
    assert result.std == pytest.approx(result.accuracies.std(ddof=1))
    clean = (deploy_forward(model, q).argmax(1) == y).double().mean().item()
    assert result.mean < clean + 1e-12


def test_emulate_rejects_bad_arguments():
    data = write_bitstream(random_model(np.random.default_rng(0), [5, 4, 3]))
    with pytest.raises(ValueError, match="`realizations` to be an int >= 1, but got 0"):
        list(faulty_bitstreams(data, FaultModel(p=0.1), 0))
    with pytest.raises(ValueError, match=r"layer indices in \[0, 2\), but got \[2\]"):
        fault_indices(data, FaultModel(p=0.1), 0, 0, layers=[2])
    with pytest.raises(TypeError, match="to be a FaultModel"):
        fault_indices(data, 0.1, 0, 0)
    with pytest.raises(ValueError, match=r"indices of layer 0 in \[0, 20\), but got values in"):
        inject_faults(data, {0: [20]})
    with pytest.raises(ValueError, match=r"layer indices in \[0, 2\), but got 5"):
        inject_faults(data, {5: [0]})
    with pytest.raises(ValueError, match="one label per sample"):
        emulate(data, np.zeros((3, 5), np.uint8), np.zeros(2), FaultModel(p=0.1), 1)


@pytest.mark.parametrize("asymmetric", [False, True], ids=["symmetric", "asymmetric"])
def test_emulated_accuracy_equals_the_pytorch_sweep(asymmetric):
    """Same seed, same key scheme (p, realization, layer): the sweep's accuracies, exactly."""
    net, data = _digits_bitstream()
    x, q, y = digits_test_pixels()
    rates, realizations, seed = [0.01, 0.05], 3, 7

    def fault_model(p: float) -> FaultModel:
        return FaultModel(p01=p, p10=p / 2) if asymmetric else FaultModel(p=p)

    swept = sweep(
        net,
        (x, y),
        rates,
        realizations,
        seed=seed,
        fault_model=fault_model,
        evaluator="auto" if asymmetric else "naive",  # both PyTorch evaluators
    )
    for i, p in enumerate(rates):
        emulated = emulate(data, q.numpy(), y.numpy(), fault_model(p), realizations, seed, key=p)
        assert np.array_equal(emulated.accuracies, swept.accuracy[i]), (p, swept.accuracy[i])
        maps = fault_maps([layer for _, layer in binary_layers(net)], fault_model(p), seed, p, 0)
        assert all(
            torch.equal(a, b)
            for a, b in zip(
                maps, fault_indices(data, fault_model(p), seed, 0, key=p).values(), strict=True
            )
        )
