"""Regenerate the golden bitstream of a tiny deploy-mode model.

Run from the repository root: ``python tests/golden/make_golden.py``. ``tiny.bet`` is the
bitstream and ``tiny.hex`` its hex dump (so that any byte change shows in review);
``tests/test_bitstream.py`` checks that regenerating gives identical bytes.

The model has odd shapes on purpose: 13 integer pixels (one word per row, 19 padding bits),
37 hidden neurons (2 words per output row and 2 direction words, 27 padding bits), 3 classes.

``tiny_conv.bet`` / ``tiny_conv.hex`` are the format-v2 example: a 1x6x6 input, a 3x3 conv
(padding 1, 2x2 max-pool) to 3x3x3, a 2x2 conv (stride 2, padding 1) to 2x2x2, and a dense output
layer of 3 classes. Each conv layer's kernels are one bit vector (27 and 24 bits: one word each,
5 and 8 padding bits).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightning_bet.deploy.bitstream import write_bitstream
from lightning_bet.deploy.model import DeployConv, DeployLayer, DeployModel

HERE = Path(__file__).resolve().parent


def tiny_model() -> DeployModel:
    """A deterministic 13-37-3 deploy-mode model (levels 16, scale 0.25)."""
    rng = np.random.default_rng(20260101)
    w0 = np.where(rng.random((37, 13)) < 0.5, -1, 1).astype(np.int8)
    t0 = rng.integers(-60, 61, size=37).astype(np.int64)
    d0 = np.where(rng.random(37) < 0.3, -1, 1).astype(np.int8)
    w1 = np.where(rng.random((3, 37)) < 0.5, -1, 1).astype(np.int8)
    return DeployModel(
        layers=(
            DeployLayer(weight=w0, threshold=t0, direction=d0, binary_input=False),
            DeployLayer(weight=w1, threshold=None, direction=None, binary_input=True),
        ),
        input_levels=16,
        scale=0.25,
        input_shape=(1, 13),
    )


def tiny_conv_model() -> DeployModel:
    """A deterministic 1x6x6 -> C3 (3x3, p1, MP2) -> C2 (2x2, s2, p1) -> 3 model (levels 16)."""
    rng = np.random.default_rng(20261203)

    def signs(*shape: int) -> np.ndarray:
        return np.where(rng.random(shape) < 0.5, -1, 1).astype(np.int8)

    conv0 = DeployConv(
        weight=signs(3, 1, 3, 3),
        threshold=rng.integers(-40, 41, size=3).astype(np.int64),
        direction=np.array([1, -1, 1], np.int8),
        in_shape=(1, 6, 6),
        stride=1,
        padding=1,
        pool=2,
        binary_input=False,
    )
    conv1 = DeployConv(
        weight=signs(2, 3, 2, 2),
        threshold=np.array([-1, 2], np.int64),
        direction=np.array([-1, 1], np.int8),
        in_shape=(3, 3, 3),
        stride=2,
        padding=1,
        pool=1,
        binary_input=True,
    )
    out = DeployLayer(weight=signs(3, 8), threshold=None, direction=None, binary_input=True)
    return DeployModel((conv0, conv1, out), input_levels=16, scale=0.5, input_shape=(1, 6, 6))


def hex_dump(data: bytes) -> str:
    """``offset: 16 hex bytes`` lines."""
    lines = [
        f"{offset:06x}: " + " ".join(f"{b:02x}" for b in data[offset : offset + 16])
        for offset in range(0, len(data), 16)
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Write ``tiny.bet`` / ``tiny.hex`` and ``tiny_conv.bet`` / ``tiny_conv.hex`` here."""
    for name, model in (("tiny", tiny_model()), ("tiny_conv", tiny_conv_model())):
        data = write_bitstream(model)
        (HERE / f"{name}.bet").write_bytes(data)
        (HERE / f"{name}.hex").write_text(hex_dump(data))


if __name__ == "__main__":
    main()
