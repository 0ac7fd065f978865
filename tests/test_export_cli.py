"""``lightning-bet export`` / ``emulate`` and ``export_demo`` on a digits model."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lightning_bet.cli import main
from lightning_bet.deploy.bitstream import BitstreamError, read_bitstream
from lightning_bet.deploy.cli import emulate_main, export_demo, export_main, export_model
from lightning_bet.deploy.emulate import emulate
from lightning_bet.deploy.fold import deploy_forward
from lightning_bet.functional.faults import FaultModel
from lightning_bet.module import BNNClassifier
from tests.test_deploy_fold import digits_test_pixels, trained_digits

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "digits_fcnn.yaml"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    _, ckpt = trained_digits()
    out = tmp_path_factory.mktemp("export")
    manifest = export_main(["--ckpt", str(ckpt), "--config", str(RECIPE), "--out", str(out)])
    return out, manifest


def test_export_writes_files_and_an_honest_manifest(exported):
    out, manifest = exported
    assert json.loads((out / "manifest.json").read_text()) == manifest
    for name, entry in manifest["files"].items():
        data = (out / name).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert "model.bet" in manifest["files"]
    assert manifest["layers"] == [[256, 64], [256, 256], [10, 256]]
    assert manifest["input_levels"] == 16 and manifest["test_samples"] == 360
    agreement = manifest["agreement"]
    assert agreement["numpy"] == 1.0
    assert agreement["deploy_vs_float_predictions"] == 1.0
    for backend, name in (("c", "model.h"), ("tflite", "model.tflite")):
        assert agreement[backend] in (None, 1.0)
        if agreement[backend] is not None:
            assert name in manifest["files"]
    # the manifest's accuracy is the deploy-mode accuracy of the written bitstream
    model = read_bitstream((out / "model.bet").read_bytes())
    _, q, y = digits_test_pixels()
    accuracy = (deploy_forward(model, q).argmax(1) == y).double().mean().item()
    assert manifest["accuracy"]["deploy"] == pytest.approx(accuracy)


def test_emulate_cli_prints_mean_and_std(exported, capsys):
    out, _ = exported
    result = emulate_main([str(out / "model.bet"), "--p", "0.02", "--realizations", "3"])
    printed = capsys.readouterr().out
    match = re.search(r"accuracy at p=0.02 over 3 realizations \(numpy\): (\S+) ± (\S+)", printed)
    assert match is not None
    _, q, y = digits_test_pixels()
    data = (out / "model.bet").read_bytes()
    reference = emulate(data, q.numpy(), y.numpy(), FaultModel(p=0.02), 3, seed=0)
    assert result["accuracies"] == reference.accuracies.tolist()
    assert float(match.group(1)) == pytest.approx(reference.mean, abs=5e-5)
    assert float(match.group(2)) == pytest.approx(reference.std, abs=5e-5)


def test_emulate_cli_asymmetric_with_sweep_key(exported):
    out, _ = exported
    argv = [str(out / "model.bet"), "--p01", "0.02", "--p10", "0.01", "--realizations", "2"]
    result = emulate_main([*argv, "--key", "0.02"])
    _, q, y = digits_test_pixels()
    data = (out / "model.bet").read_bytes()
    fault_model = FaultModel(p01=0.02, p10=0.01)
    reference = emulate(data, q.numpy(), y.numpy(), fault_model, 2, seed=0, key=0.02)
    assert result["accuracies"] == reference.accuracies.tolist()


def test_cli_dispatch_and_recipe_data(exported, capsys):
    out, _ = exported
    main(
        [
            "emulate",
            str(out / "model.bet"),
            "--p",
            "0.0",
            "--realizations",
            "1",
            "--data",
            str(RECIPE),
        ]
    )
    assert "over 1 realizations" in capsys.readouterr().out


def test_export_demo_reports_every_number(tmp_path):
    _, ckpt = trained_digits()
    demo = export_demo(ckpt, RECIPE, tmp_path, p=0.01, realizations=2)
    assert set(demo) == {"bitstream_bytes", "agree_numpy", "agree_c", "agree_tflite", "emulated"}
    assert demo["bitstream_bytes"] == (tmp_path / "model.bet").stat().st_size
    assert demo["agree_numpy"] == 1.0
    assert demo["emulated"]["p"] == 0.01 and 0 <= demo["emulated"]["mean"] <= 1


def test_export_rejects_mismatched_or_unsupported_checkpoints(tmp_path):
    other = BNNClassifier(hidden=[128])
    ckpt = tmp_path / "other.ckpt"
    torch.save({"state_dict": other.state_dict()}, ckpt)
    with pytest.raises(ValueError, match="does not match the model of config"):
        export_main(["--ckpt", str(ckpt), "--config", str(RECIPE), "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="`--ckpt` to be an existing file"):
        export_main(["--ckpt", str(tmp_path / "none"), "--config", str(RECIPE), "--out", "x"])


def test_emulate_rejects_bad_files_and_data(exported, tmp_path, capsys):
    out, _ = exported
    data = bytearray((out / "model.bet").read_bytes())
    data[200] ^= 1
    bad = tmp_path / "bad.bet"
    bad.write_bytes(bytes(data))
    with pytest.raises(BitstreamError, match="CRC mismatch"):
        emulate_main([str(bad)])
    bad.write_bytes(bytes(data[:100]))
    with pytest.raises(BitstreamError, match="Truncated"):
        emulate_main([str(bad)])
    with pytest.raises(ValueError, match="'digits' or a recipe/datamodule config file"):
        emulate_main([str(out / "model.bet"), "--data", "mnist"])
    with pytest.raises(SystemExit, match="2"):
        emulate_main([str(out / "model.bet"), "--backend", "gpu"])
    assert "argument --backend: invalid choice: 'gpu'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="`p` to be a float in \\[0, 1\\], but got 1.5"):
        emulate_main([str(out / "model.bet"), "--p", "1.5"])


def test_emulate_c_backend_matches_numpy(exported, capsys):
    out, _ = exported
    try:
        c = emulate_main([str(out / "model.bet"), "--realizations", "2", "--backend", "c"])
    except RuntimeError as error:  # no C compiler here
        pytest.skip(f"C runtime unavailable: {error}")
    numpy = emulate_main([str(out / "model.bet"), "--realizations", "2"])
    assert np.allclose(c["accuracies"], numpy["accuracies"])


def _entries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_a_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    """Unsupported model or an error halfway: no destination folder, no partial files."""
    _, ckpt = trained_digits()
    config = yaml.safe_load(RECIPE.read_text())
    config["model"].update({"binarize_input": True})  # a first layer the export refuses
    bad_recipe = tmp_path / "binary_input.yaml"
    bad_recipe.write_text(yaml.safe_dump(config))
    bad_ckpt = tmp_path / "binary_input.ckpt"
    torch.save({"state_dict": BNNClassifier(binarize_input=True).state_dict()}, bad_ckpt)
    before = _entries(tmp_path)
    with pytest.raises(ValueError, match="which the export does not support"):
        export_model(bad_ckpt, bad_recipe, tmp_path / "new" / "out")
    assert _entries(tmp_path) == before

    import lightning_bet.deploy.cli as deploy_cli

    def write_then_fail(data, folder):  # stands in for write_c_package
        (Path(folder) / "model.h").write_bytes(b"half a header")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(deploy_cli, "write_bitstream", lambda model: b"LBET")
    monkeypatch.setattr(deploy_cli, "_optional", lambda module, name: write_then_fail)
    monkeypatch.setattr(deploy_cli, "run_bitstream", lambda data, q: None)
    with pytest.raises(OSError, match="No space left on device"):
        export_model(ckpt, RECIPE, tmp_path / "out")
    assert _entries(tmp_path) == before
    # an existing folder keeps its files untouched
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "model.bet").write_bytes(b"an older export")
    with pytest.raises(OSError, match="No space left on device"):
        export_model(ckpt, RECIPE, existing)
    assert _entries(existing) == ["model.bet"]
    assert (existing / "model.bet").read_bytes() == b"an older export"
    assert _entries(tmp_path) == sorted([*before, "existing"])


def test_export_into_an_existing_folder_replaces_its_files(exported, tmp_path):
    out, manifest = exported
    target = tmp_path / "target"
    target.mkdir()
    (target / "model.bet").write_bytes(b"old")
    (target / "notes.txt").write_text("kept")
    _, ckpt = trained_digits()
    again = export_model(ckpt, RECIPE, target)
    assert again["files"] == manifest["files"]
    assert (target / "model.bet").read_bytes() == (out / "model.bet").read_bytes()
    assert (target / "notes.txt").read_text() == "kept"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".target.partial-")]
