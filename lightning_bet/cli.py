"""The ``lightning-bet`` command: one table of subcommands and one error path.

``fit``, ``validate``, ``test`` and ``predict`` are Lightning's own (``LightningCLI``, configured
by the YAML recipes in ``recipes/``); the others are the package's (``sweep``, ``export``, ...),
each an entry point ``function(argv)`` registered in :data:`COMMANDS`.

Errors: a user error (:mod:`lightning_bet.errors`: a bad value, a missing or corrupt file, an
unsupported model) prints ``lightning-bet <cmd>: error: <message>`` and exits 2; anything else
is a defect and prints its traceback and a line saying so (exit 1). ``--debug`` (or
``LIGHTNING_BET_DEBUG=1``) shows the traceback of user errors too. Dependency notices and
Lightning's banners are hidden unless ``--verbose`` (or ``LIGHTNING_BET_VERBOSE=1``).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import traceback
import warnings
from argparse import ArgumentError
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from lightning_bet.checkpoints import load_checkpoint
from lightning_bet.errors import is_user_error, user_message
from lightning_bet.recipe import BetCLI, make_cli, make_cli_quietly

__all__ = [
    "COMMANDS",
    "BetCLI",
    "Command",
    "load_checkpoint",
    "main",
    "make_cli",
    "make_cli_quietly",
]

PROG = "lightning-bet"


class Command(NamedTuple):
    """A subcommand: ``target`` is ``"module:function"`` taking the arguments after its name."""

    target: str
    summary: str


#: Every subcommand, in the order ``lightning-bet --help`` lists them. Adding one is one line.
COMMANDS: dict[str, Command] = {
    "fit": Command("lightning_bet.cli:fit", "train a model from a recipe (LightningCLI)"),
    "validate": Command("lightning_bet.cli:validate", "validation metrics of a model"),
    "test": Command("lightning_bet.cli:test", "test metrics of a model (e.g. --ckpt_path)"),
    "predict": Command("lightning_bet.cli:predict", "predictions of a model"),
    "sweep": Command("lightning_bet.sweeps:cli_main", "accuracy over weight bit error rate"),
    "validity": Command(
        "lightning_bet.validity:cli_main", "does the margin metric predict bit error tolerance?"
    ),
    "export": Command(
        "lightning_bet.deploy.cli:export_main", "bitstream, C package and TFLite of a model"
    ),
    "emulate": Command(
        "lightning_bet.deploy.cli:emulate_main", "accuracy of a bitstream under bit errors"
    ),
    "reproduce": Command("lightning_bet.reproduce:cli_main", "reproduce the papers' claims C1-C5"),
    "bench": Command("lightning_bet.bench.runner:main", "run the benchmarks, print ratios"),
    "summary": Command(
        "lightning_bet.model_summary:cli_main", "a model's parameters and sizes in bits"
    ),
    "demo": Command("lightning_bet.demo:cli_main", "train, measure and export on digits"),
}

#: Messages of dependency warnings that say nothing about the user's run.
_NOISE = (
    r".*`tensorboardX` has been removed as a dependency",
    r".*`isinstance\(treespec, LeafSpec\)` is deprecated",
    r".*LightningCLI's args parameter is intended to run from within Python",
    r".*The dirpath has changed from",  # testing a checkpoint from another run's folder
)


def _lightning(subcommand: str, argv: Sequence[str]) -> None:
    """Run ``LightningCLI``'s ``subcommand`` with the package's types allow-listed."""
    import torch

    from lightning_bet.checkpoints import SAFE_TYPES

    hidden = sys.argv
    sys.argv = [PROG]  # LightningCLI warns when it sees both sys.argv and args
    try:
        with torch.serialization.safe_globals(list(SAFE_TYPES)):
            make_cli([subcommand, *argv], exit_on_error=False)
    finally:
        sys.argv = hidden


def fit(argv: Sequence[str]) -> None:
    """``lightning-bet fit``: ``LightningCLI``'s ``fit``."""
    _lightning("fit", argv)


def validate(argv: Sequence[str]) -> None:
    """``lightning-bet validate``: ``LightningCLI``'s ``validate``."""
    _lightning("validate", argv)


def test(argv: Sequence[str]) -> None:
    """``lightning-bet test``: ``LightningCLI``'s ``test``."""
    _lightning("test", argv)


def predict(argv: Sequence[str]) -> None:
    """``lightning-bet predict``: ``LightningCLI``'s ``predict``."""
    _lightning("predict", argv)


def _resolve(target: str) -> Callable[[list[str]], object]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def _help() -> str:
    from lightning_bet import __version__

    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {c.summary}" for name, c in COMMANDS.items())
    return (
        f"usage: {PROG} [--debug] [--verbose] <command> [options]\n"
        f"       {PROG} <command> --help\n\n"
        f"Bit error tolerant binarized neural networks (lightning-bet {__version__}).\n\n"
        f"commands:\n{rows}\n\n"
        "options (before the command):\n"
        "  -h, --help   show this help and exit\n"
        "  --version    show the version and exit\n"
        "  --debug      show the Python traceback of user errors too "
        "(or LIGHTNING_BET_DEBUG=1)\n"
        "  --verbose    show Lightning's banners and dependency notices "
        "(or LIGHTNING_BET_VERBOSE=1)\n"
    )


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Hide dependency notices and Lightning's INFO banners (unless ``verbose``)."""
    if verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for message in _NOISE:
            warnings.filterwarnings("ignore", message=message)
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-bet`` console script.

    Args:
        argv: the arguments after the program name (``None``: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 success, 2 user error (one line on stderr), 1 defect (traceback).

    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug, verbose = _flag("LIGHTNING_BET_DEBUG"), _flag("LIGHTNING_BET_VERBOSE")
    while args and args[0] in ("--debug", "--verbose"):
        debug, verbose = debug or args[0] == "--debug", verbose or args[0] == "--verbose"
        args.pop(0)
    if not args or args[0] in ("-h", "--help"):
        print(_help(), end="", file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] == "--version":
        from lightning_bet import __version__

        print(f"{PROG} {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"usage: {PROG} [--debug] [--verbose] <command> [options]", file=sys.stderr)
        print(
            f"{PROG}: error: unknown command {name!r}; expected one of {', '.join(COMMANDS)} "
            f"(see {PROG} --help)",
            file=sys.stderr,
        )
        return 2
    try:
        with _quiet(verbose):
            _resolve(COMMANDS[name].target)(rest)
    except SystemExit as exit_:  # argparse/jsonargparse: usage error (2) or --help (0)
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:
        print(f"{PROG} {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if is_user_error(error):
            if debug:
                traceback.print_exc()
            hint = f" (see {PROG} {name} --help)" if isinstance(error, ArgumentError) else ""
            print(f"{PROG} {name}: error: {user_message(error)}{hint}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(
            f"{PROG} {name}: internal error ({type(error).__name__}): this is a bug in "
            f"lightning-bet; please report it with the command line and the traceback above",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
