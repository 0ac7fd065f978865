"""Which exceptions are the user's to fix, and how the command line words them.

The library follows one convention (``STYLE.md``): a bad value, a missing or corrupt file and an
unsupported model raise ``ValueError`` (or a subclass: :class:`CheckpointError`,
``BitstreamError``) or a ``FileNotFoundError``, with a message that names the argument, echoes
the value and says what is valid. Those are *user errors*: ``lightning-bet`` prints their message
on one line and exits 2. Anything else (``TypeError``, ``RuntimeError``, ``KeyError``, ...) is a
defect of the package and is shown with its traceback.
"""

from __future__ import annotations

import argparse

__all__ = ["USER_ERRORS", "CheckpointError", "is_user_error", "user_message"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: unreadable, corrupt or needing untrusted code."""


#: The exception types that mean "the input is wrong", not "the package is wrong".
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ModuleNotFoundError,  # an optional dependency the user asked for is not installed
    argparse.ArgumentError,  # a bad command-line argument (jsonargparse, exit_on_error=False)
)


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` (or an exception it was raised from) is a :data:`USER_ERRORS`."""
    return _innermost_user_error(error) is not None


def user_message(error: BaseException) -> str:
    """The message of the innermost user error in ``error``'s ``__cause__`` chain, one line.

    Wrappers such as jsonargparse's "Does not validate against any of the Union subtypes" are
    raised *from* the package's own ``ValueError``; the innermost one says what is wrong.

    Args:
        error: the exception that ended the command.

    Returns:
        Its message with runs of whitespace (newlines included) folded into single spaces.

    """
    inner = _innermost_user_error(error) or error
    text = " ".join(str(inner).split())
    if isinstance(inner, OSError) and inner.filename is not None and inner.strerror:
        text = f"{inner.strerror}: {str(inner.filename)!r}"
    return text or type(inner).__name__


def _innermost_user_error(error: BaseException) -> BaseException | None:
    found = None
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, USER_ERRORS):
            found = current
        current = current.__cause__
    return found
