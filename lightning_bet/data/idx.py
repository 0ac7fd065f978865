"""IDX file reader, the MNIST and Fashion-MNIST DataModules, and one over any given IDX files."""

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from lightning_bet.data._files import RESOURCES, Resource, Split, StandardImageDataModule
from lightning_bet.data.arrays import ArrayDataModule

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_FILES: dict[Split, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, as used by MNIST and Fashion-MNIST.

    The header is two zero bytes, a dtype code (``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16,
    ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64), the number of dimensions ``D`` and
    ``D`` big-endian uint32 sizes, followed by the big-endian values in C order. Gzip-compressed
    files (such as the standard ``.gz`` downloads) are decompressed transparently.

    Args:
        path: IDX file, optionally gzip-compressed.

    Returns:
        A writable array of shape ``(d_1, ..., d_D)`` in native byte order, e.g. ``uint8``
        ``(N, 28, 28)`` for an image file and ``uint8`` ``(N,)`` for a label file.

    Raises:
        ValueError: If the file is not valid IDX, is truncated or has trailing data; the message
            names the file.

    """
    path = Path(path)
    content = _read_maybe_gzipped(path)
    dtype, shape, offset = _parse_idx_header(content, path)
    expected_size = math.prod(shape) * dtype.itemsize
    actual_size = len(content) - offset
    if actual_size < expected_size:
        raise ValueError(
            f"IDX file {path} is truncated: its header declares shape {shape} of {dtype.name} "
            f"({expected_size} bytes of data), but only {actual_size} bytes follow. Delete it "
            "and download it again."
        )
    if actual_size > expected_size:
        raise ValueError(
            f"IDX file {path} is corrupt: its header declares shape {shape} of {dtype.name} "
            f"({expected_size} bytes of data), but {actual_size} bytes follow."
        )
    values = np.frombuffer(content, dtype=dtype, count=math.prod(shape), offset=offset)
    return values.reshape(shape).astype(dtype.newbyteorder("="))


def _read_maybe_gzipped(path: Path) -> bytes:
    content = path.read_bytes()
    if not content.startswith(_GZIP_MAGIC):
        return content
    try:
        return gzip.decompress(content)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(
            f"Gzip file {path} is corrupt or truncated ({error}). Delete it and download it again."
        ) from error


def _parse_idx_header(content: bytes, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """Return the dtype, the shape and the offset of the data of an IDX file."""
    if len(content) < 4:
        raise ValueError(
            f"IDX file {path} is truncated: expected a 4-byte magic number, but the file has "
            f"{len(content)} bytes."
        )
    if content[0] != 0 or content[1] != 0:
        raise ValueError(
            f"{path} is not an IDX file: expected its magic number to start with two zero bytes, "
            f"but got 0x{content[:4].hex()}."
        )
    dtype_code, num_dims = content[2], content[3]
    if dtype_code not in _IDX_DTYPES:
        valid = ", ".join(f"0x{code:02X}" for code in _IDX_DTYPES)
        raise ValueError(
            f"IDX file {path} has an unknown dtype code 0x{dtype_code:02X}; valid codes are "
            f"{valid}."
        )
    if num_dims == 0:
        raise ValueError(f"IDX file {path} declares 0 dimensions; expected at least 1.")
    offset = 4 + 4 * num_dims
    if len(content) < offset:
        raise ValueError(
            f"IDX file {path} is truncated: its header declares {num_dims} dimensions "
            f"({offset} header bytes), but the file has only {len(content)} bytes."
        )
    shape = tuple(int(size) for size in np.frombuffer(content, ">u4", num_dims, offset=4))
    return _IDX_DTYPES[dtype_code], shape, offset


class _IdxDataModule(StandardImageDataModule):
    """Base of the DataModules over the four standard MNIST-format IDX files.

    The files ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
    ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz`` are looked for in
    ``data_dir/<dataset_name>/raw/`` (torchvision's layout, where downloads go) and then in
    ``data_dir`` itself.
    """

    official_train_size = 60000
    input_shape = (1, 28, 28)

    @property
    def download_dir(self) -> Path:
        """``data_dir/<dataset_name>/raw``, torchvision's layout."""
        return self.data_dir / self.dataset_name / "raw"

    @property
    def extra_dirs(self) -> tuple[Path, ...]:
        """``data_dir`` itself, for a flat layout."""
        return (self.data_dir,)

    def split_resources(self, split: Split) -> tuple[Resource, ...]:
        """The images and labels file of ``split`` (the test split needs no training file)."""
        return tuple(r for r in RESOURCES[self.dataset_name] if r.filename in _IDX_FILES[split])

    def _load_split(self, files: dict[str, Path], split: Split) -> tuple[np.ndarray, np.ndarray]:
        images_name, labels_name = _IDX_FILES[split]
        images = read_idx(files[images_name])
        labels = read_idx(files[labels_name])
        _check_idx_pair(images, files[images_name], labels, files[labels_name])
        return images[:, None], labels


def _check_idx_pair(
    images: np.ndarray, images_path: Path, labels: np.ndarray, labels_path: Path
) -> None:
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(
            f"Expected {images_path} to hold uint8 images of shape (N, H, W), but it holds "
            f"{images.dtype} of shape {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.shape != (len(images),):
        raise ValueError(
            f"Expected {labels_path} to hold {len(images)} uint8 labels (one per image in "
            f"{images_path.name}), but it holds {labels.dtype} of shape {labels.shape}"
        )


class MNISTDataModule(_IdxDataModule):
    """MNIST handwritten digits: 60000 training and 10000 test images of shape ``(1, 28, 28)``.

    Files are looked for in ``data_dir/MNIST/raw/`` and ``data_dir/``. Inputs are ``uint8 / 255``
    as ``float32`` of shape ``(N, 1, 28, 28)``; targets are digits 0-9 as ``int64`` ``(N,)``.
    See :class:`~lightning_bet.data._files.StandardImageDataModule` for the arguments.
    """

    dataset_name = "MNIST"


class FashionMNISTDataModule(_IdxDataModule):
    """Fashion-MNIST clothing images: 60000 training and 10000 test images of shape (1, 28, 28).

    Files are looked for in ``data_dir/FashionMNIST/raw/`` and ``data_dir/``. Inputs are
    ``uint8 / 255`` as ``float32`` of shape ``(N, 1, 28, 28)``; targets are the 10 clothing
    classes as ``int64`` ``(N,)``. See
    :class:`~lightning_bet.data._files.StandardImageDataModule` for the arguments.
    """

    dataset_name = "FashionMNIST"


class IdxFilesDataModule(ArrayDataModule):
    """A DataModule over IDX files you give (MNIST format, optionally gzipped): own data, own split.

    Each split is an images file (``uint8`` ``(N, H, W)`` or ``(N, C, H, W)``; ``(N, H, W)`` gets
    a channel axis) and a labels file (integers ``(N,)``), read by :func:`read_idx`. Only the
    files given are read, in ``__init__`` (so ``input_shape`` and ``num_classes`` are known for
    ``lightning-bet fit``); the rest is :class:`~lightning_bet.data.arrays.ArrayDataModule`. In a
    recipe::

        data:
          class_path: lightning_bet.data.idx.IdxFilesDataModule
          init_args:
            train_images: data/my/train-images-idx3-ubyte.gz
            train_labels: data/my/train-labels-idx1-ubyte.gz
            test_images: data/my/t10k-images-idx3-ubyte.gz
            test_labels: data/my/t10k-labels-idx1-ubyte.gz
            val_size: 5000

    Args:
        train_images: images of the training split (with ``train_labels``).
        train_labels: labels of the training split.
        test_images: images of the test split (with ``test_labels``).
        test_labels: labels of the test split.
        val_images: images of a validation split; without, ``val_size`` training examples
            (seeded by ``seed``) are held out.
        val_labels: labels of that validation split.
        input_levels: pixel levels: inputs are ``q / input_levels``.
        num_classes: number of classes; ``None``: the largest label plus 1.
        batch_size: examples per batch.
        val_size: training examples held out for validation when no validation files are given.
        seed: seed of that split.
        num_workers: worker processes per dataloader.

    Raises:
        ValueError: for an images file without its labels file (or the reverse), no split, a
            file that is not valid IDX, or arrays that break the checks of ``ArrayDataModule``.
        FileNotFoundError: for a file that does not exist.

    """

    def __init__(
        self,
        train_images: str | os.PathLike[str] | None = None,
        train_labels: str | os.PathLike[str] | None = None,
        test_images: str | os.PathLike[str] | None = None,
        test_labels: str | os.PathLike[str] | None = None,
        val_images: str | os.PathLike[str] | None = None,
        val_labels: str | os.PathLike[str] | None = None,
        input_levels: int = 255,
        num_classes: int | None = None,
        batch_size: int = 64,
        val_size: int = 0,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        given = {
            "train": (train_images, train_labels),
            "val": (val_images, val_labels),
            "test": (test_images, test_labels),
        }
        splits: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
        for split, (images, labels) in given.items():
            if (images is None) != (labels is None):
                raise ValueError(
                    f"Expected both `{split}_images` and `{split}_labels` or neither, but got "
                    f"`{split}_images`={images!r} and `{split}_labels`={labels!r}"
                )
            splits[split] = None if images is None else _read_pair(split, images, labels)
        super().__init__(
            train=splits["train"],
            val=splits["val"],
            test=splits["test"],
            input_levels=input_levels,
            num_classes=num_classes,
            batch_size=batch_size,
            val_size=val_size,
            seed=seed,
            num_workers=num_workers,
        )
        self.save_hyperparameters()


def _read_pair(
    split: str, images: str | os.PathLike[str], labels: str | os.PathLike[str]
) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for kind, path in (("images", images), ("labels", labels)):
        if not isinstance(path, str | os.PathLike) or not Path(path).is_file():
            raise FileNotFoundError(
                f"Expected `{split}_{kind}` to be an existing IDX file, but got {path!r}"
            )
        arrays.append(read_idx(path))
    return arrays[0], arrays[1]
