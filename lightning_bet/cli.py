"""The ``lightning-bet`` command.

``fit``, ``validate``, ``test`` and ``predict`` are Lightning's own (``LightningCLI``, configured
by the YAML recipes in ``recipes/``). The other subcommands are registered in :data:`COMMANDS`
and parsed with jsonargparse.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_bet.module import BNNClassifier

__all__ = ["COMMANDS", "BetCLI", "load_checkpoint", "main", "make_cli", "make_cli_quietly"]

#: subcommand -> "module:function"; the function takes the remaining ``argv``.
COMMANDS: dict[str, str] = {
    "bench": "lightning_bet.bench.runner:main",
    "demo": "lightning_bet.demo:cli_main",
    "sweep": "lightning_bet.sweeps:cli_main",
    "validity": "lightning_bet.validity:cli_main",
    "export": "lightning_bet.deploy.cli:export_main",
    "emulate": "lightning_bet.deploy.cli:emulate_main",
    "reproduce": "lightning_bet.reproduce:cli_main",
    "summary": "lightning_bet.model_summary:cli_main",
}


class BetCLI(LightningCLI):
    """``LightningCLI`` for :class:`BNNClassifier` with any ``LightningDataModule``.

    The model's ``input_shape`` and ``num_classes`` are taken from the datamodule, so a recipe
    cannot build a network for the wrong data.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:  # noqa: D102
        parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


def make_cli(args: Sequence[str] | None = None, run: bool = True) -> BetCLI:
    """Build the Lightning CLI (``run=False``: instantiate model, data and trainer only)."""
    return BetCLI(
        BNNClassifier,
        L.LightningDataModule,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=list(args) if args is not None else None,
        run=run,
    )


def make_cli_quietly(config: str | os.PathLike) -> BetCLI:
    """Instantiate a recipe with ``make_cli(["--config", config], run=False)``.

    ``sys.argv`` holds a subcommand's own arguments; it is hidden while LightningCLI runs so
    that LightningCLI does not warn about them.
    """
    argv = sys.argv
    sys.argv = argv[:1]
    try:
        return make_cli(args=["--config", str(config)], run=False)
    finally:
        sys.argv = argv


def load_checkpoint(
    ckpt: str | os.PathLike,
    config: str | os.PathLike,
    arg_names: tuple[str, str] = ("ckpt", "config"),
) -> tuple[Any, Any]:
    """Build model and datamodule from a recipe and load a checkpoint's weights into the model.

    Args:
        ckpt: a Lightning checkpoint (``{"state_dict": ...}``) or a plain state dict of the
            ``BNNClassifier``. Checkpoints are unpickled: load only files you trust.
        config: the recipe (LightningCLI YAML) the checkpoint was trained with.
        arg_names: how the caller names the two arguments in its error messages (e.g.
            ``("--ckpt", "--config")`` for a command line).

    Returns:
        ``(module, datamodule)``, the module in eval mode on the CPU.

    Raises:
        FileNotFoundError: for a missing file.
        ValueError: when the checkpoint does not match the recipe's model.
    """
    import torch

    for name, path in zip(arg_names, (ckpt, config), strict=True):
        if not Path(path).is_file():
            raise FileNotFoundError(f"Expected `{name}` to be an existing file, but got {path!r}")
    cli = make_cli_quietly(config)
    module, datamodule = cli.model, cli.datamodule
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"Expected `{arg_names[0]}` {str(ckpt)!r} to hold a checkpoint dict, but got "
            f"{type(checkpoint).__name__}"
        )
    state = checkpoint.get("state_dict", checkpoint)
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as error:
        details = " ".join(line.strip() for line in str(error).splitlines()[:4] if line.strip())
        raise ValueError(
            f"Checkpoint {str(ckpt)!r} does not match the model of config {str(config)!r} "
            f"(expected it to match the model built from {str(config)!r}): {details}"
        ) from error
    return module.cpu().eval(), datamodule


def _resolve(target: str) -> Callable[[list[str]], object]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``lightning-bet`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        _resolve(COMMANDS[argv[0]])(argv[1:])
        return
    make_cli(argv)


if __name__ == "__main__":
    main()
