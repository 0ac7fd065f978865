"""Safe checkpoint reading: allow-listed types load, others are refused by name, bad files are
named in the error."""

from __future__ import annotations

import argparse
import re

import pytest
import torch

from lightning_bet.checkpoints import SAFE_TYPES, TRUST_FLAG, load_checkpoint, read_checkpoint
from lightning_bet.errors import CheckpointError, is_user_error, user_message
from lightning_bet.functional.faults import FaultModel
from lightning_bet.module import BNNClassifier

RECIPE = "recipes/digits_fcnn.yaml"


def test_plain_and_allow_listed_checkpoints_load_with_weights_only(tmp_path):
    assert FaultModel in SAFE_TYPES
    path = tmp_path / "a.ckpt"
    saved = {"state_dict": {"w": torch.arange(3.0)}, "fault": FaultModel(p01=0.1, p10=0.05)}
    torch.save(saved, path)
    loaded = read_checkpoint(path)
    assert torch.equal(loaded["state_dict"]["w"], saved["state_dict"]["w"])
    assert loaded["fault"] == saved["fault"]


def test_other_types_are_refused_by_name_unless_trusted(tmp_path):
    path = tmp_path / "b.ckpt"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, path)
    message = (
        f"Checkpoint {str(path)!r} needs types that are not allow-listed for safe loading "
        "(argparse.Namespace); loading it could run arbitrary code; if you trust its source, "
        f"pass {TRUST_FLAG}"
    )
    with pytest.raises(CheckpointError, match=re.escape(message)):
        read_checkpoint(path)
    assert read_checkpoint(path, trust=True)["args"].lr == 0.1
    with pytest.raises(CheckpointError, match="this command loads allow-listed types only"):
        read_checkpoint(path, flag=None)


def test_missing_truncated_and_foreign_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="Expected `--ckpt` to be an existing file, but"):
        read_checkpoint(tmp_path / "none.ckpt", name="--ckpt")
    path = tmp_path / "c.ckpt"
    torch.save({"state_dict": BNNClassifier().state_dict()}, path)
    data = path.read_bytes()
    for name, content in (
        ("cut.ckpt", data[: len(data) // 2]),
        ("empty.ckpt", b""),
        ("text.ckpt", b"model: 1\n"),
    ):
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(bad)
        assert str(info.value).startswith(
            f"{str(bad)!r} is not a readable checkpoint (truncated, corrupt or not written by "
            "torch.save): "
        )
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="Expected `trust` to be a bool, but got 'yes'"):
        read_checkpoint(path, trust="yes")


def test_load_checkpoint_builds_the_recipe_and_rejects_non_dicts(tmp_path):
    torch.manual_seed(0)
    module = BNNClassifier()
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": module.state_dict()}, path)
    loaded, datamodule = load_checkpoint(path, RECIPE)
    assert not loaded.training and type(datamodule).__name__ == "DigitsDataModule"
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="to hold a checkpoint dict, but got list"):
        load_checkpoint(path, RECIPE)


def test_user_errors_are_told_from_defects():
    assert is_user_error(ValueError("x")) and is_user_error(FileNotFoundError("x"))
    assert not is_user_error(RuntimeError("x")) and not is_user_error(TypeError("x"))
    inner = ValueError("Expected `p` to be a float in [0, 1], but got 1.5")
    try:
        try:
            raise inner
        except ValueError as error:
            raise ValueError(
                "Does not validate against any of the Union subtypes\n- ..."
            ) from error
    except ValueError as outer:
        assert user_message(outer) == str(inner)
    missing = FileNotFoundError(2, "No such file or directory", "runs/x.yaml")
    assert user_message(missing) == "No such file or directory: 'runs/x.yaml'"
