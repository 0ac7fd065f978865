"""SweepCallback under DDP (2 processes, gloo on CPU) equals one process on the same data."""

import json

import numpy as np
import torch

from lightning_bet.sweeps import sweep

GRID = (0.0, 0.02, 0.1)


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 17, (n, 1, 8, 8), generator=g).float() / 16
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def test_ddp_sweep_sums_counts_over_ranks(tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_bet.callbacks.sweep import SweepCallback
    from lightning_bet.module import BNNClassifier

    torch.manual_seed(0)
    module = BNNClassifier(hidden=(32,))
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    callback = SweepCallback(
        error_rates=GRID, realizations=3, seed=7, every_n_epochs=1, out_dir=str(tmp_path)
    )
    trainer = L.Trainer(
        strategy="ddp_spawn",
        accelerator="cpu",
        devices=2,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.validate(module, loader)  # weights unchanged: the reference below sees the same net
    ddp = json.loads((tmp_path / "sweep_epoch0.json").read_text())
    single = sweep(module, (x, y), GRID, realizations=3, seed=7)
    np.testing.assert_allclose(np.array(ddp["accuracy"]), single.accuracy, rtol=0, atol=1e-12)
    assert ddp["config"]["samples"] == x.shape[0]
    assert ddp["config"]["world_size"] == 2
    # each rank alone saw half of the samples: its own accuracy is not the full-split accuracy
    half = sweep(module, (x[0::2], y[0::2]), GRID, realizations=3, seed=7)
    assert not np.array_equal(half.accuracy, single.accuracy)
