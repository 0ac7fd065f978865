"""The bit-error-tolerance training recipes: they parse to the intended callbacks and train."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lightning_bet.callbacks import BitFlipTraining, MarginRegularization
from lightning_bet.cli import make_cli
from lightning_bet.functional.faults import FaultModel

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

EXPECTED = {
    "flip_st": (BitFlipTraining, {"p": 0.05, "variant": "straight_through"}, "cross_entropy"),
    "flip_hirtzlin": (BitFlipTraining, {"p": 0.05, "variant": "hirtzlin"}, "cross_entropy"),
    "margin_reg": (MarginRegularization, {"lam": 0.1, "delta": 1.0}, "cross_entropy"),
    "mhl": (None, {}, "mhl"),
}
RECIPE_NAMES = [f"{data}_fcnn_{kind}" for data in ("digits", "fashion") for kind in EXPECTED]


def ours(callbacks, kind=None):
    return [c for c in callbacks if isinstance(c, BitFlipTraining | MarginRegularization)]


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_recipe_parses_to_the_intended_setup(name, tmp_path):
    kind = name.split("_fcnn_")[1]
    cls, values, loss = EXPECTED[kind]
    args = ["--config", str(RECIPES / f"{name}.yaml")]
    if name.startswith("fashion"):
        args += ["--data.init_args.data_dir", str(tmp_path)]  # parse only: no files needed
    cli = make_cli(args, run=False)
    found = ours(cli.trainer.callbacks, kind)
    if cls is None:
        assert found == []
    else:
        (callback,) = found
        assert isinstance(callback, cls)
        for key, value in values.items():
            assert getattr(callback, key) == value, key
    assert cli.model.hparams.loss == loss
    hidden = (2048, 2048) if name.startswith("fashion") else (256, 256)
    assert tuple(cli.model.hparams.hidden) == hidden
    if name.startswith("fashion"):
        assert type(cli.datamodule).__name__ == "FashionMNISTDataModule"
        assert cli.config.data.init_args.batch_size == 256


def test_fault_model_from_yaml(tmp_path):
    text = (RECIPES / "digits_fcnn_flip_st.yaml").read_text()
    recipe = tmp_path / "asym.yaml"
    recipe.write_text(text.replace("fault: null ", "fault: {p01: 1.0, p10: 0.25}"))
    cli = make_cli(["--config", str(recipe)], run=False)
    (callback,) = ours(cli.trainer.callbacks, "flip")
    assert callback.fault_model(0) == FaultModel(p01=0.05, p10=0.0125)


@pytest.mark.parametrize("kind", ["flip_st", "flip_hirtzlin", "margin_reg"])
def test_digits_recipe_trains_a_few_steps(kind, tmp_path):
    cli = make_cli(
        [
            "fit",
            "--config",
            str(RECIPES / f"digits_fcnn_{kind}.yaml"),
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "4",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.accelerator",
            "cpu",
        ]
    )
    metrics = cli.trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss"]))
    assert "val/acc" in metrics
    assert 0.0 <= float(metrics["val/bet"]) <= 1.0  # BetLogging is on in every recipe
    found = ours(cli.trainer.callbacks, kind)
    if kind.startswith("flip"):
        (callback,) = found
        assert callback.micro_step == 4 and not callback.is_flipped
        bits = sum(p.numel() for n, p in cli.model.named_parameters() if "layer" in n)
        rate = float(metrics["flip/rate_epoch"])
        assert abs(rate - 0.05) < 4 * math.sqrt(0.05 * 0.95 / (4 * bits))
        assert float(metrics["flip/p_epoch"]) == pytest.approx(0.05)
        assert float(metrics["flip/flipped_bits_epoch"]) == pytest.approx(rate * bits)
        checkpoint = next(Path(tmp_path).rglob("*.ckpt"))
        state = torch.load(checkpoint, weights_only=False)["state_dict"]
        live = cli.model.state_dict()
        for key in state:
            assert torch.equal(state[key], live[key]), key
    if kind == "margin_reg":
        assert float(metrics["train/margin_reg"]) > 0
