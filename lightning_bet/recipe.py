"""Recipes (LightningCLI YAML) -> model, datamodule and trainer.

:class:`BetCLI` is the ``LightningCLI`` behind ``lightning-bet fit/validate/test/predict``;
:func:`make_cli` builds it and :func:`make_cli_quietly` instantiates a recipe for the library's
own use (a sweep, an export) without running anything.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_bet.module import BNNClassifier

__all__ = ["BetCLI", "make_cli", "make_cli_quietly"]


class BetCLI(LightningCLI):
    """``LightningCLI`` for :class:`BNNClassifier` with any ``LightningDataModule``.

    The model's ``input_shape`` and ``num_classes`` are taken from the datamodule, so a recipe
    cannot build a network for the wrong data.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:  # noqa: D102
        parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse as LightningCLI does, then read ``--ckpt_path`` the package's safe way.

        LightningCLI reads the checkpoint right after parsing; reading it first with
        :func:`~lightning_bet.checkpoints.read_checkpoint` turns a missing, truncated, corrupt
        or untrusted file into the same clear error as the package's own commands.
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        path = (self.config.get(subcommand) or {}).get("ckpt_path") if subcommand else None
        if not isinstance(path, str | os.PathLike) or str(path) in _CKPT_KEYWORDS:
            return
        if "://" in str(path) or str(path).startswith("registry:"):
            return
        from lightning_bet.checkpoints import read_checkpoint
        from lightning_bet.errors import CheckpointError

        checkpoint = read_checkpoint(path, name="--ckpt_path", flag=None)
        if not isinstance(checkpoint, dict) or "pytorch-lightning_version" not in checkpoint:
            raise CheckpointError(
                f"Expected `--ckpt_path` to be a checkpoint written by Lightning's Trainer, but "
                f"{str(path)!r} has no 'pytorch-lightning_version' (a plain state dict? "
                "`sweep` and `export` read those)"
            )

    def _weights_only(self) -> None:
        """Make ``weights_only=True`` explicit for the Trainer's own ``ckpt_path`` load."""
        config = self.config_init[self.subcommand]
        if "weights_only" in config and config["weights_only"] is None:
            config["weights_only"] = True

    def before_fit(self) -> None:  # noqa: D102
        self._weights_only()

    def before_validate(self) -> None:  # noqa: D102
        self._weights_only()

    def before_test(self) -> None:  # noqa: D102
        self._weights_only()

    def before_predict(self) -> None:  # noqa: D102
        self._weights_only()


#: ``ckpt_path`` values Lightning resolves itself.
_CKPT_KEYWORDS = frozenset({"best", "last", "hpc", "registry"})


def make_cli(
    args: Sequence[str] | None = None,
    run: bool = True,
    prog: str = "lightning-bet",
    exit_on_error: bool = True,
) -> BetCLI:
    """Build the Lightning CLI (``run=False``: instantiate model, data and trainer only).

    Args:
        args: the command line after the program name (``None``: ``sys.argv[1:]``).
        run: run the subcommand in ``args`` (``fit``, ``validate``, ``test``, ``predict``).
        prog: the program name shown in usage and error messages.
        exit_on_error: print usage and exit on a bad argument (``False``: raise
            ``argparse.ArgumentError``).

    Returns:
        The CLI, with ``model``, ``datamodule`` and ``trainer`` instantiated.

    """
    return BetCLI(
        BNNClassifier,
        L.LightningDataModule,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": prog, "exit_on_error": exit_on_error},
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
