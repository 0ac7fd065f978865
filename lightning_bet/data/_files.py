"""Dataset files (checksums, mirrors, download) and the shared image DataModule base.

The resource table lists, for each standard dataset, the files it needs together with their
official MD5 checksums (the values published by torchvision) and the mirrors they can be
fetched from. :func:`ensure_files` finds, verifies and (optionally) downloads them.
:class:`StandardImageDataModule` holds what the MNIST, Fashion-MNIST and CIFAR-10 DataModules
share: argument validation, the seeded train/validation split and the dataloaders.
"""

import abc
import contextlib
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from lightning_bet._validation import is_int
from lightning_bet.data.arrays import SplitDataModule

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
        with _removing_new_empty_dirs(data_dir):
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


@contextlib.contextmanager
def _removing_new_empty_dirs(directory: Path) -> Iterator[None]:
    """On exit, remove the folders up to ``directory`` that this created and left empty."""
    new: list[Path] = []
    folder = directory.absolute()
    while not folder.exists():
        new.append(folder)
        folder = folder.parent
    try:
        yield
    finally:
        for folder in new:  # deepest first
            try:
                folder.rmdir()
            except OSError:  # holds a downloaded file (or is gone): keep the rest
                break


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


class StandardImageDataModule(SplitDataModule, abc.ABC):
    """Base class of DataModules over a standard image classification dataset.

    Inputs are ``float32`` tensors of shape ``(N, *input_shape)`` holding ``q / input_levels``
    for the stored ``uint8`` pixel values ``q``, with no mean/std normalisation, so the exact
    integer inputs can be recovered. Targets are ``int64`` class indices of shape ``(N,)``.
    ``val_size`` examples of the official training set, drawn with ``seed``, form the
    validation set; the official test set is the test (and predict) set. A stage reads only
    the files of the splits it needs: the test files alone are enough to test.

    Subclasses set the class attributes and implement :meth:`_load_split` (and
    :meth:`split_resources` when a split needs only some of the files).

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

    def __init__(
        self,
        data_dir: str | os.PathLike[str] = "data",
        batch_size: int = 256,
        val_size: int = 5000,
        seed: int = 0,
        num_workers: int = 0,
        download: bool = True,
    ) -> None:
        if not isinstance(data_dir, str | os.PathLike):
            raise ValueError(f"Expected `data_dir` to be a str or path, but got {data_dir!r}")
        self._check_val_size(val_size, self.official_train_size)
        super().__init__(batch_size, val_size, seed, num_workers)
        if not isinstance(download, bool):
            raise ValueError(f"Expected `download` to be a bool, but got {download!r}")
        self.download = download
        self.data_dir = Path(data_dir)
        self.save_hyperparameters()
        self._files: dict[str, Path] = {}
        self._prepare_error: DatasetFilesNotFoundError | None = None

    @staticmethod
    def _check_val_size(val_size: object, train_size: int) -> int:
        if not is_int(val_size) or not 0 <= val_size < train_size:
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

    def split_resources(self, split: Split) -> tuple[Resource, ...]:
        """The files that one official split needs (default: every file of the dataset)."""
        return RESOURCES[self.dataset_name]

    def _ensure_files(self, download: bool, split: Split | None = None) -> dict[str, Path]:
        """Find, verify and possibly download the files of ``split`` (``None``: of all splits).

        Files found once are not verified again.
        """
        resources = RESOURCES[self.dataset_name] if split is None else self.split_resources(split)
        missing = [resource for resource in resources if resource.filename not in self._files]
        if missing:
            self._files.update(ensure_files(self.download_dir, missing, download, self.extra_dirs))
        return {resource.filename: self._files[resource.filename] for resource in resources}

    def prepare_data(self) -> None:
        """Find and verify the dataset files, downloading missing ones if allowed.

        Raises:
            DatasetFilesNotFoundError: If no split can be loaded. When one split is complete
                (e.g. only the test files are at hand, offline), the error is kept and
                :meth:`setup` raises it for a stage that needs a missing split.
            ValueError: If a file's checksum does not match.

        """
        try:
            self._ensure_files(self.download)
        except DatasetFilesNotFoundError as error:
            self._prepare_error = error
            for split in ("train", "test"):
                try:
                    self._ensure_files(download=False, split=split)
                except DatasetFilesNotFoundError:
                    continue
                return
            raise

    # -- loading -----------------------------------------------------------------------------

    @abc.abstractmethod
    def _load_split(self, files: dict[str, Path], split: Split) -> tuple[np.ndarray, np.ndarray]:
        """Read one official split.

        Args:
            files: Verified path of each resource of :meth:`split_resources`, keyed by name.
            split: ``"train"`` or ``"test"``.

        Returns:
            ``uint8`` images of shape ``(N, *input_shape)`` and integer labels of shape ``(N,)``.

        """

    def _load_tensors(self, split: Split) -> TensorDataset:
        try:
            files = self._ensure_files(download=False, split=split)
        except DatasetFilesNotFoundError as error:
            raise error from self._prepare_error
        images, labels = self._load_split(files, split)
        return self.to_dataset(images, labels, f"the {self.dataset_name} {split} set")

    def setup(self, stage: str | None = None) -> None:
        """Load the datasets a stage needs (all of them when ``stage`` is ``None``).

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` or ``None``.

        Raises:
            DatasetFilesNotFoundError: If the files of a needed split are missing (run
                :meth:`prepare_data`, or pass ``download=True``).
            ValueError: If a file is corrupt or ``val_size`` is not smaller than the training
                set.

        """
        if stage in (None, "fit", "validate") and self.train_dataset is None:
            self.train_dataset, self.val_dataset = self.split_train(self._load_tensors("train"))
        if stage in (None, "test", "predict") and self.test_dataset is None:
            self.test_dataset = self._load_tensors("test")
