import gzip
import io
import re
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from lightning_bet.data._files import (
    RESOURCES,
    DatasetFilesNotFoundError,
    StandardImageDataModule,
    ensure_files,
)
from lightning_bet.data.cifar import CIFAR10DataModule
from lightning_bet.data.idx import FashionMNISTDataModule, MNISTDataModule, read_idx
from lightning_bet.module import BNNClassifier
from tests.datafiles import (
    CIFAR_BATCH,
    CIFAR_TEST,
    N_TEST,
    N_TRAIN,
    cifar_batches,
    cifar_tarball,
    exact_inputs,
    idx_bytes,
    idx_dataset,
    labels_for,
    md5,
    use_md5s,
    write_files,
)

IDX_MODULES = [MNISTDataModule, FashionMNISTDataModule]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def offline(request, timeout=None):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)


@pytest.fixture
def idx_files(monkeypatch):
    dataset = idx_dataset()
    contents = {name: data for name, (_, data) in dataset.items()}
    for name in ("MNIST", "FashionMNIST"):
        use_md5s(monkeypatch, name, contents)
    return dataset


@pytest.fixture
def cifar_files(monkeypatch, tmp_path):
    batches = cifar_batches()
    data = cifar_tarball(batches)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(data)
    use_md5s(monkeypatch, "CIFAR10", {"cifar-10-python.tar.gz": data})
    return batches


def traced_examples(dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Original indices, uint8 pixels and labels of a dataset built from `indexed_images`."""
    inputs, targets = dataset.tensors
    pixels = (inputs * 255).round().to(torch.uint8).numpy()
    indices = pixels.reshape(len(pixels), -1)[:, 0].astype(np.int64)
    return indices, pixels, targets.numpy()


# ----------------------------------------------------------------------------------------------
# read_idx
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-3, 0, 70000], dtype=np.int32),
        np.array([[1.5, -2.25]], dtype=np.float32),
    ],
)
def test_read_idx_round_trips(tmp_path, array, compress):
    data = idx_bytes(array)
    path = tmp_path / "file.idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    loaded = read_idx(path)
    assert loaded.dtype == array.dtype and loaded.dtype.isnative
    np.testing.assert_array_equal(loaded, array)
    assert loaded.flags.writeable


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda data: data[:-1], r"is truncated: .* \(24 bytes of data\), but only 23 bytes"),
        (lambda data: data[:10], r"is truncated: its header declares 3 dimensions"),
        (lambda data: data[:2], r"is truncated: expected a 4-byte magic number"),
        (lambda data: data + b"\0", r"is corrupt: .* but 25 bytes follow"),
        (lambda data: b"\x01" + data[1:], r"is not an IDX file"),
        (lambda data: data[:2] + b"\x0a" + data[3:], r"unknown dtype code 0x0A"),
        (lambda data: data[:3] + b"\x00" + data[4:], r"declares 0 dimensions"),
        (lambda data: gzip.compress(data)[:-9], r"Gzip file .* is corrupt or truncated"),
    ],
)
def test_read_idx_rejects_corrupt_files(tmp_path, corrupt, message):
    path = tmp_path / "images.idx"
    path.write_bytes(corrupt(idx_bytes(np.zeros((2, 3, 4), dtype=np.uint8))))
    with pytest.raises(ValueError, match=message) as error:
        read_idx(path)
    assert str(path) in str(error.value)


# ----------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module_class", IDX_MODULES)
@pytest.mark.parametrize("layout", ["raw", "flat"])
def test_idx_module_loads_exact_pixels(tmp_path, idx_files, module_class, layout):
    raw_dir = tmp_path / module_class.dataset_name / "raw"
    write_files(raw_dir if layout == "raw" else tmp_path, {n: d for n, (_, d) in idx_files.items()})
    module = module_class(data_dir=tmp_path, batch_size=8, val_size=5, download=False)
    module.prepare_data()
    module.setup()

    assert (module.input_shape, module.num_classes, module.input_levels) == ((1, 28, 28), 10, 255)
    test_images, _ = idx_files["t10k-images-idx3-ubyte.gz"]
    test_labels, _ = idx_files["t10k-labels-idx1-ubyte.gz"]
    inputs, targets = module.test_dataset.tensors
    assert inputs.dtype == torch.float32 and inputs.shape == (N_TEST, 1, 28, 28)
    assert targets.dtype == torch.int64
    assert torch.equal(inputs, exact_inputs(test_images[:, None]))
    assert torch.equal(targets, torch.from_numpy(test_labels.astype(np.int64)))

    train_images, _ = idx_files["train-images-idx3-ubyte.gz"]
    train_labels, _ = idx_files["train-labels-idx1-ubyte.gz"]
    indices = []
    for dataset in (module.train_dataset, module.val_dataset):
        index, pixels, labels = traced_examples(dataset)
        np.testing.assert_array_equal(pixels[:, 0], train_images[index])
        np.testing.assert_array_equal(labels, train_labels[index])
        indices.append(index)
    assert (len(indices[0]), len(indices[1])) == (N_TRAIN - 5, 5)
    assert sorted(np.concatenate(indices)) == list(range(N_TRAIN))


def test_idx_split_is_deterministic_in_seed(tmp_path, idx_files):
    write_files(tmp_path, {n: d for n, (_, d) in idx_files.items()})

    def val_indices(seed: int) -> list[int]:
        module = MNISTDataModule(data_dir=tmp_path, val_size=6, seed=seed, download=False)
        module.setup("fit")
        assert module.test_dataset is None
        return traced_examples(module.val_dataset)[0].tolist()

    assert val_indices(3) == val_indices(3)
    assert val_indices(3) != val_indices(4)


def test_dataloaders_set_up_on_demand_and_yield_batches(tmp_path, idx_files):
    write_files(tmp_path, {n: d for n, (_, d) in idx_files.items()})
    module = FashionMNISTDataModule(data_dir=tmp_path, batch_size=4, val_size=5, download=False)
    inputs, targets = next(iter(module.train_dataloader()))
    assert inputs.shape == (4, 1, 28, 28) and targets.shape == (4,)
    assert sum(len(batch[0]) for batch in module.val_dataloader()) == 5
    assert sum(len(batch[0]) for batch in module.test_dataloader()) == N_TEST
    assert sum(len(batch[0]) for batch in module.predict_dataloader()) == N_TEST


def test_val_size_larger_than_training_set_fails_in_setup(tmp_path, idx_files):
    write_files(tmp_path, {n: d for n, (_, d) in idx_files.items()})
    module = MNISTDataModule(data_dir=tmp_path, val_size=N_TRAIN, download=False)
    with pytest.raises(ValueError, match=r"Expected `val_size` to be an int in \[0, 20\)"):
        module.setup("fit")


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (labels_for(3, seed=0), r"train-labels-idx1-ubyte.gz to hold 20 uint8 labels"),
        (np.full(N_TRAIN, 10, np.uint8), r"MNIST train set to be in \[0, 10\), but .* \[10, 10\]"),
    ],
)
def test_bad_labels_are_rejected(tmp_path, idx_files, monkeypatch, labels, message):
    contents = {n: d for n, (_, d) in idx_files.items()}
    contents["train-labels-idx1-ubyte.gz"] = gzip.compress(idx_bytes(labels))
    use_md5s(monkeypatch, "MNIST", contents)
    write_files(tmp_path, contents)
    module = MNISTDataModule(data_dir=tmp_path, val_size=1, download=False)
    with pytest.raises(ValueError, match=message):
        module.setup("fit")


def test_checksum_mismatch_names_file_and_checksums(tmp_path, idx_files, monkeypatch):
    write_files(tmp_path, {n: d for n, (_, d) in idx_files.items()})
    resources = list(RESOURCES["MNIST"])
    resources[0] = replace(resources[0], md5="0" * 32)
    monkeypatch.setitem(RESOURCES, "MNIST", tuple(resources))
    actual = md5(idx_files["train-images-idx3-ubyte.gz"][1])
    module = MNISTDataModule(data_dir=tmp_path, download=True)
    expected_message = (
        rf"Checksum mismatch for .*train-images-idx3-ubyte\.gz: expected md5 0{{32}}, "
        rf"but got {actual}\. .*delete it and download it again"
    )
    with pytest.raises(ValueError, match=expected_message):
        module.prepare_data()


@pytest.mark.parametrize("module_class", IDX_MODULES)
def test_missing_files_without_download_name_files_dirs_and_urls(tmp_path, module_class):
    module = module_class(data_dir=tmp_path, download=False)
    raw_dir = tmp_path / module_class.dataset_name / "raw"
    with pytest.raises(FileNotFoundError, match=r"Missing dataset file\(s\): train-images") as info:
        module.prepare_data()
    message = str(info.value)
    assert isinstance(info.value, DatasetFilesNotFoundError)
    assert f"Looked in: {raw_dir}, {tmp_path}." in message
    assert "`download=True`" in message
    for resource in RESOURCES[module_class.dataset_name]:
        assert resource.filename in info.value.missing
        assert resource.filename in message
        assert all(url in message for url in resource.urls)


def test_setup_without_files_raises_not_found(tmp_path):
    module = MNISTDataModule(data_dir=tmp_path, download=True)
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz"):
        module.setup("test")


@pytest.mark.parametrize("download", [False, True])
def test_the_test_files_alone_are_enough_to_test(tmp_path, idx_files, download):
    test_files = {n: d for n, (_, d) in idx_files.items() if n.startswith("t10k")}
    write_files(tmp_path / "FashionMNIST" / "raw", test_files)
    module = FashionMNISTDataModule(data_dir=tmp_path, download=download)
    module.prepare_data()  # offline: the training files cannot be had, the test files can
    torch.manual_seed(0)
    model = BNNClassifier(input_shape=(1, 28, 28), hidden=(8,))
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    (metrics,) = trainer.test(model, module, verbose=False)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and len(module.test_dataset) == N_TEST
    assert module.train_dataset is None
    with pytest.raises(
        DatasetFilesNotFoundError, match=r"Missing dataset file\(s\): train-"
    ) as info:
        module.setup("fit")
    assert info.value.missing == ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
    if download:  # why the download failed travels with the error
        assert "network disabled in tests" in str(info.value.__cause__)


def test_a_failed_download_leaves_no_empty_folders(tmp_path):
    module = FashionMNISTDataModule(data_dir=tmp_path / "data", download=True)
    with pytest.raises(DatasetFilesNotFoundError, match="Downloading failed"):
        module.prepare_data()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "data").mkdir()
    with pytest.raises(DatasetFilesNotFoundError, match="Downloading failed"):
        module.prepare_data()
    assert list(tmp_path.iterdir()) == [tmp_path / "data"]  # a folder it did not create stays
    assert list((tmp_path / "data").iterdir()) == []


# ----------------------------------------------------------------------------------------------
# Downloads (served from memory)
# ----------------------------------------------------------------------------------------------


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def serve(monkeypatch, files_by_url: dict[str, bytes]) -> list[str]:
    """Serve `files_by_url` through `urllib.request.urlopen`; return the URLs requested."""
    requested: list[str] = []

    def fake_urlopen(request, timeout=None):
        requested.append(request.full_url)
        if request.full_url not in files_by_url:
            raise urllib.error.HTTPError(request.full_url, 404, "Not Found", {}, None)
        return FakeResponse(files_by_url[request.full_url])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return requested


def test_download_falls_back_to_next_mirror_and_verifies(tmp_path, idx_files, monkeypatch):
    resources = RESOURCES["MNIST"]
    # The first mirror is down; the second serves every file.
    requested = serve(monkeypatch, {res.urls[1]: idx_files[res.filename][1] for res in resources})
    module = MNISTDataModule(data_dir=tmp_path, val_size=2)
    module.prepare_data()

    raw_dir = tmp_path / "MNIST" / "raw"
    assert sorted(path.name for path in raw_dir.iterdir()) == sorted(r.filename for r in resources)
    assert requested == [url for res in resources for url in res.urls[:2]]
    module.setup()
    assert len(module.train_dataset) == N_TRAIN - 2 and len(module.test_dataset) == N_TEST

    requested.clear()
    module.prepare_data()
    assert requested == [], "verified files must not be downloaded again"


@pytest.mark.parametrize("served", ["nothing", "wrong bytes"])
def test_failed_download_lists_failures_and_leaves_no_partial_files(tmp_path, served, monkeypatch):
    resource = RESOURCES["CIFAR10"][0]
    serve(monkeypatch, {} if served == "nothing" else {resource.urls[0]: b"not an archive"})
    module = CIFAR10DataModule(data_dir=tmp_path, download=True)
    expected = "HTTP Error 404" if served == "nothing" else "Checksum mismatch"
    with pytest.raises(DatasetFilesNotFoundError, match="Downloading failed") as info:
        module.prepare_data()
    assert expected in str(info.value)
    assert f"cifar-10-python.tar.gz: {resource.urls[0]}" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_ensure_files_without_network(tmp_path):
    with pytest.raises(DatasetFilesNotFoundError, match="network disabled in tests"):
        ensure_files(tmp_path / "sub", RESOURCES["FashionMNIST"], download=True)


# ----------------------------------------------------------------------------------------------
# CIFAR-10
# ----------------------------------------------------------------------------------------------


def test_cifar_loads_exact_pixels(tmp_path, cifar_files):
    module = CIFAR10DataModule(data_dir=tmp_path, batch_size=3, val_size=4, download=False)
    module.prepare_data()
    module.setup()

    assert (module.input_shape, module.num_classes, module.input_levels) == ((3, 32, 32), 10, 255)
    inputs, targets = module.test_dataset.tensors
    test = cifar_files["test_batch"]
    assert inputs.dtype == torch.float32 and inputs.shape == (CIFAR_TEST, 3, 32, 32)
    assert torch.equal(inputs, exact_inputs(test[b"data"].reshape(-1, 3, 32, 32)))
    assert targets.dtype == torch.int64 and targets.tolist() == test[b"labels"]

    train_batches = [cifar_files[f"data_batch_{i}"] for i in range(1, 6)]
    all_images = np.concatenate([batch[b"data"] for batch in train_batches])
    all_labels = np.concatenate([batch[b"labels"] for batch in train_batches])
    indices = []
    for dataset in (module.train_dataset, module.val_dataset):
        index, pixels, labels = traced_examples(dataset)
        np.testing.assert_array_equal(pixels.reshape(len(pixels), -1), all_images[index])
        np.testing.assert_array_equal(labels, all_labels[index])
        indices.append(index)
    assert (len(indices[0]), len(indices[1])) == (5 * CIFAR_BATCH - 4, 4)
    assert sorted(np.concatenate(indices)) == list(range(5 * CIFAR_BATCH))


def _write_cifar(monkeypatch, directory: Path, data: bytes) -> CIFAR10DataModule:
    (directory / "cifar-10-python.tar.gz").write_bytes(data)
    use_md5s(monkeypatch, "CIFAR10", {"cifar-10-python.tar.gz": data})
    return CIFAR10DataModule(data_dir=directory, val_size=1, download=False)


def test_cifar_truncated_archive(tmp_path, monkeypatch):
    data = cifar_tarball(cifar_batches())
    module = _write_cifar(monkeypatch, tmp_path, data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"CIFAR-10 archive .* is corrupt or truncated"):
        module.setup("fit")


def test_cifar_archive_missing_batch(tmp_path, monkeypatch):
    batches = cifar_batches()
    del batches["data_batch_3"]
    module = _write_cifar(monkeypatch, tmp_path, cifar_tarball(batches))
    with pytest.raises(ValueError, match=r"lacks the member\(s\) cifar-10-batches-py/data_batch_3"):
        module.setup("fit")
    module.setup("test")
    assert len(module.test_dataset) == CIFAR_TEST


@pytest.mark.parametrize(
    ("bad_batch", "message"),
    [
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"shape \(n, 3072\)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, r"2 integer b'labels'"),
        ({b"labels": [0]}, r"keys b'data' and b'labels'"),
        ([1, 2], r"should hold a dict, but holds list"),
        (b"\x80\x04junk", r"could not be unpickled"),
    ],
)
def test_cifar_malformed_batch(tmp_path, monkeypatch, bad_batch, message):
    batches = cifar_batches()
    batches["test_batch"] = bad_batch
    module = _write_cifar(monkeypatch, tmp_path, cifar_tarball(batches))
    with pytest.raises(ValueError, match=message) as info:
        module.setup("test")
    assert "test_batch" in str(info.value)


# ----------------------------------------------------------------------------------------------
# Arguments and resource table
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module_class", [*IDX_MODULES, CIFAR10DataModule])
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "Expected `batch_size` to be a positive int, but got 0"),
        ({"batch_size": True}, "Expected `batch_size` to be a positive int, but got True"),
        ({"batch_size": 2.0}, "Expected `batch_size` to be a positive int, but got 2.0"),
        ({"val_size": -1}, r"Expected `val_size` to be an int in \[0, \d+\) .* but got -1"),
        ({"val_size": 60000}, r"Expected `val_size` to be an int in \[0, \d+\)"),
        ({"num_workers": -1}, "Expected `num_workers` to be a non-negative int, but got -1"),
        ({"seed": "0"}, "Expected `seed` to be an int, but got '0'"),
        ({"download": "yes"}, "Expected `download` to be a bool, but got 'yes'"),
        ({"data_dir": None}, "Expected `data_dir` to be a str or path, but got None"),
    ],
)
def test_constructor_validates_arguments(module_class, kwargs, message):
    with pytest.raises(ValueError, match=message):
        module_class(**kwargs)


def test_constructor_stores_hyperparameters(tmp_path):
    module = CIFAR10DataModule(data_dir=tmp_path, batch_size=32, val_size=100, seed=7)
    assert module.hparams["batch_size"] == 32 and module.hparams["seed"] == 7
    assert isinstance(module, StandardImageDataModule)


@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST", "CIFAR10"])
def test_resource_table_is_well_formed(name):
    for resource in RESOURCES[name]:
        assert re.fullmatch(r"[0-9a-f]{32}", resource.md5)
        assert resource.urls and all(url.endswith("/" + resource.filename) for url in resource.urls)
        assert any(url.startswith("https://") for url in resource.urls)
