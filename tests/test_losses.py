"""Losses (cross-entropy, MHL, margin cross-entropy) against numpy references; pinned messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from lightning_bet.functional.losses import (
    LOSSES,
    margin_cross_entropy,
    modified_hinge_loss,
    resolve_loss,
)
from lightning_bet.module import BNNClassifier


def logits_and_targets(seed: int = 0, n: int = 9, c: int = 5):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=80.0, size=(n, c))
    z[0, :] = 0.0  # ties at 0
    z[1, 0], z[1, 1] = 128.0, -128.0  # exactly on the hinge for b = 128
    y = rng.integers(0, c, size=n)
    y[1] = 0
    return z, y


def np_cross_entropy(z: np.ndarray, y: np.ndarray) -> float:
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def np_mhl(z: np.ndarray, y: np.ndarray, b: float) -> tuple[float, np.ndarray]:
    n, c = z.shape
    t = -np.ones_like(z)
    t[np.arange(n), y] = 1.0
    slack = b - t * z
    loss = (np.maximum(slack, 0) / b).sum(axis=1) / c
    grad = np.where(slack > 0, -t / b, 0.0) / c / n
    return float(loss.mean()), grad


def np_margin_ce(z: np.ndarray, y: np.ndarray, m: float) -> float:
    shifted = z.copy()
    shifted[np.arange(len(y)), y] -= m
    return np_cross_entropy(shifted, y)


def test_cross_entropy_matches_numpy():
    z, y = logits_and_targets()
    got = resolve_loss("cross_entropy")(torch.from_numpy(z), torch.from_numpy(y))
    assert got.item() == pytest.approx(np_cross_entropy(z, y), rel=1e-12)


@pytest.mark.parametrize("b", [128.0, 1.0, 7.5])
def test_modified_hinge_loss_matches_numpy_with_gradient(b):
    z, y = logits_and_targets(1)
    zt = torch.from_numpy(z).requires_grad_(True)
    got = modified_hinge_loss(zt, torch.from_numpy(y), b)
    want, want_grad = np_mhl(z, y, b)
    assert got.item() == pytest.approx(want, rel=1e-12)
    got.backward()
    np.testing.assert_allclose(zt.grad.numpy(), want_grad, rtol=1e-12, atol=0)
    via_resolve = resolve_loss("mhl", mhl_b=b)(torch.from_numpy(z), torch.from_numpy(y))
    assert via_resolve.item() == pytest.approx(want, rel=1e-12)


def test_modified_hinge_loss_is_zero_beyond_the_target_and_defaults_to_b_128():
    y = torch.tensor([2, 0])
    z = torch.full((2, 3), -200.0)
    z[0, 2] = z[1, 0] = 200.0
    assert modified_hinge_loss(z, y).item() == 0.0
    z, yn = logits_and_targets(2)
    default = modified_hinge_loss(torch.from_numpy(z), torch.from_numpy(yn))
    assert default.item() == pytest.approx(np_mhl(z, yn, 128.0)[0], rel=1e-12)


@pytest.mark.parametrize("m", [0.0, 1.0, 3.5])
def test_margin_cross_entropy_matches_numpy(m):
    z, y = logits_and_targets(3)
    z = z / 40.0
    got = margin_cross_entropy(torch.from_numpy(z), torch.from_numpy(y), m)
    assert got.item() == pytest.approx(np_margin_ce(z, y, m), rel=1e-12)
    via_resolve = resolve_loss("mcel", mcel_margin=m)(torch.from_numpy(z), torch.from_numpy(y))
    assert via_resolve.item() == pytest.approx(np_margin_ce(z, y, m), rel=1e-12)
    if m == 0.0:
        assert got.item() == pytest.approx(
            F.cross_entropy(torch.from_numpy(z), torch.from_numpy(y)).item()
        )


def test_classifier_uses_the_selected_loss():
    torch.manual_seed(0)
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5])
    for loss, reference in (("mhl", np_mhl), ("mcel", np_margin_ce)):
        model = BNNClassifier(loss=loss, mhl_b=16.0, mcel_margin=2.0)
        z = model(x).detach().double().numpy()
        got = model.criterion(model(x), y).item()
        param = 16.0 if loss == "mhl" else 2.0
        want = reference(z, y.numpy(), param)
        want = want[0] if isinstance(want, tuple) else want
        assert got == pytest.approx(want, rel=1e-5)
    assert LOSSES == ("cross_entropy", "mhl", "mcel")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: modified_hinge_loss(torch.zeros(3), torch.zeros(3, dtype=torch.long)),
            r"Expected `logits` of shape \(N, C\), but got \(3,\)",
        ),
        (
            lambda: margin_cross_entropy(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long)),
            r"Expected `target` of shape \(3,\) to match `logits` \(3, 4\), but got \(2,\)",
        ),
        (
            lambda: modified_hinge_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 0.0),
            r"Expected `b` to be a finite float > 0, but got 0.0",
        ),
        (
            lambda: modified_hinge_loss(
                torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), float("nan")
            ),
            r"Expected `b` to be a finite float > 0, but got nan",
        ),
        (
            lambda: modified_hinge_loss(
                torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), float("inf")
            ),
            r"Expected `b` to be a finite float > 0, but got inf",
        ),
        (
            lambda: margin_cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), -1.0),
            r"Expected `m` to be a finite float >= 0, but got -1.0",
        ),
        (
            lambda: resolve_loss("mhl", mhl_b=-2.0),
            r"Expected `mhl_b` to be a finite float > 0, but got -2.0",
        ),
        (
            lambda: resolve_loss("mcel", mcel_margin=float("nan")),
            r"Expected `mcel_margin` to be a finite float >= 0, but got nan",
        ),
        (
            lambda: resolve_loss("hinge"),
            r"Expected `loss` to be one of \['cross_entropy', 'mhl', 'mcel'\], but got 'hinge'",
        ),
        (
            lambda: BNNClassifier(loss="hinge"),
            r"Expected `loss` to be one of \['cross_entropy', 'mhl', 'mcel'\], but got 'hinge'",
        ),
    ],
)
def test_messages(call, message):
    with pytest.raises(ValueError, match=message):
        call()
