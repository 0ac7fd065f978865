"""Fitting under Lightning's DDP strategy (2 CPU processes, gloo).

BatchNorm statistics are per rank on CPU (SyncBatchNorm needs GPUs), so a DDP run is not
bit-identical to one process; it must keep its replicas identical and reach the same accuracy.
"""

import lightning as L
import torch

from lightning_bet import BNNClassifier, DigitsDataModule
from lightning_bet.data.digits import load_digits_splits


class ReplicaCheck(L.Callback):
    """Gathers a checksum of every parameter from all ranks at the end of training."""

    def on_train_end(self, trainer, pl_module):
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        gathered = pl_module.all_gather(flat)
        if trainer.world_size > 1 and not torch.equal(gathered[0], gathered[1]):
            raise RuntimeError("DDP replicas diverged")


def _fit(devices: int, batch_size: int) -> float:
    L.seed_everything(0)
    model = BNNClassifier(hidden=[64, 64], lr_step_size=4)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=6,
        callbacks=[ReplicaCheck()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DigitsDataModule(batch_size=batch_size))
    x, y = load_digits_splits()["test"]
    with torch.no_grad():
        return (model.eval()(x).argmax(1) == y).float().mean().item()


def test_two_process_ddp_fit_matches_one_process():
    single = _fit(devices=1, batch_size=64)
    ddp = _fit(devices=2, batch_size=32)  # the same global batch of 64
    assert single > 0.85 and ddp > 0.85
    assert abs(ddp - single) < 0.05
