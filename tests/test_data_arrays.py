"""Own data: ArrayDataModule (arrays in memory) and IdxFilesDataModule (given IDX files)."""

import gzip

import lightning as L
import numpy as np
import pytest
import torch

from lightning_bet.cli import make_cli
from lightning_bet.data.arrays import ArrayDataModule
from lightning_bet.data.idx import IdxFilesDataModule
from lightning_bet.deploy.cli import integer_test_split
from lightning_bet.module import BNNClassifier
from lightning_bet.resources import recipe_path
from tests.datafiles import exact_inputs, idx_bytes, idx_dataset, indexed_images, labels_for

TRAIN = (indexed_images(30, (28, 28), seed=1), labels_for(30, seed=2))
TEST = (indexed_images(9, (28, 28), seed=3), labels_for(9, seed=4))


def original_indices(dataset) -> list[int]:
    """The index each example of a dataset built from `indexed_images` carries in pixel 0."""
    return (dataset.tensors[0] * 255).round().reshape(len(dataset), -1)[:, 0].long().tolist()


def test_arrays_become_exact_inputs_with_a_seeded_validation_split():
    data = ArrayDataModule(train=TRAIN, test=TEST, val_size=6, seed=3, batch_size=4)
    assert (data.input_shape, data.num_classes, data.input_levels) == ((1, 28, 28), 10, 255)
    val, train = original_indices(data.val_dataset), original_indices(data.train_dataset)
    assert len(val) == 6 and sorted(val + train) == list(range(30))
    again = ArrayDataModule(train=TRAIN, val_size=6, seed=3)
    assert original_indices(again.val_dataset) == val
    assert original_indices(ArrayDataModule(train=TRAIN, val_size=6, seed=4).val_dataset) != val
    inputs, targets = data.test_dataset.tensors
    torch.testing.assert_close(inputs, exact_inputs(TEST[0])[:, None], rtol=0, atol=0)
    assert targets.dtype == torch.int64 and targets.tolist() == TEST[1].tolist()
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (4, 1, 28, 28) and y.shape == (4,)
    assert sum(len(b[0]) for b in data.predict_dataloader()) == 9


def test_arrays_of_other_levels_shapes_and_types():
    images = torch.arange(4 * 3 * 2 * 2).reshape(4, 3, 2, 2) % 17
    data = ArrayDataModule(val=(images, torch.tensor([0, 1, 2, 1])), input_levels=16)
    assert data.input_shape == (3, 2, 2) and data.num_classes == 3
    assert data.train_dataset is None and data.test_dataset is None
    torch.testing.assert_close(data.val_dataset.tensors[0], images.float() / 16)
    with pytest.raises(ValueError, match="ArrayDataModule has no test set"):
        data.test_dataloader()


def test_integer_pixels_are_recovered_for_export():
    data = ArrayDataModule(train=TRAIN, test=TEST, val_size=3)
    _, q, y, levels = integer_test_split(data)
    assert levels == 255 and torch.equal(q[:, 0], torch.from_numpy(TEST[0]).long())
    assert y.tolist() == TEST[1].tolist()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, ValueError, r"Expected at least one of `train`, `val`, `test` to be an \(images, "),
        ({"train": TRAIN[0]}, ValueError, r"Expected `train` to be an \(images, labels\) pair "),
        (
            {"train": (TRAIN[0] / 255.0, TRAIN[1])},
            ValueError,
            r"Expected images of `train` to be integer pixels with shape \(N, 1, 28, 28\), but "
            r"got float64 \(30, 1, 28, 28\)",
        ),
        (
            {"test": TEST, "input_levels": 16},
            ValueError,
            r"Expected images of `test` to be in \[0, 16\] \(`input_levels`\), but found values "
            r"in \[0, 255\]",
        ),
        (
            {"test": (TEST[0], TEST[1][:5])},
            ValueError,
            r"Expected labels of `test` to be integers of shape \(9,\), one per image, but got",
        ),
        (
            {"test": TEST, "num_classes": 2},
            ValueError,
            r"Expected labels of `test` to be in \[0, 2\), but found values in \[1, 9\]",
        ),
        (
            {"train": TRAIN, "test": (TEST[0][:, :27], TEST[1])},
            ValueError,
            r"Expected the images of every split to have one shape, but got \{'train': \(1, 28, "
            r"28\), 'test': \(1, 27, 28\)\}",
        ),
        ({"test": TEST, "val_size": 2}, ValueError, "Expected `val_size` to be 0 without a `tr"),
        ({"train": TRAIN, "val_size": 30}, ValueError, r"`val_size` to be an int in \[0, 30\)"),
        ({"test": TEST, "input_levels": 0}, ValueError, "`input_levels` to be a positive int"),
        ({"test": TEST, "batch_size": 0}, ValueError, "`batch_size` to be a positive int, but"),
        ({"test": TEST, "seed": 1.5}, ValueError, r"Expected `seed` to be an int, but got 1.5"),
    ],
)
def test_array_errors_name_the_argument_and_what_is_valid(kwargs, error, message):
    with pytest.raises(error, match=message):
        ArrayDataModule(**kwargs)


# ----------------------------------------------------------------------------------------------
# IdxFilesDataModule
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def idx_paths(tmp_path):
    paths = {}
    for name, (_, data) in idx_dataset().items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    return paths


def test_idx_files_with_a_custom_split(idx_paths):
    arrays = {name: array for name, (array, _) in idx_dataset().items()}
    data = IdxFilesDataModule(
        train_images=idx_paths["train-images-idx3-ubyte.gz"],
        train_labels=idx_paths["train-labels-idx1-ubyte.gz"],
        val_images=idx_paths["t10k-images-idx3-ubyte.gz"],
        val_labels=idx_paths["t10k-labels-idx1-ubyte.gz"],
        num_classes=10,
    )
    assert data.input_shape == (1, 28, 28) and data.test_dataset is None
    assert len(data.train_dataset) == 20 and len(data.val_dataset) == 7
    expected = exact_inputs(arrays["t10k-images-idx3-ubyte.gz"])[:, None]
    torch.testing.assert_close(data.val_dataset.tensors[0], expected, rtol=0, atol=0)
    assert data.hparams["val_images"] == idx_paths["t10k-images-idx3-ubyte.gz"]


def test_idx_files_read_only_what_is_given(idx_paths, tmp_path):
    data = IdxFilesDataModule(
        test_images=idx_paths["t10k-images-idx3-ubyte.gz"],
        test_labels=idx_paths["t10k-labels-idx1-ubyte.gz"],
        train_images=None,
    )
    assert data.train_dataset is None and len(data.test_dataset) == 7
    with pytest.raises(
        ValueError, match=r"Expected both `train_images` and `train_labels` or neither, but got"
    ):
        IdxFilesDataModule(train_images=idx_paths["train-images-idx3-ubyte.gz"])
    with pytest.raises(
        FileNotFoundError, match=r"Expected `test_labels` to be an existing IDX file, but got"
    ):
        IdxFilesDataModule(test_images=idx_paths["t10k-images-idx3-ubyte.gz"], test_labels="x")
    labels = tmp_path / "bad-labels.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.full(7, 12, np.uint8))))
    with pytest.raises(ValueError, match=r"labels of `test` to be in \[0, 10\), but found"):
        IdxFilesDataModule(
            test_images=idx_paths["t10k-images-idx3-ubyte.gz"], test_labels=labels, num_classes=10
        )


def test_the_cli_links_the_contract_of_an_idx_files_module(idx_paths, tmp_path):
    """input_shape and num_classes reach the model: fit and test through LightningCLI."""
    cli = make_cli(
        [
            "fit",
            "--config",
            str(recipe_path("digits_fcnn")),
            "--data.class_path",
            "lightning_bet.data.idx.IdxFilesDataModule",
            "--data.init_args.train_images",
            str(idx_paths["train-images-idx3-ubyte.gz"]),
            "--data.init_args.train_labels",
            str(idx_paths["train-labels-idx1-ubyte.gz"]),
            "--data.init_args.test_images",
            str(idx_paths["t10k-images-idx3-ubyte.gz"]),
            "--data.init_args.test_labels",
            str(idx_paths["t10k-labels-idx1-ubyte.gz"]),
            "--data.init_args.val_size",
            "4",
            "--data.init_args.num_classes",
            "10",
            "--trainer.fast_dev_run",
            "true",
            "--trainer.accelerator",
            "cpu",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    assert tuple(cli.model.hparams.input_shape) == (1, 28, 28)
    assert cli.model.hparams.num_classes == 10
    (metrics,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    assert 0.0 <= metrics["test/acc"] <= 1.0


def test_a_test_only_array_module_tests_a_model():
    torch.manual_seed(0)
    model = BNNClassifier(input_shape=(1, 28, 28), hidden=(8,))
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    (metrics,) = trainer.test(model, ArrayDataModule(test=TEST, num_classes=10), verbose=False)
    assert 0.0 <= metrics["test/acc"] <= 1.0
