"""``DigitsDataModule``: scikit-learn's handwritten digits, shipped inside scikit-learn."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["DigitsDataModule", "load_digits_splits"]

#: Pixel values of the digits data are integers 0..16; inputs are ``q / 16`` exactly.
DIGITS_LEVELS = 16


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"Expected `{name}` to be {kind}, but got {value!r}")


def load_digits_splits(
    val_size: int = 180, test_size: int = 360, seed: int = 0
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Load the 1797 digits and split them with a fixed seeded permutation.

    Args:
        val_size: number of validation samples.
        test_size: number of test samples.
        seed: permutation seed (the same seed always gives the same split).

    Returns:
        ``{"train": (x, y), "val": (x, y), "test": (x, y)}`` with ``x`` float32
        ``(n, 1, 8, 8)`` in ``[0, 1]`` (exactly ``q / 16`` for integer pixels ``q``) and ``y``
        int64 ``(n,)``.
    """
    from sklearn.datasets import load_digits

    _check_int("val_size", val_size, 1)
    _check_int("test_size", test_size, 1)
    data = load_digits()
    n = len(data.target)
    if val_size + test_size >= n:
        raise ValueError(
            f"Expected `val_size + test_size` to be below the {n} digits samples, but got "
            f"{val_size} + {test_size}"
        )
    order = np.random.default_rng(seed).permutation(n)
    x = torch.from_numpy(data.images.astype(np.float32) / DIGITS_LEVELS).unsqueeze(1)
    y = torch.from_numpy(data.target.astype(np.int64))
    parts = {
        "test": order[:test_size],
        "val": order[test_size : test_size + val_size],
        "train": order[test_size + val_size :],
    }
    return {name: (x[idx], y[idx]) for name, idx in parts.items()}


class DigitsDataModule(L.LightningDataModule):
    """The embedded default dataset: 1797 8x8 handwritten digits, no download.

    Split with a fixed seed into 1257 train, 180 validation and 360 test samples by default.

    Args:
        batch_size: samples per batch.
        val_size: validation samples.
        test_size: test samples.
        seed: split seed.
        num_workers: DataLoader workers.
    """

    input_shape = (1, 8, 8)
    num_classes = 10
    input_levels = DIGITS_LEVELS

    def __init__(
        self,
        batch_size: int = 64,
        val_size: int = 180,
        test_size: int = 360,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        _check_int("batch_size", batch_size, 1)
        _check_int("num_workers", num_workers, 0)
        self.save_hyperparameters()
        self._splits: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:  # noqa: D102
        if not self._splits:
            hp = self.hparams
            splits = load_digits_splits(hp.val_size, hp.test_size, hp.seed)
            self._splits = {name: TensorDataset(*xy) for name, xy in splits.items()}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        return DataLoader(
            self._splits[split],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
        )

    def train_dataloader(self) -> DataLoader:  # noqa: D102
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:  # noqa: D102
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:  # noqa: D102
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:  # noqa: D102
        return self._loader("test", shuffle=False)
