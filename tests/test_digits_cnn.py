"""The digits CNN recipe (C32-MP-C64-MP-FC10): trains fast and exports exactly in deploy mode."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from lightning_bet.data.digits import load_digits_splits
from lightning_bet.demo import train_recipe
from lightning_bet.deploy.cli import export_demo
from lightning_bet.deploy.fold import deploy_forward, to_deploy
from lightning_bet.models import BNN

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "digits_cnn.yaml"


def test_digits_cnn_recipe_fits_fast_and_deploy_mode_agrees(tmp_path):
    threads = torch.get_num_threads()
    start = time.perf_counter()
    try:
        run = train_recipe(RECIPE, tmp_path)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    print(f"digits CNN: test accuracy {run['test_accuracy']:.4f}, fit {run['fit_seconds']} s")
    assert run["test_accuracy"] >= 0.95
    assert seconds < 120  # the recipe promises under a minute on 2 idle cores; slack for CI load
    model = run["cli"].model.eval()
    net = model.net
    assert isinstance(net, BNN) and type(net.blocks[0].layer).__name__ == "BinaryConv2d"
    x, _ = load_digits_splits()["test"]
    q = torch.round(x * 16).to(torch.int64)
    deployed = to_deploy(net, input_levels=16)
    with torch.no_grad():
        float_predictions = net(q.float() / 16).argmax(1)
    predictions = deploy_forward(deployed, q).argmax(1)
    assert torch.equal(predictions, float_predictions)  # every one of the 360 test samples
    # what `make demo` reports for it: every backend equals deploy mode on every test sample
    exported = export_demo(run["ckpt"], run["config"], tmp_path / "export", realizations=2)
    print(f"digits CNN export: {exported}")
    assert exported["bitstream_bytes"] == (tmp_path / "export" / "model.bet").stat().st_size
    assert (exported["agree_numpy"], exported["agree_c"], exported["agree_tflite"]) == (1, 1, 1)
