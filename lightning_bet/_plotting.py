"""Lazy access to matplotlib for the figures the library writes."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on a headless backend, unless the user chose a backend already.

    Imported on first use, so that ``import lightning_bet`` stays light.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt
