"""Intra-op thread control shared by the metric and the fast sweep evaluator."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["single_torch_thread"]


@contextmanager
def single_torch_thread() -> Iterator[int]:
    """Run torch ops with one intra-op thread, restoring the previous count after.

    Yields the previous count (the parallelism the caller may use with threads of its own).

    Why: torch's OpenMP pool costs more than it gives for many cheap passes over a few hundred
    thousand values (waking it for each), and its threads keep spinning for a while after a
    parallel op, slowing any native multi-threaded kernel that runs right after.

    Note: threads that run their first torch op inside this context keep one intra-op thread
    for good (torch initializes a thread's OpenMP setting once); use it for private pools.
    """
    threads = torch.get_num_threads()
    try:
        if threads != 1:
            torch.set_num_threads(1)
        yield threads
    finally:
        if threads != 1:
            torch.set_num_threads(threads)
