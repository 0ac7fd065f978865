"""Files shipped with the package: the recipes, the C runtime and the export format documents.

In the repository they live at the top level (``recipes/``, ``export/``); an installed wheel
carries them as package data (``lightning_bet/recipes/``, ``lightning_bet/export/``, mapped by
``package-dir`` in ``pyproject.toml``). :func:`resource_dir` finds them in either place through
:mod:`importlib.resources`, so code never builds paths from ``__file__``:

- ``recipes/*.yaml``: the LightningCLI recipes (:func:`recipe_path`, :func:`recipe_names`);
- ``export/FORMAT.md``, ``export/RUNTIME.md``: the bitstream format and the C runtime's API;
- ``export/runtime/``: the portable C99 runtime, its host harness and ``mcu/`` firmware files.

Example:
    >>> from lightning_bet.resources import recipe_path
    >>> recipe_path("digits_fcnn").name
    'digits_fcnn.yaml'
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

__all__ = ["RESOURCE_DIRS", "recipe_names", "recipe_path", "resource_dir"]

#: The shipped folders and a file each must hold (how a candidate folder is recognised).
RESOURCE_DIRS: dict[str, str] = {
    "recipes": "digits_fcnn.yaml",
    "export": "runtime/bet_runtime.h",
}


def resource_dir(name: Literal["recipes", "export"]) -> Path:
    """The folder of a shipped resource, in an installed wheel or in the source tree.

    Args:
        name: ``"recipes"`` or ``"export"``.

    Returns:
        ``<package>/<name>`` when the package was installed from a wheel, else ``<name>`` next
        to the package (the repository checkout an editable install points at).

    Raises:
        ValueError: for an unknown ``name``.
        FileNotFoundError: when neither place holds the folder (a broken installation).

    """
    if name not in RESOURCE_DIRS:
        raise ValueError(f"Expected `name` to be one of {sorted(RESOURCE_DIRS)}, but got {name!r}")
    package = Path(str(resources.files("lightning_bet")))
    candidates = (package / name, package.parent / name)
    for candidate in candidates:
        if (candidate / RESOURCE_DIRS[name]).is_file():
            return candidate
    raise FileNotFoundError(
        f"Expected the package data folder {name!r} (holding {RESOURCE_DIRS[name]}) in "
        f"{' or '.join(str(c) for c in candidates)}, but found neither; reinstall lightning-bet"
    )


def recipe_names() -> list[str]:
    """Names of the shipped recipes (``"digits_fcnn"``, ...), sorted."""
    return sorted(path.stem for path in resource_dir("recipes").glob("*.yaml"))


def recipe_path(name: str) -> Path:
    """The file of a shipped recipe.

    Args:
        name: the recipe's name, with or without ``.yaml`` (``"digits_fcnn"``).

    Returns:
        Path of the YAML file.

    Raises:
        FileNotFoundError: for a name that is not a shipped recipe (the message lists them).

    """
    if not isinstance(name, str):
        raise TypeError(f"Expected `name` to be a str, but got {type(name).__name__}")
    stem = name.removesuffix(".yaml")
    path = resource_dir("recipes") / f"{stem}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"Expected `name` to be a shipped recipe ({', '.join(recipe_names())}), but got "
            f"{name!r}"
        )
    return path
