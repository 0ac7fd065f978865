"""The ``lightning-bet`` command.

``fit``, ``validate``, ``test`` and ``predict`` are Lightning's own (``LightningCLI``, configured
by the YAML recipes in ``recipes/``). The other subcommands are registered in :data:`COMMANDS`
and parsed with jsonargparse.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_bet.module import BNNClassifier

__all__ = ["COMMANDS", "BetCLI", "main"]

#: subcommand -> "module:function"; the function takes the remaining ``argv``.
COMMANDS: dict[str, str] = {
    "bench": "lightning_bet.bench.runner:main",
    "sweep": "lightning_bet.sweep:cli_main",
    "validity": "lightning_bet.validity:cli_main",
    "export": "lightning_bet.deploy.cli:export_main",
    "emulate": "lightning_bet.deploy.cli:emulate_main",
    "reproduce": "lightning_bet.reproduce:cli_main",
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
