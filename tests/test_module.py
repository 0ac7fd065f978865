import lightning as L
import pytest
import torch

from lightning_bet import BNNClassifier, DigitsDataModule
from lightning_bet.data.digits import load_digits_splits
from lightning_bet.functional.losses import margin_cross_entropy, modified_hinge_loss


def _trainer(**kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**defaults, **kwargs})


def test_latent_weights_stay_clipped_after_every_step():
    torch.manual_seed(0)
    model = BNNClassifier(hidden=[32], lr=5.0)  # a huge step pushes weights far outside [-1, 1]
    seen = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append(
                max(
                    layer.weight.abs().max().item()
                    for layer in [b.layer for b in pl_module.net.blocks]
                    + [pl_module.net.head.layer]
                )
            )

    _trainer(max_steps=5, callbacks=[Spy()]).fit(model, DigitsDataModule(batch_size=32))
    assert len(seen) == 5 and max(seen) <= 1.0
    assert min(seen) == 1.0  # the clip was needed, and it happened in place


def test_trains_digits_to_high_accuracy():
    torch.manual_seed(0)
    model = BNNClassifier(hidden=[64, 64], lr_step_size=5)
    data = DigitsDataModule(batch_size=64)
    trainer = _trainer(max_epochs=8)
    trainer.fit(model, data)
    (metrics,) = trainer.test(model, data, verbose=False)
    assert metrics["test/acc"] >= 0.85


@pytest.mark.parametrize("loss", ["cross_entropy", "mhl", "mcel"])
def test_losses_are_selectable(loss):
    model = BNNClassifier(hidden=[16], loss=loss, mhl_b=4.0, mcel_margin=0.5)
    x, y = load_digits_splits()["val"]
    logits = model(x)
    expected = {
        "cross_entropy": torch.nn.functional.cross_entropy(logits, y),
        "mhl": modified_hinge_loss(logits, y, 4.0),
        "mcel": margin_cross_entropy(logits, y, 0.5),
    }[loss]
    torch.testing.assert_close(model.criterion(logits, y), expected)


def test_checkpoint_round_trip(tmp_path):
    model = BNNClassifier(hidden=[16])
    trainer = _trainer(max_steps=1)
    trainer.fit(model, DigitsDataModule())
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    restored = BNNClassifier.load_from_checkpoint(tmp_path / "m.ckpt")
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(model.eval()(x), restored.eval()(x))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"loss": "l2"},
            "Expected `loss` to be one of \\['cross_entropy', 'mhl', 'mcel'\\], but got 'l2'",
        ),
        ({"lr": 0}, "Expected `lr` to be a float > 0, but got 0"),
        ({"lr_step_size": 0}, "Expected `lr_step_size` to be a positive int, but got 0"),
        ({"loss": "mhl", "mhl_b": -1.0}, "Expected `mhl_b` to be a finite float > 0, but got -1.0"),
        (
            {"loss": "mcel", "mcel_margin": float("nan")},
            "Expected `mcel_margin` to be a finite float >= 0, but got nan",
        ),
    ],
)
def test_bad_module_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BNNClassifier(**kwargs)


def test_digits_split_is_fixed_and_exact():
    a, b = load_digits_splits(seed=0), load_digits_splits(seed=0)
    assert {k: len(v[1]) for k, v in a.items()} == {"test": 360, "val": 180, "train": 1257}
    torch.testing.assert_close(a["test"][0], b["test"][0])
    q = a["train"][0] * 16
    assert torch.equal(q, q.round()) and q.min() == 0 and q.max() == 16
    assert not torch.equal(load_digits_splits(seed=1)["test"][1], a["test"][1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "Expected `batch_size` to be a positive int, but got 0"),
        ({"num_workers": -1}, "Expected `num_workers` to be an int >= 0, but got -1"),
    ],
)
def test_bad_digits_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DigitsDataModule(**kwargs)


def test_digits_split_sizes_validated():
    with pytest.raises(ValueError, match="Expected `val_size \\+ test_size` to be below the 1797"):
        load_digits_splits(val_size=1000, test_size=900)
