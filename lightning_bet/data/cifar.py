"""CIFAR-10 DataModule, read straight from the official python tarball."""

import os
import pickle
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np

from lightning_bet.data._files import Split, StandardImageDataModule

ARCHIVE_NAME = "cifar-10-python.tar.gz"
_BATCH_DIR = "cifar-10-batches-py"
_BATCHES: dict[Split, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{index}" for index in range(1, 6)),
    "test": ("test_batch",),
}
_IMAGE_SHAPE = (3, 32, 32)
_IMAGE_SIZE = 3 * 32 * 32


def read_cifar10_batches(
    path: str | os.PathLike[str], batch_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Read batches of the CIFAR-10 python tarball without extracting it.

    Each batch is a pickled dict with ``b"data"``, ``uint8`` of shape ``(n, 3072)`` (the red,
    green and blue 32 x 32 planes of each image, row-major), and ``b"labels"``, ``n`` ints.
    Only unpickle archives whose checksum has been verified: unpickling runs code.

    Args:
        path: The ``cifar-10-python.tar.gz`` archive.
        batch_names: Batches to read from ``cifar-10-batches-py/``, e.g. ``["test_batch"]``.

    Returns:
        ``uint8`` images of shape ``(N, 3, 32, 32)`` and ``int64`` labels of shape ``(N,)``,
        the batches concatenated in the order given.

    Raises:
        ValueError: If the archive is corrupt, lacks a batch or a batch is malformed; the
            message names the archive and the batch.

    """
    path = Path(path)
    member_names = [f"{_BATCH_DIR}/{name}" for name in batch_names]
    batches = _read_archive_members(path, member_names)
    decoded = [_decode_batch(batches[name], where=f"{path}:{name}") for name in member_names]
    images = np.concatenate([batch_images for batch_images, _ in decoded])
    labels = np.concatenate([batch_labels for _, batch_labels in decoded])
    return images, labels


def _read_archive_members(path: Path, member_names: Sequence[str]) -> dict[str, dict]:
    """Unpickle the named members of a gzipped tarball in one forward pass."""
    wanted = set(member_names)
    batches: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                if member.name in wanted and member.isfile():
                    batches[member.name] = _unpickle(archive.extractfile(member), path, member)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise ValueError(
            f"CIFAR-10 archive {path} is corrupt or truncated ({error}). Delete it and download "
            "it again."
        ) from error
    missing = [name for name in member_names if name not in batches]
    if missing:
        raise ValueError(
            f"CIFAR-10 archive {path} lacks the member(s) {', '.join(missing)}; it is not the "
            f"official {ARCHIVE_NAME}. Delete it and download it again."
        )
    return batches


def _unpickle(file: IO[bytes] | None, path: Path, member: tarfile.TarInfo) -> dict:
    if file is None:
        raise ValueError(f"Member {member.name} of CIFAR-10 archive {path} is not a regular file.")
    payload = file.read()  # Decompression errors propagate to the archive-level handler.
    try:
        batch = pickle.loads(payload, encoding="bytes")
    except Exception as error:  # Unpickling corrupt data can raise almost any exception.
        raise ValueError(
            f"Member {member.name} of CIFAR-10 archive {path} could not be unpickled ({error!r})."
        ) from error
    if not isinstance(batch, dict):
        raise ValueError(
            f"Member {member.name} of CIFAR-10 archive {path} should hold a dict, but holds "
            f"{type(batch).__name__}."
        )
    return batch


def _decode_batch(batch: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the ``(n, 3, 32, 32)`` uint8 images and ``(n,)`` int64 labels of one batch."""
    if b"data" not in batch or b"labels" not in batch:
        raise ValueError(
            f"CIFAR-10 batch {where} should have the keys b'data' and b'labels', but has "
            f"{sorted(map(repr, batch))}."
        )
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"CIFAR-10 batch {where} should hold uint8 b'data' of shape (n, 3072).")
    if data.shape[1] != _IMAGE_SIZE:
        raise ValueError(
            f"CIFAR-10 batch {where} should hold b'data' of shape (n, {_IMAGE_SIZE}), but it has "
            f"shape {data.shape}."
        )
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"CIFAR-10 batch {where} should hold {len(data)} integer b'labels' (one per image), "
            f"but they have dtype {labels.dtype} and shape {labels.shape}."
        )
    return data.reshape(-1, *_IMAGE_SHAPE), labels.astype(np.int64)


class CIFAR10DataModule(StandardImageDataModule):
    """CIFAR-10: 50000 training and 10000 test colour images of shape ``(3, 32, 32)``.

    The archive ``cifar-10-python.tar.gz`` is looked for (and downloaded) in ``data_dir``,
    torchvision's layout, and read without extracting it. Inputs are ``uint8 / 255`` as
    ``float32`` of shape ``(N, 3, 32, 32)``; targets are the 10 classes as ``int64`` ``(N,)``.
    See :class:`~lightning_bet.data._files.StandardImageDataModule` for the arguments.
    """

    dataset_name = "CIFAR10"
    official_train_size = 50000
    input_shape = _IMAGE_SHAPE

    def _load_split(self, files: dict[str, Path], split: Split) -> tuple[np.ndarray, np.ndarray]:
        return read_cifar10_batches(files[ARCHIVE_NAME], _BATCHES[split])
