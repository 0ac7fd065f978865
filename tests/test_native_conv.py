"""The native convolution kernels against a float64 torch reference (deploy-mode semantics)."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from lightning_bet.native import get_library


def _pack_hwc(bits: np.ndarray) -> np.ndarray:
    """Bool ``(N, H, W, C)`` (True = -1) -> uint64 ``(N, H, W, ceil(C / 64))``."""
    *lead, channels = bits.shape
    words = -(-channels // 64)
    padded = np.zeros((*lead, words * 64), dtype=bool)
    padded[..., :channels] = bits
    return np.packbits(padded, axis=-1, bitorder="little").view("<u8").astype(np.uint64)


def _reference(v, weight, t, d, stride, padding, pool):
    """Packed output signs of conv (zero padding) -> max-pool -> ``d (a - t) >= 0``."""
    a = F.conv2d(
        torch.from_numpy(v), torch.from_numpy(weight.astype(np.float64)), None, stride, padding
    )
    if pool > 1:
        a = F.max_pool2d(a, pool)
    d64 = torch.from_numpy(d.astype(np.float64)).view(-1, 1, 1)
    t64 = torch.from_numpy(t.astype(np.float64)).view(-1, 1, 1)
    positive = d64 * (a - t64) >= 0
    return _pack_hwc((~positive).permute(0, 2, 3, 1).numpy())


GEOMETRIES = [  # C_in, C_out, H, k, stride, padding, pool
    (64, 64, 14, 3, 1, 1, 2),  # VGG3's second block
    (1, 64, 28, 3, 1, 1, 2),  # VGG3's first block
    (3, 70, 9, 3, 2, 1, 1),  # strided, two output words
    (130, 5, 7, 5, 1, 2, 1),  # three input words, wide padding
    (2, 3, 11, 2, 1, 1, 3),  # even kernel, pool 3
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "-".join(map(str, g)))
def test_conv_sign_matches_float64_reference(geometry):
    cin, cout, size, k, stride, padding, pool = geometry
    rng = np.random.default_rng(sum(geometry))
    lib = get_library()
    weight = rng.choice(np.array([-1, 1], dtype=np.int8), size=(cout, cin, k, k))
    d = rng.choice(np.array([-1, 1], dtype=np.int8), size=cout)
    n = cin * k * k
    # binary inputs: thresholds around the reachable range, ends included
    t = rng.integers(-n // 3, n // 3 + 1, size=cout).astype(np.int32)
    t[:2] = (-n - 1, n + 1)
    bits = rng.random((9, cin, size, size)) < 0.5
    got = lib.conv_sign(
        _pack_hwc(bits.transpose(0, 2, 3, 1)),
        _pack_hwc(weight.transpose(0, 2, 3, 1) < 0),
        t,
        d,
        channels=cin,
        stride=stride,
        padding=padding,
        pool=pool,
    )
    want = _reference(np.where(bits, -1.0, 1.0), weight, t, d, stride, padding, pool)
    np.testing.assert_array_equal(got, want)
    # integer pixels q in [0, 255], zeros included
    q = rng.integers(0, 256, size=(9, cin, size, size))
    q[0] = 0
    t = rng.integers(-60 * n, 60 * n + 1, size=cout).astype(np.int32)
    got = lib.conv_sign(
        q.astype(np.int16),
        weight,
        t,
        d,
        channels=cin,
        stride=stride,
        padding=padding,
        pool=pool,
        threads=2,
    )
    np.testing.assert_array_equal(
        got, _reference(q.astype(np.float64), weight, t, d, *geometry[4:])
    )


def test_conv_sign_rejects_bad_arguments():
    lib = get_library()
    x = np.zeros((2, 6, 6, 1), dtype=np.uint64)
    w = np.zeros((4, 3, 3, 1), dtype=np.uint64)
    t, d = np.zeros(4, dtype=np.int32), np.ones(4, dtype=np.int8)
    with pytest.raises(TypeError, match="x must be a 4-D numpy uint64 or int16 array"):
        lib.conv_sign(x.astype(np.float32), w, t, d, channels=3)
    with pytest.raises(TypeError, match="weight must be a 4-D numpy int8 array for int16 inputs"):
        lib.conv_sign(x.astype(np.int16), w, t, d, channels=1)
    with pytest.raises(ValueError, match=r"do not fit channels=65: expected x \(batch, H, W, 2\)"):
        lib.conv_sign(x, w, t, d, channels=65)
    with pytest.raises(ValueError, match=r"directions must have shape \(4,\)"):
        lib.conv_sign(x, w, t, d[:3], channels=3)
    with pytest.raises(ValueError, match="pool 4 does not fit 6x6 inputs"):
        lib.conv_sign(x, w, t, d, channels=3, padding=1, pool=4)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "integer"])
def test_conv_sign_channel_subset_keeps_the_other_bits_of_base(binary):
    rng = np.random.default_rng(5)
    lib = get_library()
    cin, cout, k = (70, 80, 3) if binary else (2, 80, 3)
    w_a = rng.choice(np.array([-1, 1], dtype=np.int8), size=(cout, cin, k, k))
    w_b = w_a.copy()
    subset = np.array([0, 3, 64, 79], dtype=np.int32)  # both output words
    w_b[subset] = -w_b[subset]
    t = rng.integers(-20, 21, size=cout).astype(np.int32)
    d = rng.choice(np.array([-1, 1], dtype=np.int8), size=cout)
    if binary:
        x = _pack_hwc(rng.random((5, 9, 9, cin)) < 0.5)

        def weights(w):
            return _pack_hwc(w.transpose(0, 2, 3, 1) < 0)
    else:
        x = rng.integers(0, 256, size=(5, cin, 9, 9)).astype(np.int16)

        def weights(w):
            return w

    kw = dict(channels=cin, padding=1, pool=3)
    full_a = lib.conv_sign(x, weights(w_a), t, d, **kw)
    full_b = lib.conv_sign(x, weights(w_b), t, d, **kw)
    assert not np.array_equal(full_a, full_b)
    got = lib.conv_sign(
        x, weights(w_b[subset]), t[subset], d[subset], channel_index=subset, base=full_a, **kw
    )
    np.testing.assert_array_equal(got, full_b)
    with pytest.raises(
        ValueError, match=r"channel_index must hold 4 output channels in \[0, 128\)"
    ):
        lib.conv_sign(
            x, weights(w_b[subset]), t[subset], d[subset], channel_index=subset + 100,
            base=full_a, **kw,
        )  # fmt: skip
    with pytest.raises(ValueError, match="base must be a numpy uint64 array of shape"):
        lib.conv_sign(x, weights(w_b[subset]), t[subset], d[subset], channel_index=subset, **kw)
    with pytest.raises(ValueError, match="base is only used with channel_index"):
        lib.conv_sign(x, weights(w_a), t, d, base=full_a, **kw)
