"""DataModules over integer pixel arrays: the shared base and :class:`ArrayDataModule`.

The DataModule contract of lightning-bet (``lightning-bet fit`` links the first two into the
model, ``export`` and ``emulate`` read the third), all known right after ``__init__``:

- ``input_shape``: the shape of one input, ``(C, H, W)`` for images;
- ``num_classes``: the number of classes (targets are ``int64`` indices in ``[0, num_classes)``);
- ``input_levels``: inputs are exactly ``q / input_levels`` for integer pixels ``q`` in
  ``[0, input_levels]``, so that deploy mode and the exported integer network see the same
  inputs (255 for 8-bit images).

``test_dataloader()`` (after ``setup("test")``) yields ``(inputs (B, *input_shape), targets
(B,))``; export classifies its samples with every backend. Any ``LightningDataModule`` with these
attributes works; :class:`ArrayDataModule` builds one from arrays in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_bet._validation import check_positive_int, is_int

__all__ = ["ArrayDataModule", "SplitDataModule"]

_SPLITS = ("train", "val", "test")


def _check_int(name: str, value: object, minimum: int, description: str) -> int:
    if not is_int(value) or value < minimum:
        raise ValueError(f"Expected `{name}` to be {description}, but got {value!r}")
    return int(value)


class SplitDataModule(L.LightningDataModule):
    """Base of the DataModules that hold ``train``/``val``/``test`` :class:`TensorDataset` s.

    Holds what they share: argument checks, the seeded train/validation split, the exact
    ``q / input_levels`` conversion with its checks, and the dataloaders (``predict`` uses the
    test set). Subclasses set ``input_shape``, ``num_classes``, ``input_levels`` and fill the
    datasets in :meth:`setup`.

    Args:
        batch_size: examples per batch, at least 1.
        val_size: training examples held out for validation (checked against the training set
            by :meth:`split_train`).
        seed: seed of the train/validation split.
        num_workers: worker processes per dataloader, at least 0.

    Raises:
        ValueError: if an argument is out of range.

    """

    input_shape: tuple[int, ...]
    """Shape of one input, e.g. ``(C, H, W)``."""
    num_classes: int = 10
    """Number of classes."""
    input_levels: int = 255
    """Inputs are the integer pixels divided by this."""

    def __init__(self, batch_size: int, val_size: int, seed: int, num_workers: int) -> None:
        super().__init__()
        self.batch_size = _check_int("batch_size", batch_size, 1, "a positive int")
        self.val_size = _check_int("val_size", val_size, 0, "a non-negative int")
        if not is_int(seed):
            raise ValueError(f"Expected `seed` to be an int, but got {seed!r}")
        self.seed = int(seed)
        self.num_workers = _check_int("num_workers", num_workers, 0, "a non-negative int")
        self.train_dataset: TensorDataset | None = None
        self.val_dataset: TensorDataset | None = None
        self.test_dataset: TensorDataset | None = None

    # -- arrays -> datasets ------------------------------------------------------------------

    def to_dataset(self, images: Any, labels: Any, where: str) -> TensorDataset:
        """Check integer pixels and labels and convert them to ``(q / input_levels, labels)``.

        Args:
            images: integer array (numpy or torch) of shape ``(N, *input_shape)`` with values
                in ``[0, input_levels]``.
            labels: integer array of shape ``(N,)`` with values in ``[0, num_classes)``.
            where: how messages name the data (e.g. ``"the MNIST train set"``).

        Returns:
            ``TensorDataset(float32 (N, *input_shape), int64 (N,))``.

        Raises:
            ValueError: naming ``where`` and what is valid, for a wrong dtype, shape or range.

        """
        images = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        shape = ", ".join(map(str, ("N", *self.input_shape)))
        if not np.issubdtype(images.dtype, np.integer) or images.shape[1:] != self.input_shape:
            raise ValueError(
                f"Expected images of {where} to be integer pixels with shape ({shape}), but got "
                f"{images.dtype} {images.shape}"
            )
        if images.size and (images.min() < 0 or images.max() > self.input_levels):
            raise ValueError(
                f"Expected images of {where} to be in [0, {self.input_levels}] (`input_levels`), "
                f"but found values in [{images.min()}, {images.max()}]"
            )
        if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(images),):
            raise ValueError(
                f"Expected labels of {where} to be integers of shape ({len(images)},), one per "
                f"image, but got {labels.dtype} {labels.shape}"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"Expected labels of {where} to be in [0, {self.num_classes}), but found "
                f"values in [{labels.min()}, {labels.max()}]"
            )
        inputs = torch.from_numpy(images.astype(np.float32)).div_(self.input_levels)
        return TensorDataset(inputs, torch.from_numpy(labels.astype(np.int64)))

    def split_train(self, dataset: TensorDataset) -> tuple[TensorDataset, TensorDataset]:
        """Hold out ``val_size`` examples (a permutation seeded by ``seed``) for validation.

        Raises:
            ValueError: if ``val_size`` is not smaller than the training set.

        """
        size = len(dataset)
        if self.val_size >= size:
            raise ValueError(
                f"Expected `val_size` to be an int in [0, {size}) (the training set has {size} "
                f"examples), but got {self.val_size!r}"
            )
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
        if dataset is None:
            raise ValueError(f"{type(self).__name__} has no {split} set")
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
        """Batches ``(inputs (B, *input_shape), targets (B,))`` of the test set."""
        return self._loader("test", "test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Batches ``(inputs (B, *input_shape), targets (B,))`` of the test set."""
        return self._loader("test", "predict", shuffle=False)


class ArrayDataModule(SplitDataModule):
    """A DataModule over integer pixel arrays in memory: a user's own data or split.

    Each split is a pair ``(images, labels)`` of numpy arrays or tensors: integer pixels
    ``(N, *input_shape)`` in ``[0, input_levels]`` (``(N, H, W)`` gets a channel axis:
    ``(N, 1, H, W)``) and integer labels ``(N,)``. Inputs are ``float32`` ``q / input_levels``;
    targets ``int64``. Without ``val``, ``val_size`` examples of ``train`` (seeded by ``seed``)
    form the validation set. The arrays are checked here, so ``input_shape`` and
    ``num_classes`` are known at once (``lightning-bet fit`` links them into the model).

    Args:
        train: training split (needed by ``fit``).
        val: validation split; ``None``: held out of ``train``.
        test: test split (needed by ``test``, ``predict`` and export).
        input_levels: pixel levels: inputs are ``q / input_levels`` (255 for 8-bit images).
        num_classes: number of classes; ``None``: the largest label of any split plus 1.
        batch_size: examples per batch.
        val_size: examples of ``train`` held out for validation when ``val`` is ``None``.
        seed: seed of that split.
        num_workers: worker processes per dataloader.

    Raises:
        ValueError: for a split that is not an ``(images, labels)`` pair of valid arrays, no
            split at all, images of different shapes, or an argument out of range.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> images = rng.integers(0, 256, (100, 28, 28), dtype=np.uint8)
        >>> labels = rng.integers(0, 10, 100)
        >>> data = ArrayDataModule(train=(images, labels), test=(images[:20], labels[:20]),
        ...                        val_size=10, num_classes=10)
        >>> data.input_shape, data.num_classes, data.input_levels
        ((1, 28, 28), 10, 255)

    """

    def __init__(
        self,
        train: Sequence[Any] | None = None,
        val: Sequence[Any] | None = None,
        test: Sequence[Any] | None = None,
        input_levels: int = 255,
        num_classes: int | None = None,
        batch_size: int = 64,
        val_size: int = 0,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, val_size, seed, num_workers)
        self.input_levels = check_positive_int(
            "input_levels", input_levels, types=(int, np.integer)
        )
        splits = {
            name: _as_pair(name, value)
            for name, value in zip(_SPLITS, (train, val, test), strict=True)
            if value is not None
        }
        if not splits:
            raise ValueError(
                "Expected at least one of `train`, `val`, `test` to be an (images, labels) "
                "pair, but got none"
            )
        shapes = {name: tuple(images.shape[1:]) for name, (images, _) in splits.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(
                f"Expected the images of every split to have one shape, but got {shapes}"
            )
        self.input_shape = next(iter(shapes.values()))
        if num_classes is None:
            largest = [int(labels.max()) for _, labels in splits.values() if labels.size]
            num_classes = max(largest, default=0) + 1
        self.num_classes = check_positive_int("num_classes", num_classes, types=(int, np.integer))
        datasets = {
            name: self.to_dataset(images, labels, f"`{name}`")
            for name, (images, labels) in splits.items()
        }
        if "train" in datasets and "val" not in datasets:
            datasets["train"], datasets["val"] = self.split_train(datasets["train"])
        elif "train" not in datasets and val_size:
            raise ValueError(
                f"Expected `val_size` to be 0 without a `train` split to hold it out of, but got "
                f"{val_size!r}"
            )
        self.train_dataset = datasets.get("train")
        self.val_dataset = datasets.get("val")
        self.test_dataset = datasets.get("test")

    def setup(self, stage: str | None = None) -> None:
        """Nothing to load: the arrays were converted in ``__init__``."""


def _as_pair(name: str, value: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise ValueError(
            f"Expected `{name}` to be an (images, labels) pair of arrays, but got "
            f"{type(value).__name__}"
        )
    images, labels = (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for v in value)
    if images.ndim == 3:
        images = images[:, None]
    return images, labels
