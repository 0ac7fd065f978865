"""Dataset files (checksums, mirrors, download) and the shared image DataModule base.

The resource table lists, for each standard dataset, the files it needs together with their
official MD5 checksums (the values published by torchvision) and the mirrors they can be
fetched from. :func:`ensure_files` finds, verifies and (optionally) downloads them.
:class:`StandardImageDataModule` holds what the MNIST, Fashion-MNIST and CIFAR-10 DataModules
share: argument validation, the seeded train/validation split and the dataloaders.
"""

import abc
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

_CHUNK_SIZE = 1 << 20
_DOWNLOAD_TIMEOUT_S = 60.0
_USER_AGENT = "lightning-bet"

Split = Literal["train", "test"]


@dataclass(frozen=True)
class Resource:
    """One file of a dataset.

    Attributes:
        filename: Name of the file on disk and on the mirrors.
        md5: Expected MD5 checksum of the file (lowercase hex).
        urls: Full URLs to fetch the file from, tried in order.

    """

    filename: str
    md5: str
    urls: tuple[str, ...]


def _mirrored(
    filenames_and_md5s: Iterable[tuple[str, str]], mirrors: Sequence[str]
) -> tuple[Resource, ...]:
    return tuple(
        Resource(filename, md5, tuple(mirror + filename for mirror in mirrors))
        for filename, md5 in filenames_and_md5s
    )


_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_FASHION_MNIST_MIRRORS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
_CIFAR10_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)

RESOURCES: dict[str, tuple[Resource, ...]] = {
    "MNIST": _mirrored(
        [
            ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        ],
        _MNIST_MIRRORS,
    ),
    "FashionMNIST": _mirrored(
        [
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        ],
        _FASHION_MNIST_MIRRORS,
    ),
    "CIFAR10": _mirrored(
        [("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")],
        _CIFAR10_MIRRORS,
    ),
}
"""Files of each standard dataset, keyed by dataset name."""


class DatasetFilesNotFoundError(FileNotFoundError):
    """Raised when dataset files are missing and could not be downloaded.

    Attributes:
        missing: Names of the files that are missing.

    """

    def __init__(self, message: str, missing: Sequence[str]) -> None:
        super().__init__(message)
        self.missing = tuple(missing)


# ----------------------------------------------------------------------------------------------
# Checksums, lookup and download
# ----------------------------------------------------------------------------------------------


def md5sum(path: str | os.PathLike[str]) -> str:
    """Compute the MD5 checksum of a file, reading it in chunks.

    Args:
        path: File to hash.

    Returns:
        The checksum as a lowercase hex string.

    """
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path, expected_md5: str) -> None:
    """Check that a file has the expected MD5 checksum.

    Args:
        path: File to check.
        expected_md5: Expected checksum (hex).

    Raises:
        ValueError: If the checksums differ.

    """
    actual_md5 = md5sum(path)
    if actual_md5 != expected_md5.lower():
        raise ValueError(
            f"Checksum mismatch for {path}: expected md5 {expected_md5.lower()}, but got "
            f"{actual_md5}. The file is corrupt, incomplete or a different version; delete it "
            "and download it again (for example with `download=True`)."
        )


def ensure_files(
    data_dir: str | os.PathLike[str],
    resources: Sequence[Resource],
    download: bool,
    extra_dirs: Sequence[str | os.PathLike[str]] = (),
) -> dict[str, Path]:
    """Find, verify and, if allowed, download the files of a dataset.

    Each file is looked for in ``data_dir`` and then in ``extra_dirs``; the first copy found is
    used. Missing files are downloaded into ``data_dir`` when ``download`` is true.

    Args:
        data_dir: Main directory of the dataset; downloads are written here.
        resources: Files to provide.
        download: Whether missing files may be downloaded.
        extra_dirs: Further directories to look in, after ``data_dir``.

    Returns:
        A mapping from each resource's file name to its verified path.

    Raises:
        ValueError: If a file's MD5 checksum does not match (the message names the file, the
            expected and the actual checksum).
        DatasetFilesNotFoundError: If files are missing and ``download`` is false or they
            could not be downloaded (the message names the files, the directories looked in and
            the URLs to fetch them from).

    """
    data_dir = Path(data_dir)
    search_dirs = [data_dir, *(Path(directory) for directory in extra_dirs)]
    found: dict[str, Path] = {}
    missing: list[Resource] = []
    for resource in resources:
        path = _find(resource.filename, search_dirs)
        if path is None:
            missing.append(resource)
        else:
            verify_md5(path, resource.md5)
            found[resource.filename] = path

    failures: dict[str, list[str]] = {}
    if missing and download:
        for resource in missing:
            path, errors = _download(resource, data_dir)
            if path is None:
                failures[resource.filename] = errors
            else:
                found[resource.filename] = path
        missing = [resource for resource in missing if resource.filename in failures]
    if missing:
        raise DatasetFilesNotFoundError(
            _missing_files_message(missing, search_dirs, failures),
            [resource.filename for resource in missing],
        )
    return found


def _find(filename: str, search_dirs: Sequence[Path]) -> Path | None:
    for directory in search_dirs:
        path = directory / filename
        if path.is_file():
            return path
    return None


def _missing_files_message(
    missing: Sequence[Resource], search_dirs: Sequence[Path], failures: dict[str, list[str]]
) -> str:
    names = ", ".join(resource.filename for resource in missing)
    lines = [
        f"Missing dataset file(s): {names}.",
        f"Looked in: {', '.join(str(directory) for directory in search_dirs)}.",
    ]
    if failures:
        lines.append("Downloading failed:")
        lines.extend(f"  {error}" for errors in failures.values() for error in errors)
    lines.append("Get them from:")
    lines.extend(f"  {resource.filename}: {' or '.join(resource.urls)}" for resource in missing)
    lines.append(f"and place them in {search_dirs[0]}")
    if not failures:
        lines[-1] += ", or pass `download=True` to download them automatically"
    lines[-1] += "."
    return "\n".join(lines)


def _download(resource: Resource, target_dir: Path) -> tuple[Path | None, list[str]]:
    """Download a resource from its first working mirror and verify it.

    Returns:
        The final path (``None`` if every mirror failed) and one error line per failed mirror.

    """
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / resource.filename
    errors: list[str] = []
    for url in resource.urls:
        try:
            _download_verified(url, target, resource.md5)
        except (OSError, ValueError) as error:
            errors.append(f"{url}: {error}")
        else:
            return target, errors
    return None, errors


def _download_verified(url: str, target: Path, expected_md5: str) -> None:
    """Download ``url`` to a temporary file, verify it, then move it to ``target``."""
    descriptor, temp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".part", dir=target.parent
    )
    temp_path = Path(temp_name)
    try:
        with os.fdopen(descriptor, "wb") as file:
            _stream_url(url, file, description=target.name)
        verify_md5(temp_path, expected_md5)
        os.replace(temp_path, target)
    finally:
        temp_path.unlink(missing_ok=True)


def _stream_url(url: str, file: BinaryIO, description: str) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with tqdm(total=total, unit="B", unit_scale=True, desc=description) as progress:
            while chunk := response.read(_CHUNK_SIZE):
                file.write(chunk)
                progress.update(len(chunk))


# ----------------------------------------------------------------------------------------------
# Shared DataModule base
# ----------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_int(name: str, value: object, minimum: int, description: str) -> int:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"Expected `{name}` to be {description}, but got {value!r}")
    return int(value)


class StandardImageDataModule(L.LightningDataModule, abc.ABC):
    """Base class of DataModules over a standard image classification dataset.

    Inputs are ``float32`` tensors of shape ``(N, *input_shape)`` holding ``q / input_levels``
    for the stored ``uint8`` pixel values ``q``, with no mean/std normalisation, so the exact
    integer inputs can be recovered. Targets are ``int64`` class indices of shape ``(N,)``.
    ``val_size`` examples of the official training set, drawn with ``seed``, form the
    validation set; the official test set is the test (and predict) set.

    Subclasses set the class attributes and implement :meth:`_load_split`.

    Args:
        data_dir: Directory holding the dataset files (see the subclass for the layout).
        batch_size: Examples per batch, at least 1.
        val_size: Training examples held out for validation, in
            ``[0, official_train_size)``.
        seed: Seed of the train/validation split.
        num_workers: Worker processes per dataloader, at least 0.
        download: Whether :meth:`prepare_data` may download missing files.

    Raises:
        ValueError: If an argument is out of range.

    """

    dataset_name: str
    """Key of the dataset in :data:`RESOURCES`."""
    official_train_size: int
    """Number of examples in the official training set."""
    input_shape: tuple[int, ...]
    """Shape ``(C, H, W)`` of one input."""
    num_classes: int = 10
    """Number of classes."""
    input_levels: int = 255
    """Inputs are the stored ``uint8`` values divided by this."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str] = "data",
        batch_size: int = 256,
        val_size: int = 5000,
        seed: int = 0,
        num_workers: int = 0,
        download: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(data_dir, str | os.PathLike):
            raise ValueError(f"Expected `data_dir` to be a str or path, but got {data_dir!r}")
        self.batch_size = _check_int("batch_size", batch_size, 1, "a positive int")
        self.val_size = self._check_val_size(val_size, self.official_train_size)
        if not _is_int(seed):
            raise ValueError(f"Expected `seed` to be an int, but got {seed!r}")
        self.seed = int(seed)
        self.num_workers = _check_int("num_workers", num_workers, 0, "a non-negative int")
        if not isinstance(download, bool):
            raise ValueError(f"Expected `download` to be a bool, but got {download!r}")
        self.download = download
        self.data_dir = Path(data_dir)
        self.save_hyperparameters()
        self.train_dataset: TensorDataset | None = None
        self.val_dataset: TensorDataset | None = None
        self.test_dataset: TensorDataset | None = None
        self._files: dict[str, Path] | None = None

    @staticmethod
    def _check_val_size(val_size: object, train_size: int) -> int:
        if not _is_int(val_size) or not 0 <= val_size < train_size:
            raise ValueError(
                f"Expected `val_size` to be an int in [0, {train_size}) (the training set has "
                f"{train_size} examples), but got {val_size!r}"
            )
        return int(val_size)

    # -- files -------------------------------------------------------------------------------

    @property
    def download_dir(self) -> Path:
        """Directory that missing files are downloaded into (looked in first)."""
        return self.data_dir

    @property
    def extra_dirs(self) -> tuple[Path, ...]:
        """Further directories looked in for the dataset files."""
        return ()

    def _ensure_files(self, download: bool) -> dict[str, Path]:
        """Find, verify and possibly download the files once; later calls reuse the result."""
        if self._files is None:
            self._files = ensure_files(
                self.download_dir, RESOURCES[self.dataset_name], download, self.extra_dirs
            )
        return self._files

    def prepare_data(self) -> None:
        """Find and verify the dataset files, downloading missing ones if allowed."""
        self._ensure_files(self.download)

    # -- loading -----------------------------------------------------------------------------

    @abc.abstractmethod
    def _load_split(self, files: dict[str, Path], split: Split) -> tuple[np.ndarray, np.ndarray]:
        """Read one official split.

        Args:
            files: Verified path of each resource, keyed by file name.
            split: ``"train"`` or ``"test"``.

        Returns:
            ``uint8`` images of shape ``(N, *input_shape)`` and integer labels of shape ``(N,)``.

        """

    def _load_tensors(self, split: Split) -> TensorDataset:
        images, labels = self._load_split(self._ensure_files(download=False), split)
        self._check_arrays(images, labels, split)
        inputs = torch.from_numpy(images).to(torch.float32).div_(self.input_levels)
        targets = torch.from_numpy(labels.astype(np.int64))
        return TensorDataset(inputs, targets)

    def _check_arrays(self, images: np.ndarray, labels: np.ndarray, split: Split) -> None:
        where = f"the {self.dataset_name} {split} set"
        if images.dtype != np.uint8 or images.shape[1:] != self.input_shape:
            raise ValueError(
                f"Expected images of {where} to be uint8 with shape (N, "
                f"{', '.join(map(str, self.input_shape))}), but got {images.dtype} "
                f"{images.shape}"
            )
        if labels.shape != (len(images),):
            raise ValueError(
                f"Expected labels of {where} to have shape ({len(images)},), one per image, "
                f"but got {labels.shape}"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"Expected labels of {where} to be in [0, {self.num_classes}), but found "
                f"values in [{labels.min()}, {labels.max()}]"
            )

    def setup(self, stage: str | None = None) -> None:
        """Load the datasets a stage needs (all of them when ``stage`` is ``None``).

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` or ``None``.

        Raises:
            DatasetFilesNotFoundError: If the files are missing (run :meth:`prepare_data`).
            ValueError: If a file is corrupt or ``val_size`` is not smaller than the training
                set.

        """
        if stage in (None, "fit", "validate") and self.train_dataset is None:
            self.train_dataset, self.val_dataset = self._split_train(self._load_tensors("train"))
        if stage in (None, "test", "predict") and self.test_dataset is None:
            self.test_dataset = self._load_tensors("test")

    def _split_train(self, dataset: TensorDataset) -> tuple[TensorDataset, TensorDataset]:
        size = len(dataset)
        self._check_val_size(self.val_size, size)
        order = torch.from_numpy(np.random.default_rng(self.seed).permutation(size))
        val_indices, train_indices = order[: self.val_size], order[self.val_size :]
        inputs, targets = dataset.tensors
        return (
            TensorDataset(inputs[train_indices], targets[train_indices]),
            TensorDataset(inputs[val_indices], targets[val_indices]),
        )

    # -- dataloaders -------------------------------------------------------------------------

    def _loader(self, split: str, stage: str, shuffle: bool) -> DataLoader:
        dataset = getattr(self, f"{split}_dataset")
        if dataset is None:
            self.setup(stage)
            dataset = getattr(self, f"{split}_dataset")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches ``(inputs (B, *input_shape), targets (B,))`` of the training set."""
        return self._loader("train", "fit", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Batches ``(inputs (B, *input_shape), targets (B,))`` of the validation set."""
        return self._loader("val", "validate", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Batches ``(inputs (B, *input_shape), targets (B,))`` of the official test set."""
        return self._loader("test", "test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Batches ``(inputs (B, *input_shape), targets (B,))`` of the official test set."""
        return self._loader("test", "predict", shuffle=False)
