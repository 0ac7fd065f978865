"""Intra-op thread control shared by the metric and the fast sweep evaluator."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["single_torch_thread", "torch_threads"]


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run torch ops with ``threads`` intra-op threads (``None``: as they are), restoring after.

    Yields the previous count.
    """
    previous = torch.get_num_threads()
    change = threads is not None and threads != previous
    try:
        if change:
            torch.set_num_threads(threads)
        yield previous
    finally:
        if change:
            torch.set_num_threads(previous)


@contextmanager
def single_torch_thread() -> Iterator[int]:
    """Run torch ops with one intra-op thread, restoring the previous count after.

    Yields the previous count (the parallelism the caller may use with threads of its own).

    Why: torch's OpenMP pool costs more than it gives for many cheap passes over a few hundred
    thousand values (waking it for each), and for tiny models; its threads also compete with
    native multi-threaded kernels that run right after a parallel op.

    Note: threads that run their first torch op inside this context keep one intra-op thread
    for good (torch initializes a thread's OpenMP setting once); use it for private pools.
    """
    with torch_threads(1) as previous:
        yield previous
