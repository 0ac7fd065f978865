"""One argument-parser style for the package's own subcommands (``sweep``, ``export``, ...).

Flags are kebab-case (``--error-rates``, ``--stuck-at-0``); every option has a help text and its
default is shown in ``--help``. A renamed flag keeps working for a while: :func:`parse` rewrites
its old spelling and prints a deprecation notice.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence

__all__ = ["add_checkpoint_arguments", "float_list", "int_list", "make_parser", "parse"]


class _HelpFormatter(argparse.HelpFormatter):
    """Shows ``(default: X)`` after every option that has a default (not after required ones)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" in text
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
            or action.required
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


def make_parser(command: str, description: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` for ``lightning-bet <command>`` in the package's help style."""
    return argparse.ArgumentParser(
        prog=f"lightning-bet {command}", description=description, formatter_class=_HelpFormatter
    )


def parse(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    renamed: Mapping[str, str] | None = None,
) -> argparse.Namespace:
    """Parse ``argv`` (``None``: ``sys.argv[1:]``), accepting deprecated flag spellings.

    Args:
        parser: from :func:`make_parser`.
        argv: the arguments after the subcommand.
        renamed: old flag -> new flag; an old one is rewritten with a notice on stderr.

    Returns:
        The parsed namespace (a bad argument exits with status 2, as argparse does).

    """
    args = list(sys.argv[1:] if argv is None else argv)
    for old, new in (renamed or {}).items():
        for i, token in enumerate(args):
            if token == "--":
                break
            if token == old or token.startswith(old + "="):
                args[i] = new + token[len(old) :]
                print(
                    f"{parser.prog}: warning: {old} is deprecated, use {new}",
                    file=sys.stderr,
                )
    return parser.parse_args(args)


def add_checkpoint_arguments(parser: argparse.ArgumentParser, ckpt_help: str) -> None:
    """``--ckpt``, ``--config`` (its recipe) and the trust switch of :mod:`~.checkpoints`."""
    from lightning_bet.checkpoints import TRUST_FLAG

    parser.add_argument("--ckpt", required=True, help=ckpt_help)
    parser.add_argument("--config", required=True, help="the YAML recipe it was trained with")
    parser.add_argument(
        TRUST_FLAG,
        action="store_true",
        help="load a checkpoint that needs types outside the safe allow-list (runs pickled "
        "code: only for files you trust)",
    )


def _numbers(kind: type, words: str) -> Callable[[str], list]:
    def convert(text: str) -> list:
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {words}, but got {text!r}"
            ) from exc

    convert.__name__ = f"{kind.__name__}_list"  # argparse names the type in its messages
    return convert


#: ``"0.01,0.02"`` -> ``[0.01, 0.02]`` (an argparse ``type``).
float_list = _numbers(float, "numbers")
#: ``"0,2"`` -> ``[0, 2]`` (an argparse ``type``).
int_list = _numbers(int, "integers")
