"""RRAM fault models with exact, sparse sampling (METHOD §2).

A stored weight is one bit: bit 0 = +1, bit 1 = -1. A :class:`FaultModel` says how bits read
wrong: symmetric flips (``p``), asymmetric flips (``p01``: a stored 0 reads 1; ``p10``: a stored 1
reads 0) and stuck-at cells (fractions reading a fixed 0 or 1). :func:`sample_fault_indices`
returns the flat positions whose *read* value differs from the stored one; training, sweeps and
the bitstream emulator all use it, so one seed gives one fault map everywhere.

Exactness: positions are sampled as a Bernoulli process, by the gaps between them: the number of
positions skipped before the next included one is Geometric(``p``),
``G = floor(log(1 - U) / log(1 - p))`` with ``U`` uniform (float64), and the positions are the
running sums of ``G + 1``. Every position is then included with probability exactly ``p``,
independently of every other position, the result comes out sorted and unique, and the cost grows
with the number of faults (about ``n p`` draws), not with ``n``. (A Binomial count of uniform
positions drawn with replacement would lose the repeats and flip fewer than ``p``; a
Poisson-count set of uniform draws is exact too, but needs a sort to remove the repeats, twice
the time of the gaps at ``p = 0.1``.) Above ``p = 0.25`` a dense ``rand < p`` is cheaper and used.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_bet._validation import check_probability

__all__ = [
    "FaultModel",
    "derive_seed",
    "make_generator",
    "sample_fault_indices",
    "sample_positions",
]

#: Above this probability a dense ``rand < p`` draw is cheaper than sparse sampling.
_DENSE_ABOVE = 0.25


@dataclass(frozen=True)
class FaultModel:
    """How stored bits read wrong. Frozen, validated, and round-trips through ``dict``.

    Args:
        p: symmetric flip probability of every bit. Exclusive with ``p01``/``p10``.
        p01: probability that a stored 0 (+1) reads as 1 (-1).
        p10: probability that a stored 1 (-1) reads as 0 (+1).
        stuck_at_0: fraction of cells that always read 0 (+1).
        stuck_at_1: fraction of cells that always read 1 (-1).

    A stuck cell reads its fixed value whatever was written and whatever flips would do.

    Example:
        >>> FaultModel(p=0.01).flip_rates
        (0.01, 0.01)
        >>> FaultModel(p01=0.02, p10=0.005).flip_rates
        (0.02, 0.005)

    """

    p: float = 0.0
    p01: float | None = None
    p10: float | None = None
    stuck_at_0: float = 0.0
    stuck_at_1: float = 0.0

    def __post_init__(self) -> None:
        for name in ("p", "stuck_at_0", "stuck_at_1"):
            check_probability(name, getattr(self, name))
        for name in ("p01", "p10"):
            value = getattr(self, name)
            if value is not None:
                check_probability(name, value)
        asymmetric = self.p01 is not None or self.p10 is not None
        if asymmetric and self.p != 0.0:
            raise ValueError(
                "Expected either `p` (symmetric flips) or `p01`/`p10` (asymmetric flips), but got "
                f"p={self.p!r}, p01={self.p01!r}, p10={self.p10!r}"
            )
        if self.stuck_at_0 + self.stuck_at_1 > 1.0:
            raise ValueError(
                "Expected `stuck_at_0 + stuck_at_1` to be at most 1, but got "
                f"{self.stuck_at_0!r} + {self.stuck_at_1!r}"
            )

    @property
    def flip_rates(self) -> tuple[float, float]:
        """``(rate for stored 0, rate for stored 1)``."""
        if self.p01 is None and self.p10 is None:
            return self.p, self.p
        return self.p01 or 0.0, self.p10 or 0.0

    @property
    def is_symmetric(self) -> bool:
        """True when the read value does not depend on the stored value's probability."""
        r0, r1 = self.flip_rates
        return r0 == r1 and self.stuck_at_0 == 0.0 and self.stuck_at_1 == 0.0

    @property
    def is_null(self) -> bool:
        """True when no bit can ever read wrong."""
        return self.flip_rates == (0.0, 0.0) and self.stuck_at_0 == 0.0 and self.stuck_at_1 == 0.0

    def to_dict(self) -> dict[str, float | None]:
        """Plain ``dict`` of the arguments (for configs, logs and ``state_dict``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultModel:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"Expected fault model keys among {sorted(cls.__dataclass_fields__)}, but got "
                f"unknown {sorted(unknown)}"
            )
        return cls(**data)


def derive_seed(seed: int, *keys: int | float | str) -> int:
    """A 63-bit seed derived deterministically from ``seed`` and ``keys``.

    Used to seed fault maps by (error rate, realization, layer, rank, ...) so that every model
    and every backend sees the same maps. Floats are keyed by their exact IEEE-754 bits.
    """
    words: list[int] = [int(seed) & 0xFFFFFFFFFFFFFFFF]
    for key in keys:
        if isinstance(key, str):
            words.append(zlib.crc32(key.encode()))
        elif isinstance(key, float):
            words.append(int(np.float64(key).view(np.uint64)))
        else:
            words.append(int(key) & 0xFFFFFFFFFFFFFFFF)
    state = np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0]
    return int(state) & 0x7FFFFFFFFFFFFFFF


def make_generator(
    seed: int, *keys: int | float | str, device: str | torch.device = "cpu"
) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`derive_seed` of the arguments."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, *keys))
    return generator


def sample_positions(numel: int, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Sorted unique positions in ``[0, numel)``, each one included with probability ``p``.

    Inclusions are independent across positions.

    Args:
        numel: number of positions.
        p: inclusion probability in [0, 1].
        generator: random source; the result lives on its device (CPU by default), so a CPU
            generator gives the same positions whatever device the weights are on.

    Returns:
        int64 tensor ``(K,)``, sorted ascending, ``E[K] = numel * p``.

    """
    p = check_probability("p", p)
    device = generator.device if generator is not None else torch.device("cpu")
    if numel <= 0 or p == 0.0:
        return torch.empty(0, dtype=torch.long, device=device)
    if p == 1.0:
        return torch.arange(numel, device=device)
    if p > _DENSE_ABOVE:
        hit = torch.rand(numel, generator=generator, device=device) < p
        return hit.nonzero().flatten()
    return _bernoulli_process(numel, p, generator, device)


def _bernoulli_process(
    numel: int, p: float, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Positions of a Bernoulli(``p``) process on ``[0, numel)`` from Geometric gaps (float64)."""
    log_q = math.log1p(-p)
    chunks = []
    last = -1.0  # the last included position so far
    while True:
        remaining = numel - 1 - last
        k = int(remaining * p + 6.0 * math.sqrt(remaining * p * (1.0 - p)) + 16)
        u = torch.rand(k, generator=generator, device=device, dtype=torch.float64)
        # one buffer, updated in place: u -> G + 1 (G ~ Geometric(p)) -> positions (exact
        # integers in float64 up to 2**53)
        positions = u.neg_().log1p_().div_(log_q).floor_().add_(1.0).cumsum_(0).add_(last)
        last = float(positions[-1])
        # sorted ascending: the positions inside [0, numel) are a prefix
        inside = int(torch.searchsorted(positions, torch.tensor([float(numel)], device=device)))
        if device.type == "cpu":
            # int64 in the same memory (an elementwise copy reads every element before it
            # writes it): fresh CPU allocations of this size cost ~1,600 page faults per draw
            chunks.append(positions.view(torch.int64)[:inside].copy_(positions[:inside]))
        else:
            chunks.append(positions[:inside].long())
        if last >= numel:  # almost always after the first chunk (6 standard deviations)
            break
    return torch.cat(chunks) if len(chunks) > 1 else chunks[0]


def sample_fault_indices(
    stored: Tensor, model: FaultModel, generator: torch.Generator | None = None
) -> Tensor:
    """Flat indices of ``stored`` whose read value differs from the stored value.

    Args:
        stored: the stored binary weights, any shape; ``>= 0`` means bit 0 (+1), ``< 0`` bit 1
            (-1). Only its size matters for symmetric flips.
        model: the fault model.
        generator: random source (see :func:`sample_positions`).

    Returns:
        int64 tensor ``(K,)`` of sorted unique flat indices, on ``stored.device``. Negating
        ``stored.flatten()`` at these indices gives what the faulty memory reads.

    """
    numel = stored.numel()
    r0, r1 = model.flip_rates
    if r0 == r1:
        flips = sample_positions(numel, r0, generator)
        bits = None
    else:
        bits = (stored.detach().flatten() < 0).to(_sample_device(generator))
        cand0 = sample_positions(numel, r0, generator)
        cand1 = sample_positions(numel, r1, generator)
        flips = torch.cat([cand0[~bits[cand0]], cand1[bits[cand1]]]).sort().values
    stuck_fraction = model.stuck_at_0 + model.stuck_at_1
    if stuck_fraction > 0:
        if bits is None:
            bits = (stored.detach().flatten() < 0).to(flips.device)
        stuck = sample_positions(numel, stuck_fraction, generator)
        u = torch.rand(stuck.numel(), generator=generator, device=stuck.device, dtype=torch.float64)
        stuck_bit = u >= model.stuck_at_0 / stuck_fraction  # False: stuck at 0, True: at 1
        wrong_stuck = stuck[stuck_bit != bits[stuck]]
        flips = flips[~torch.isin(flips, stuck)]
        flips = torch.cat([flips, wrong_stuck]).sort().values
    return flips.to(stored.device)


def _sample_device(generator: torch.Generator | None) -> torch.device:
    """The device sampled positions live on before they are moved to the weights."""
    return generator.device if generator is not None else torch.device("cpu")
