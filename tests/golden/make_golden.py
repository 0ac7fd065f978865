"""Regenerate the golden bitstream of a tiny deploy-mode model.

Run from the repository root: ``python tests/golden/make_golden.py``. ``tiny.bet`` is the
bitstream and ``tiny.hex`` its hex dump (so that any byte change shows in review);
``tests/test_bitstream.py`` checks that regenerating gives identical bytes.

The model has odd shapes on purpose: 13 integer pixels (one word per row, 19 padding bits),
37 hidden neurons (2 words per output row and 2 direction words, 27 padding bits), 3 classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightning_bet.deploy.bitstream import write_bitstream
from lightning_bet.deploy.model import DeployLayer, DeployModel

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


def hex_dump(data: bytes) -> str:
    """``offset: 16 hex bytes`` lines."""
    lines = [
        f"{offset:06x}: " + " ".join(f"{b:02x}" for b in data[offset : offset + 16])
        for offset in range(0, len(data), 16)
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Write ``tiny.bet`` and ``tiny.hex`` beside this file."""
    data = write_bitstream(tiny_model())
    (HERE / "tiny.bet").write_bytes(data)
    (HERE / "tiny.hex").write_text(hex_dump(data))


if __name__ == "__main__":
    main()
