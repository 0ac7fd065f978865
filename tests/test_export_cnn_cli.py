"""``lightning-bet export`` / ``emulate`` on a convolutional checkpoint (bitstream v2, numpy)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_bet.deploy.bitstream import parse_bitstream, read_bitstream
from lightning_bet.deploy.cli import emulate_main, export_main
from lightning_bet.deploy.emulate import emulate
from lightning_bet.deploy.fold import deploy_forward
from lightning_bet.functional.faults import FaultModel
from lightning_bet.module import BNNClassifier
from tests.test_deploy_fold import digits_test_pixels, randomize_batchnorm_

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "digits_fcnn.yaml"


@pytest.fixture(scope="module")
def exported_cnn(tmp_path_factory):
    """A vgg3-shaped digits CNN (C64-MP-C64-MP-FC16-FC10), random weights and BatchNorm."""
    root = tmp_path_factory.mktemp("export_cnn")
    recipe = root / "digits_vgg3.yaml"
    cnn = {"  arch:": "  arch: vgg3", "  hidden:": "  hidden: [16]"}  # the digits recipe, a CNN
    lines = [
        next((new for old, new in cnn.items() if line.startswith(old)), line)
        for line in RECIPE.read_text().splitlines()
    ]
    recipe.write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    module = BNNClassifier(arch="vgg3", hidden=[16]).eval()
    randomize_batchnorm_(module.net, torch.Generator().manual_seed(0))
    ckpt = root / "cnn.ckpt"
    torch.save({"state_dict": module.state_dict()}, ckpt)
    out = root / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # C / TFLite backends may not take CNNs
        manifest = export_main(["--ckpt", str(ckpt), "--config", str(recipe), "--out", str(out)])
    return out, manifest, recipe


def test_export_of_a_cnn_writes_v2_and_numpy_agrees_on_every_sample(exported_cnn):
    out, manifest, _ = exported_cnn
    data = (out / "model.bet").read_bytes()
    packed = parse_bitstream(data)
    assert manifest["format_version"] == packed.version == 2 and packed.has_conv
    assert manifest["files"]["model.bet"]["bytes"] == len(data)
    assert manifest["input_shape"] == [1, 8, 8] and manifest["test_samples"] == 360
    assert manifest["layers"][:2] == [[64 * 4 * 4, 64], [64 * 2 * 2, 64 * 4 * 4]]
    assert manifest["agreement"]["numpy"] == 1.0
    _, q, y = digits_test_pixels()
    accuracy = (deploy_forward(read_bitstream(data), q).argmax(1) == y).double().mean().item()
    assert manifest["accuracy"]["deploy"] == pytest.approx(accuracy)


def test_emulate_cli_on_a_cnn_bitstream(exported_cnn):
    out, _, recipe = exported_cnn
    path = str(out / "model.bet")
    result = emulate_main([path, "--p", "0.05", "--realizations", "3", "--seed", "2"])
    _, q, y = digits_test_pixels()
    data = (out / "model.bet").read_bytes()
    reference = emulate(data, q.numpy(), y.numpy(), FaultModel(p=0.05), 3, seed=2)
    assert result["accuracies"] == reference.accuracies.tolist()
    stuck = [path, "--p", "0.0", "--stuck_at_1", "0.05", "--realizations", "2", "--key", "0.05"]
    from_recipe = emulate_main([*stuck, "--data", str(recipe)])
    model = FaultModel(p=0.0, stuck_at_1=0.05)
    expected = emulate(data, q.numpy(), y.numpy(), model, 2, seed=0, key=0.05)
    assert np.array_equal(from_recipe["accuracies"], expected.accuracies)
