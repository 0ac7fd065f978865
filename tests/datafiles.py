"""Builders of tiny files in the exact standard formats (IDX .gz, CIFAR-10 python tarball)."""

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lightning_bet.data._files import RESOURCES

N_TRAIN, N_TEST = 20, 7
CIFAR_BATCH, CIFAR_TEST = 4, 6


def idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def indexed_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random uint8 images whose first pixel is their index, so shuffled copies can be traced.

    Pixels 1 to 256 of every image hold all values 0-255, so exactness is checked for each.
    """
    images = np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)
    flat = images.reshape(n, -1)
    flat[:, 0] = np.arange(n)
    flat[:, 1:257] = np.arange(256)
    return images


def exact_inputs(images: np.ndarray) -> torch.Tensor:
    """The float32 nearest to q / 255 for each uint8 pixel q."""
    return torch.from_numpy((images.astype(np.float64) / 255).astype(np.float32))


def labels_for(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 10, n, dtype=np.uint8)


def idx_dataset() -> dict[str, tuple[np.ndarray, bytes]]:
    """Arrays and gzipped IDX bytes of the four standard MNIST files, keyed by file name."""
    arrays = {
        "train-images-idx3-ubyte.gz": indexed_images(N_TRAIN, (28, 28), seed=1),
        "train-labels-idx1-ubyte.gz": labels_for(N_TRAIN, seed=2),
        "t10k-images-idx3-ubyte.gz": indexed_images(N_TEST, (28, 28), seed=3),
        "t10k-labels-idx1-ubyte.gz": labels_for(N_TEST, seed=4),
    }
    return {name: (array, gzip.compress(idx_bytes(array))) for name, array in arrays.items()}


def cifar_batches() -> dict[str, dict[bytes, object]]:
    images = indexed_images(5 * CIFAR_BATCH, (3072,), seed=5)
    labels = labels_for(5 * CIFAR_BATCH, seed=6)
    batches = {
        f"data_batch_{i + 1}": {
            b"batch_label": b"training batch",
            b"data": images[i * CIFAR_BATCH : (i + 1) * CIFAR_BATCH],
            b"labels": labels[i * CIFAR_BATCH : (i + 1) * CIFAR_BATCH].tolist(),
        }
        for i in range(5)
    }
    batches["test_batch"] = {
        b"data": indexed_images(CIFAR_TEST, (3072,), seed=7),
        b"labels": labels_for(CIFAR_TEST, seed=8).tolist(),
    }
    return batches


def cifar_tarball(batches: dict[str, object]) -> bytes:
    """Gzipped tarball of pickled batches; a `bytes` batch is stored as is, unpickled."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, batch in batches.items():
            payload = batch if isinstance(batch, bytes) else pickle.dumps(batch)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def use_md5s(monkeypatch, dataset_name: str, contents: dict[str, bytes]) -> None:
    """Point the resource table of a dataset at the checksums of the tiny files."""
    resources = tuple(
        replace(resource, md5=md5(contents[resource.filename]))
        for resource in RESOURCES[dataset_name]
    )
    monkeypatch.setitem(RESOURCES, dataset_name, resources)


def write_files(directory: Path, contents: dict[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        (directory / name).write_bytes(data)
