"""``lightning-bet``: every subcommand ends a bad input in one line and exit status 2.

Classes of bad input: a bad value, a missing file, a truncated or corrupt file, a file that is
not what the option expects, a checkpoint needing untrusted code, an unsupported model and an
unknown option. A defect prints its traceback and says it is a bug; ``--debug`` shows the
traceback of a user error too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from lightning_bet import __version__
from lightning_bet.cli import COMMANDS, Command, main
from lightning_bet.deploy.bitstream import write_bitstream
from lightning_bet.deploy.fold import to_deploy
from lightning_bet.module import BNNClassifier

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "digits_fcnn.yaml")
FLIP_RECIPE = str(ROOT / "recipes" / "digits_fcnn_flip_st.yaml")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Good and bad inputs: checkpoints, recipes and bitstreams."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    module = BNNClassifier().eval()
    good = root / "good.ckpt"  # what the Trainer writes, less optimizer and loop states
    torch.save({"state_dict": module.state_dict(), "pytorch-lightning_version": "2.6.0"}, good)
    torch.save({"state_dict": module.state_dict()}, root / "plain.ckpt")
    data = good.read_bytes()
    (root / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (root / "text.ckpt").write_text("model: not a checkpoint\n")
    torch.save(
        {"state_dict": module.state_dict(), "args": argparse.Namespace(a=1)}, root / "unsafe.ckpt"
    )
    flip = yaml.safe_load(Path(FLIP_RECIPE).read_text())
    flip["trainer"]["callbacks"][0]["init_args"]["p"] = 1.5  # BitFlipTraining
    (root / "flip_p1.5.yaml").write_text(yaml.safe_dump(flip))
    config = yaml.safe_load(Path(RECIPE).read_text())
    config["model"].update({"arch": "vgg3", "hidden": [16]})
    (root / "vgg3.yaml").write_text(yaml.safe_dump(config))
    vgg = BNNClassifier(arch="vgg3", hidden=[16])
    torch.save({"state_dict": vgg.state_dict()}, root / "vgg3.ckpt")
    config["model"].update({"arch": "fcnn", "hidden": [16], "binarize_input": True})
    (root / "binary_input.yaml").write_text(yaml.safe_dump(config))
    unsupported = BNNClassifier(hidden=[16], binarize_input=True)  # the export refuses it
    torch.save({"state_dict": unsupported.state_dict()}, root / "binary_input.ckpt")
    bitstream = write_bitstream(to_deploy(module.net, 16))
    (root / "model.bet").write_bytes(bitstream)
    corrupt = bytearray(bitstream)
    corrupt[200] ^= 1
    (root / "corrupt.bet").write_bytes(bytes(corrupt))
    (root / "truncated.bet").write_bytes(bitstream[:100])
    return {path.name: str(path) for path in root.iterdir()} | {"root": str(root)}


def _ckpt(cmd: str, name: str, files: dict[str, str]) -> list[str]:
    """``cmd``'s arguments reading checkpoint ``name`` (a missing one when not in ``files``)."""
    path = files.get(name, os.path.join(files["root"], name))
    if cmd in ("fit", "validate", "test", "predict"):
        return [cmd, "--config", RECIPE, "--ckpt_path", path]
    out = os.path.join(files["root"], "out")
    extra = ["--out", out] if cmd in ("export", "sweep") else []
    return [cmd, "--ckpt", path, "--config", RECIPE, *extra]


CHECKPOINT_COMMANDS = ("fit", "validate", "test", "predict", "sweep", "export")

#: (case id, argv builder, what the error line must say); one line on stderr, exit 2.
USER_ERRORS = [
    *[
        (f"{cmd}-missing-checkpoint", lambda f, c=cmd: _ckpt(c, "none.ckpt", f), "none.ckpt")
        for cmd in CHECKPOINT_COMMANDS
    ],
    *[
        (
            f"{cmd}-truncated-checkpoint",
            lambda f, c=cmd: _ckpt(c, "truncated.ckpt", f),
            "truncated.ckpt' is not a readable checkpoint",
        )
        for cmd in CHECKPOINT_COMMANDS
    ],
    *[
        (
            f"{cmd}-unsafe-checkpoint",
            lambda f, c=cmd: _ckpt(c, "unsafe.ckpt", f),
            "needs types that are not allow-listed for safe loading (argparse.Namespace)",
        )
        for cmd in CHECKPOINT_COMMANDS
    ],
    (
        "test-plain-state-dict",
        lambda f: _ckpt("test", "plain.ckpt", f),
        "to be a checkpoint written by Lightning's Trainer",
    ),
    (
        "export-not-a-checkpoint",
        lambda f: _ckpt("export", "text.ckpt", f),
        "text.ckpt' is not a readable checkpoint",
    ),
    *[
        (
            f"{cmd}-p-out-of-range",
            lambda f, c=cmd: [c, "--config", f["flip_p1.5.yaml"]],
            "Expected `p` to be a float in [0, 1], but got 1.5",
        )
        for cmd in ("fit", "validate", "test", "predict")
    ],
    (
        "fit-missing-recipe",
        lambda f: ["fit", "--config", os.path.join(f["root"], "none.yaml")],
        "none.yaml",
    ),
    (
        "sweep-realizations-0",
        lambda f: [*_ckpt("sweep", "good.ckpt", f), "--realizations", "0"],
        "Expected `realizations` to be an int >= 1, but got 0",
    ),
    (
        "sweep-p-out-of-range",
        lambda f: [*_ckpt("sweep", "good.ckpt", f), "--error-rates", "-0.1"],
        "to be a float in [0, 1], but got -0.1",
    ),
    (
        "sweep-mismatched-checkpoint",
        lambda f: ["sweep", "--ckpt", f["vgg3.ckpt"], "--config", RECIPE],
        "does not match the model of config",
    ),
    (
        "export-unsupported-model",
        lambda f: [
            *_ckpt("export", "binary_input.ckpt", f)[:-4],
            *("--config", f["binary_input.yaml"], "--out", "x"),
        ],
        "which the export does not support",
    ),
    ("emulate-p-out-of-range", lambda f: ["emulate", f["model.bet"], "--p", "1.5"], "got 1.5"),
    ("emulate-p-negative", lambda f: ["emulate", f["model.bet"], "--p", "-0.1"], "got -0.1"),
    (
        "emulate-realizations-0",
        lambda f: ["emulate", f["model.bet"], "--realizations", "0"],
        "Expected `realizations` to be an int >= 1, but got 0",
    ),
    ("emulate-missing-bitstream", lambda f: ["emulate", "none.bet"], "'none.bet'"),
    ("emulate-corrupt-bitstream", lambda f: ["emulate", f["corrupt.bet"]], "CRC mismatch"),
    ("emulate-truncated-bitstream", lambda f: ["emulate", f["truncated.bet"]], "Truncated"),
    ("emulate-checkpoint-as-bitstream", lambda f: ["emulate", f["good.ckpt"]], "LBET"),
    (
        "emulate-bad-data",
        lambda f: ["emulate", f["model.bet"], "--data", "mnist"],
        "'digits' or a recipe/datamodule config file",
    ),
    (
        "validity-epochs-0",
        lambda f: ["validity", "--epochs", "0", "--out", f["root"]],
        "Expected `epochs` to be a positive int, but got 0",
    ),
    (
        "validity-realizations-0",
        lambda f: ["validity", "--realizations", "0", "--out", f["root"]],
        "Expected `realizations` to be an int >= 1, but got 0",
    ),
    (
        "reproduce-realizations-0",
        lambda f: ["reproduce", "--dataset", "digits", "--out", f["root"], "--realizations", "0"],
        "Expected `realizations` to be an int >= 1, but got 0",
    ),
    (
        "reproduce-unknown-dataset",
        lambda f: ["reproduce", "--dataset", "imagenet", "--out", f["root"]],
        "but got 'imagenet'",
    ),
    ("bench-unknown-benchmark", lambda f: ["bench", "nope"], "but got ['nope']"),
]


@pytest.mark.parametrize(
    ("build", "expected"), [c[1:] for c in USER_ERRORS], ids=[c[0] for c in USER_ERRORS]
)
def test_user_errors_print_one_line_and_exit_2(build, expected, files, capsys):
    argv = build(files)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in out + err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"lightning-bet {argv[0]}: error: "), err
    assert expected in lines[0]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_unknown_options_end_in_usage_and_exit_2(name, capsys):
    assert main([name, "--no-such-option"]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert err.strip().splitlines()[-1].startswith(f"lightning-bet {name}: error: ")
    assert "--no-such-option" in err or "arguments are required" in err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help(name, capsys):
    assert main([name, "--help"]) == 0
    usage = capsys.readouterr().out.split("\n", 1)[0]
    assert usage.startswith("usage: lightning-bet") and f" {name}" in usage


def test_help_lists_every_subcommand_and_version(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, command in COMMANDS.items():
        assert f"  {name}" in out and command.summary in out
    assert "--debug" in out and "--verbose" in out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"lightning-bet {__version__}\n"
    assert main([]) == 2  # no command: the help, on stderr
    assert "commands:" in capsys.readouterr().err
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def _defect(argv: list[str]) -> None:
    raise RuntimeError("an internal inconsistency")


def test_defects_print_the_traceback_and_say_it_is_a_bug(monkeypatch, capsys):
    monkeypatch.setitem(COMMANDS, "defect", Command("tests.test_cli:_defect", "raises"))
    assert main(["defect"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: an internal inconsistency" in err
    assert err.strip().splitlines()[-1].startswith("lightning-bet defect: internal error")
    assert "this is a bug in lightning-bet" in err


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_debug_shows_the_traceback_of_user_errors(how, monkeypatch, capsys):
    argv = ["emulate", "none.bet"]
    if how == "flag":
        argv = ["--debug", *argv]
    else:
        monkeypatch.setenv("LIGHTNING_BET_DEBUG", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "FileNotFoundError" in err
    assert err.strip().splitlines()[-1].startswith("lightning-bet emulate: error: ")


def test_quiet_by_default_and_verbose_brings_banners_back(files, capfd, caplog):
    """Lightning logs its banners (to stderr, or to pytest's log capture under pytest)."""
    argv = ["emulate", files["model.bet"], "--p", "0", "-R", "1", "--data", RECIPE]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(argv) == 0
    out, err = capfd.readouterr()
    assert "accuracy at p=0.0 over 1 realizations" in out
    shown = out + err + caplog.text + "".join(str(w.message) for w in caught)
    noise = ("GPU available", "Seed set", "Tip:", "tensorboardX", "LeafSpec", "args parameter")
    assert [n for n in noise if n in shown] == []
    caplog.clear()
    assert main(["--verbose", *argv]) == 0
    out, err = capfd.readouterr()
    assert "GPU available" in out + err + caplog.text


def test_deprecated_flag_spelling_still_works(files, capsys):
    argv = ["emulate", files["model.bet"], "--p", "0", "-R", "1", "--stuck_at_0", "0.0"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "lightning-bet emulate: warning: --stuck_at_0 is deprecated, use --stuck-at-0" in err


def test_console_script_as_a_user_sees_it(tmp_path):
    """The real process: one line on stderr, exit status 2, nothing else."""
    argv = ["export", "--ckpt", "none.ckpt", "--config", RECIPE, "--out", str(tmp_path / "x")]
    done = subprocess.run(
        [sys.executable, "-m", "lightning_bet", *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        "lightning-bet export: error: Expected `--ckpt` to be an existing file, but got "
        "'none.ckpt'\n"
    )
    assert not (tmp_path / "x").exists()


def test_lightning_subcommands_pass_weights_only_explicitly(files, tmp_path, capsys):
    from unittest import mock

    import lightning.pytorch as pl

    argv = ["test", "--config", RECIPE, "--ckpt_path", files["good.ckpt"]]
    argv += ["--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false"]
    argv += ["--trainer.default_root_dir", str(tmp_path)]
    original = pl.Trainer.test
    with mock.patch.object(pl.Trainer, "test", autospec=True, side_effect=original) as spy:
        assert main(argv) == 0
    assert spy.call_args.kwargs["weights_only"] is True
    assert "test/acc" in capsys.readouterr().out
