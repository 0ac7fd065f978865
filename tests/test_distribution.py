"""The installable distribution: the wheel carries the recipes, the C runtime and the format docs,
and an installed wheel runs the demo, ``export`` and ``emulate --backend c`` from any folder.

The wheel is built offline from a copy of the source tree and installed (without dependencies)
into a fresh virtual environment whose only other path is the site-packages folder holding this
interpreter's dependencies, so everything of ``lightning_bet`` comes from the wheel. Select these
tests with ``-m distribution``.
"""

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import setuptools
import tomllib
import torch

from lightning_bet.resources import RESOURCE_DIRS, recipe_names, recipe_path, resource_dir

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.distribution

# What setuptools would not copy from a checkout (build outputs, caches, local data and runs).
_IGNORED_AT_ROOT = {".git", ".venv", "build", "dist", "data", "runs", "lightning_logs"}
_IGNORED = {"__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "bet_host"}


def _ignore(directory: str, names: list[str]) -> set[str]:
    skip = {n for n in names if n in _IGNORED or n.endswith((".pyc", ".o", ".so", ".egg-info"))}
    if Path(directory) == ROOT:
        skip |= _IGNORED_AT_ROOT & set(names)
    return skip


def _run(args: list, cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        pytest.fail(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source") / "lightning-bet"
    shutil.copytree(ROOT, source, ignore=_ignore)
    out = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "--wheel-dir", out, source],
        cwd=out,
        env=env,
    )
    (path,) = out.glob("lightning_bet-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A fresh venv holding the wheel; dependencies come from this interpreter's site-packages."""
    prefix = tmp_path_factory.mktemp("venv") / "env"
    venv.create(prefix, with_pip=False)
    python = prefix / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dependencies = Path(torch.__file__).resolve().parents[1]
    (Path(purelib) / "dependencies.pth").write_text(f"{dependencies}\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["LIGHTNING_BET_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    env["PATH"] = f"{prefix / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps"]
        + ["--no-index", wheel],
        cwd=prefix,
        env=env,
    )
    return prefix, env


def test_the_package_list_holds_every_package_of_the_source_tree():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = set(config["package-dir"])
    listed = {name for name in config["packages"] if not name.startswith(tuple(mapped))}
    found = set(setuptools.find_packages(str(ROOT), include=["lightning_bet", "lightning_bet.*"]))
    assert listed == found, "pyproject.toml [tool.setuptools] packages must list every package"
    assert config["package-dir"] == {
        "lightning_bet.export": "export",
        "lightning_bet.recipes": "recipes",
    }


def test_the_wheel_carries_the_runtime_the_recipes_and_the_docs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"lightning_bet/{path.relative_to(ROOT).as_posix()}"
        for pattern in ("recipes/*.yaml", "export/*.md", "export/runtime/*.[ch]")
        for path in ROOT.glob(pattern)
    }
    expected |= {
        f"lightning_bet/{path.relative_to(ROOT).as_posix()}"
        for path in (ROOT / "export/runtime/mcu").iterdir()
        if path.suffix in (".c", ".h", ".ld")
    }
    expected |= {"lightning_bet/export/runtime/Makefile", "lightning_bet/native/bdense.c"}
    assert {"lightning_bet/export/FORMAT.md", "lightning_bet/export/RUNTIME.md"} <= expected
    assert "lightning_bet/export/runtime/bet_host_main.c" in expected
    assert "lightning_bet/recipes/digits_fcnn.yaml" in expected
    assert expected <= names, sorted(expected - names)


def test_an_installed_wheel_runs_demo_export_and_emulate_outside_the_repository(
    installed, tmp_path
):
    prefix, env = installed
    python = prefix / "bin" / "python"
    where = _run(
        [python, "-c", "import lightning_bet.resources as r; print(r.resource_dir('export'))"],
        tmp_path,
        env,
    )
    assert Path(where.strip()).is_relative_to(prefix), where

    _run(
        [python, "-m", "lightning_bet.demo", "--out", "demo_module", "--max-epochs", "1"],
        tmp_path,
        env,
    )
    assert (tmp_path / "demo_module" / "summary.json").is_file()
    printed = _run(
        [prefix / "bin" / "lightning-bet", "demo", "--out", "demo", "--max-epochs", "1"],
        tmp_path,
        env,
    )
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    exported = summary["export"]
    assert (exported["agree_numpy"], exported["agree_c"], exported["agree_tflite"]) == (
        1.0,
        1.0,
        1.0,
    )
    assert "agreement with deploy mode: numpy 1.0, C 1.0, TFLite 1.0" in printed

    recipe = _run(
        [
            python,
            "-c",
            "from lightning_bet.resources import recipe_path as r; print(r('digits_fcnn_flip_st'))",
        ],
        tmp_path,
        env,
    ).strip()
    assert Path(recipe).is_relative_to(prefix)
    ckpt = tmp_path / "demo" / "flip" / "model.ckpt"
    _run(
        ["lightning-bet", "export", "--ckpt", ckpt, "--config", recipe, "--out", "export"],
        tmp_path,
        env,
    )
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    agreement = manifest["agreement"]
    assert (agreement["numpy"], agreement["c"], agreement["tflite"]) == (1.0, 1.0, 1.0)
    for name in ("model.bet", "model.h", "model.tflite", "bet_runtime.c", "bet_runtime.h"):
        assert (tmp_path / "export" / name).is_file(), name

    emulated = _run(
        ["lightning-bet", "emulate", "export/model.bet", "--p", "0.01", "--realizations", "3"]
        + ["--data", "digits", "--backend", "c"],
        tmp_path,
        env,
    )
    assert "over 3 realizations (c)" in emulated


# ----------------------------------------------------------------------------------------------
# lightning_bet.resources in the source tree
# ----------------------------------------------------------------------------------------------


def test_resources_in_the_source_tree_are_the_top_level_folders():
    assert resource_dir("recipes") == ROOT / "recipes"
    assert resource_dir("export") == ROOT / "export"
    assert (
        recipe_path("digits_fcnn")
        == recipe_path("digits_fcnn.yaml")
        == ROOT / "recipes" / "digits_fcnn.yaml"
    )
    assert recipe_names() == sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
    assert set(RESOURCE_DIRS) == {"recipes", "export"}


def test_resource_errors_name_the_argument_and_what_is_valid():
    with pytest.raises(
        ValueError, match=r"Expected `name` to be one of \['export', 'recipes'\], but got 'docs'"
    ):
        resource_dir("docs")
    with pytest.raises(
        FileNotFoundError,
        match=r"Expected `name` to be a shipped recipe \(cifar10_vgg7, .*digits_fcnn, .*\), "
        r"but got 'nope'",
    ):
        recipe_path("nope")
    with pytest.raises(TypeError, match="Expected `name` to be a str, but got PosixPath"):
        recipe_path(ROOT / "recipes" / "digits_fcnn.yaml")


def test_a_missing_resource_folder_says_where_it_looked(monkeypatch, tmp_path):
    import lightning_bet.resources as module

    (tmp_path / "lightning_bet").mkdir()
    monkeypatch.setattr(module.resources, "files", lambda package: tmp_path / "lightning_bet")
    with pytest.raises(
        FileNotFoundError,
        match=r"Expected the package data folder 'recipes' \(holding digits_fcnn.yaml\) in "
        r".*lightning_bet/recipes or .*/recipes, but found neither; reinstall lightning-bet",
    ):
        resource_dir("recipes")
    (tmp_path / "lightning_bet" / "recipes").mkdir()
    (tmp_path / "lightning_bet" / "recipes" / "digits_fcnn.yaml").write_text("{}\n")
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "digits_fcnn.yaml").write_text("{}\n")
    assert resource_dir("recipes") == tmp_path / "lightning_bet" / "recipes"  # the wheel's first
