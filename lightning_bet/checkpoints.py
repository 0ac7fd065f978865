"""Reading checkpoints safely.

A checkpoint is a pickle: unpickling an untrusted file can run arbitrary code. Checkpoints are
therefore read with ``torch.load(..., weights_only=True)``, which only rebuilds tensors, plain
containers and the types allow-listed here (:data:`SAFE_TYPES`, the package's own value types).
A checkpoint that needs any other type is refused with a :class:`CheckpointError` naming the
type; ``trust=True`` (``--trust-checkpoint`` on the command line) loads it anyway, for files
whose origin you trust.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from lightning_bet.errors import CheckpointError
from lightning_bet.functional.faults import FaultModel

__all__ = ["SAFE_TYPES", "TRUST_FLAG", "load_checkpoint", "read_checkpoint"]

#: The package's own types a checkpoint may hold besides tensors and plain containers.
SAFE_TYPES: tuple[type, ...] = (FaultModel,)

#: The command-line flag that loads a checkpoint with ``weights_only=False``.
TRUST_FLAG = "--trust-checkpoint"

#: What ``torch.load`` raises for a file that is not a (complete) checkpoint.
_UNREADABLE = (
    RuntimeError,
    EOFError,
    OSError,
    KeyError,
    IndexError,
    ValueError,
    zipfile.BadZipFile,
    pickle.UnpicklingError,
)


def read_checkpoint(
    path: str | os.PathLike,
    trust: bool = False,
    name: str = "ckpt",
    flag: str | None = TRUST_FLAG,
) -> Any:
    """``torch.load`` a checkpoint onto the CPU, refusing code it would have to trust.

    Args:
        path: the checkpoint file.
        trust: load with ``weights_only=False`` (runs whatever the pickle asks for: only for
            files from a trusted source).
        name: how the caller names ``path`` in error messages (e.g. ``"--ckpt"``).
        flag: how the caller spells the trust switch in error messages (``None``: the caller
            has none, e.g. LightningCLI, which reads ``--ckpt_path`` with ``weights_only=True``).

    Returns:
        What was saved (for a Lightning checkpoint, a dict with ``"state_dict"``).

    Raises:
        FileNotFoundError: if ``path`` is not an existing file.
        CheckpointError: if the file is not a readable checkpoint (truncated, corrupt, not a
            checkpoint) or needs types outside :data:`SAFE_TYPES` and ``trust`` is ``False``.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "w.ckpt"
        >>> torch.save({"state_dict": {"w": torch.ones(2)}}, path)
        >>> read_checkpoint(path)["state_dict"]["w"].tolist()
        [1.0, 1.0]

    """
    if not isinstance(trust, bool):
        raise ValueError(f"Expected `trust` to be a bool, but got {trust!r}")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"Expected `{name}` to be an existing file, but got {str(path)!r}")
    try:
        with torch.serialization.safe_globals(list(SAFE_TYPES)):
            return torch.load(file, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as error:
        unsafe = _unsafe_globals(file)
        if unsafe and not trust:
            advice = (
                f"if you trust its source, pass {flag}"
                if flag
                else "this command loads allow-listed types only (re-save the checkpoint's "
                "state_dict with torch.save)"
            )
            raise CheckpointError(
                f"Checkpoint {str(path)!r} needs types that are not allow-listed for safe "
                f"loading ({', '.join(unsafe)}); loading it could run arbitrary code; {advice}"
            ) from error
        raise _unreadable(path, error) from error
    except _UNREADABLE as error:
        raise _unreadable(path, error) from error


def _unsafe_globals(file: Path) -> list[str]:
    """The globals a checkpoint needs beyond torch's defaults and :data:`SAFE_TYPES`."""
    allowed = {f"{kind.__module__}.{kind.__qualname__}" for kind in SAFE_TYPES}
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(file)
    except _UNREADABLE:
        return []
    return [name for name in found if name not in allowed]


def _unreadable(path: str | os.PathLike, error: BaseException) -> CheckpointError:
    first = (str(error).strip().splitlines() or [""])[0].split(". ")[0]
    reason = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return CheckpointError(
        f"{str(path)!r} is not a readable checkpoint (truncated, corrupt or not written by "
        f"torch.save): {reason}"
    )


def load_checkpoint(
    ckpt: str | os.PathLike,
    config: str | os.PathLike,
    arg_names: tuple[str, str] = ("ckpt", "config"),
    trust: bool = False,
) -> tuple[Any, Any]:
    """Build model and datamodule from a recipe and load a checkpoint's weights into the model.

    Args:
        ckpt: a Lightning checkpoint (``{"state_dict": ...}``) or a plain state dict of the
            ``BNNClassifier``, read by :func:`read_checkpoint`.
        config: the recipe (LightningCLI YAML) the checkpoint was trained with.
        arg_names: how the caller names the two arguments in its error messages (e.g.
            ``("--ckpt", "--config")`` for a command line).
        trust: passed to :func:`read_checkpoint`.

    Returns:
        ``(module, datamodule)``, the module in eval mode on the CPU.

    Raises:
        FileNotFoundError: for a missing file.
        CheckpointError: for a file :func:`read_checkpoint` refuses.
        ValueError: when the checkpoint does not match the recipe's model.

    """
    from lightning_bet.recipe import make_cli_quietly

    for name, path in zip(arg_names, (ckpt, config), strict=True):
        if not Path(path).is_file():
            raise FileNotFoundError(f"Expected `{name}` to be an existing file, but got {path!r}")
    checkpoint = read_checkpoint(ckpt, trust=trust, name=arg_names[0])
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"Expected `{arg_names[0]}` {str(ckpt)!r} to hold a checkpoint dict, but got "
            f"{type(checkpoint).__name__}"
        )
    cli = make_cli_quietly(config)
    module, datamodule = cli.model, cli.datamodule
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
