"""Smoke tests: every recipe parses and runs one training and validation batch (fast_dev_run)."""

from pathlib import Path

import pytest

from lightning_bet.callbacks.bet_logging import BetLogging
from lightning_bet.cli import main, make_cli
from tests.datafiles import cifar_batches, cifar_tarball, idx_dataset, use_md5s, write_files

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
ALL_RECIPES = sorted(p.name for p in RECIPES.glob("*.yaml"))


def _data_dir_for(recipe: str, tmp_path: Path, monkeypatch) -> list[str]:
    """Write tiny standard-format files for the recipe's dataset; return CLI overrides."""
    text = (RECIPES / recipe).read_text()
    if "FashionMNISTDataModule" in text or "MNISTDataModule" in text:
        contents = {name: data for name, (_, data) in idx_dataset().items()}
        for name in ("MNIST", "FashionMNIST"):
            use_md5s(monkeypatch, name, contents)
        write_files(tmp_path, contents)
    elif "CIFAR10DataModule" in text:
        data = cifar_tarball(cifar_batches())
        use_md5s(monkeypatch, "CIFAR10", {"cifar-10-python.tar.gz": data})
        write_files(tmp_path, {"cifar-10-python.tar.gz": data})
    else:
        return []
    return [
        "--data.init_args.data_dir",
        str(tmp_path),
        "--data.init_args.val_size",
        "4",
        "--data.init_args.batch_size",
        "4",
        "--data.init_args.download",
        "false",
    ]


def test_every_recipe_value_has_a_why_comment():
    for name in ALL_RECIPES:
        for line in (RECIPES / name).read_text().splitlines():
            stripped = line.strip()
            if stripped and not stripped.startswith("#") and not stripped.endswith(":"):
                assert "#" in line, f"{name}: {line!r} has no comment"


@pytest.mark.parametrize("recipe", ALL_RECIPES)
def test_every_recipe_logs_val_bet(recipe):
    cli = make_cli(["--config", str(RECIPES / recipe)], run=False)
    assert any(isinstance(callback, BetLogging) for callback in cli.trainer.callbacks), recipe


@pytest.mark.parametrize("recipe", ALL_RECIPES)
def test_recipe_fast_dev_run(recipe, tmp_path, monkeypatch):
    overrides = _data_dir_for(recipe, tmp_path, monkeypatch)
    status = main(
        [
            "fit",
            "--config",
            str(RECIPES / recipe),
            *overrides,
            "--trainer.fast_dev_run",
            "true",
            "--trainer.default_root_dir",
            str(tmp_path / "runs"),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.accelerator",
            "cpu",
        ]
    )
    assert status == 0


def test_unknown_config_key_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (RECIPES / "digits_fcnn.yaml").read_text().replace("  lr: 0.001", "  lrr: 0.001")
    )
    with pytest.raises(SystemExit):
        make_cli(["fit", "--config", str(bad)], run=True)
    err = capsys.readouterr().err
    assert "does not accept option 'model.lrr'" in err


def test_model_takes_shape_from_data(tmp_path):
    cli = make_cli(["--config", str(RECIPES / "digits_fcnn.yaml")], run=False)
    assert cli.model.net.input_shape == (1, 8, 8)
    assert cli.model.net.num_classes == 10
