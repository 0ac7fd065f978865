"""RRAM fault models with exact, sparse sampling (METHOD §2).

A stored weight is one bit: bit 0 = +1, bit 1 = -1. A :class:`FaultModel` says how bits read
wrong: symmetric flips (``p``), asymmetric flips (``p01``: a stored 0 reads 1; ``p10``: a stored 1
reads 0) and stuck-at cells (fractions reading a fixed 0 or 1). :func:`sample_fault_indices`
returns the flat positions whose *read* value differs from the stored one; training, sweeps and
the bitstream emulator all use it, so one seed gives one fault map everywhere.

Exactness: positions are sampled as a Bernoulli process, by the gaps between them: the number
``G`` of positions skipped before the next included one is Geometric(``p``),
``P(G >= k) = (1 - p)^k``. Every position is then included with probability exactly ``p``,
independently of every other position, the result comes out sorted and unique, and the cost
grows with the number of faults (about ``n p`` draws), not with ``n``. (A Binomial count of
uniform positions drawn with replacement would lose the repeats and flip fewer than ``p``; a
Poisson-count set of uniform draws is exact too, but needs a sort to remove the repeats.)

The stream: one 63-bit seed is drawn from the ``torch.Generator``; the positions are cut into
segments of ``2**16``; segment ``s`` draws 64-bit words ``x_j = splitmix64(splitmix64(seed +
(s + 1) g) + j g)``, ``j = 1, 2, ...`` (``g = 0x9e3779b97f4a7c15``, SplitMix64's counter-based
stream), and ``G = #{k = 1..K : x_j < t_k}`` with ``t_k = 2^64 (1 - p)^k`` in float64, so
``P(G >= k) = t_k / 2^64``. ``G = K`` (``(1 - p)^K <= 2^-10``, ``K <= 4096``) skips ``K``
positions and draws again, which the memorylessness of the Geometric makes exact. The native
library (:mod:`lightning_bet.native`) draws the stream (about 3 ns per position; its segments
are independent, so it can split them over threads with the same result); where no C compiler
is available a numpy twin of the same stream gives the same positions, more slowly.
"""

from __future__ import annotations

import functools
import math
import warnings
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_bet._validation import check_positive_int, check_probability, is_probability

__all__ = [
    "FaultModel",
    "bernoulli_positions",
    "bernoulli_positions_numpy",
    "derive_seed",
    "make_generator",
    "sample_fault_indices",
    "sample_positions",
]

#: Positions per segment of the stream (each segment has its own counter stream).
_SEGMENT = 1 << 16
#: Bits of a 64-bit draw that index the guide table of the gap search.
_GUIDE_BITS = 12
#: Most thresholds in a gap table (a gap of this many skips and draws again).
_MAX_GAPS = 4096
_GAMMA = 0x9E3779B97F4A7C15


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

    Inclusions are independent across positions. The stream is described in the module
    docstring; it takes one draw from ``generator``.

    Args:
        numel: number of positions.
        p: inclusion probability in [0, 1].
        generator: random source; the result lives on its device (CPU by default), so a CPU
            generator gives the same positions whatever device the weights are on.

    Returns:
        int64 tensor ``(K,)``, sorted ascending, ``E[K] = numel * p``.

    """
    p = check_probability("p", p)
    device = _sample_device(generator)
    if numel <= 0 or p == 0.0:
        return torch.empty(0, dtype=torch.long, device=device)
    if p == 1.0:
        return torch.arange(numel, device=device)
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator, device=device))
    return _stream_positions(seed, numel, p).to(device)


def bernoulli_positions(seed: int, numel: int, p: float) -> Tensor:
    """The stream of the module docstring for one seed (native, else its numpy twin).

    Args:
        seed: 63-bit seed, ``0 <= seed < 2**63``.
        numel: number of positions, ``>= 1``.
        p: inclusion probability, ``0 < p < 1``.

    Returns:
        int64 CPU tensor ``(K,)`` of sorted positions.

    Raises:
        ValueError: if an argument is outside the range above.

    """
    _check_stream_args(seed, numel, p)
    return _stream_positions(seed, numel, p)


def bernoulli_positions_numpy(seed: int, numel: int, p: float) -> np.ndarray:
    """The numpy twin of the native sampler: the same positions for the same arguments.

    Returns:
        int64 array ``(K,)`` of sorted positions.

    Raises:
        ValueError: as :func:`bernoulli_positions`.

    """
    _check_stream_args(seed, numel, p)
    return _numpy_positions(seed, numel, p)


def _stream_positions(seed: int, numel: int, p: float) -> Tensor:
    """:func:`bernoulli_positions` for arguments already checked."""
    library = _native_sampler()
    if library is None:
        return torch.from_numpy(_numpy_positions(seed, numel, p))
    thresholds, guide = _gap_tables(p)
    # room per segment: the mean plus 7 standard deviations of its count (a segment that
    # overflows makes the library ask for more room; the positions do not depend on it)
    length = min(_SEGMENT, numel)
    slot = math.ceil(length * p + 7.0 * math.sqrt(length * p * (1.0 - p)) + 32)
    positions = library.bernoulli_positions(
        seed,
        numel,
        thresholds,
        guide,
        segment=_SEGMENT,
        guide_bits=_GUIDE_BITS,
        slot=slot,
        threads=1,  # maps are drawn between torch ops, whose pool threads still spin: more
        # threads here fight them for the cores (measured 2-3x slower on 2 cores)
    )
    return torch.from_numpy(positions)


def _numpy_positions(seed: int, numel: int, p: float) -> np.ndarray:
    """:func:`bernoulli_positions_numpy` for arguments already checked.

    All segments are drawn at once, as rows of one array, with enough draws per row for the
    row to pass its segment's end (all rows are drawn again, longer, in the rare case where one
    falls short).
    """
    thresholds, _ = _gap_tables(p)
    k = thresholds.size
    ascending = thresholds[::-1].copy()
    nseg = -(-numel // _SEGMENT)
    begin = np.arange(nseg, dtype=np.int64) * _SEGMENT
    end = np.minimum(begin + _SEGMENT, numel)
    keys = _splitmix64(
        np.uint64(seed) + np.arange(1, nseg + 1, dtype=np.uint64) * np.uint64(_GAMMA)
    )
    # a draw advances min(G + 1, K) positions, E = (1 - q^K) / p; mean draws per segment:
    draws = min(_SEGMENT, numel) * p / (1.0 - float(thresholds[-1]) * 2.0**-64)
    m = int(draws + 6.0 * math.sqrt(draws) + 16)
    while True:
        counters = keys[:, None] + np.arange(1, m + 1, dtype=np.uint64) * np.uint64(_GAMMA)
        gaps = k - np.searchsorted(ascending, _splitmix64(counters), side="right")
        placed = gaps < k
        at = (begin - 1)[:, None] + np.cumsum(np.where(placed, gaps + 1, k), axis=1)
        if np.all(at[:, -1] >= end - 1):  # every row reached its end: the draws after add none
            return at[placed & (at < end[:, None])]
        m *= 2


def _check_stream_args(seed: int, numel: int, p: float) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"Expected `seed` to be an int in [0, 2**63), but got {seed!r}")
    check_positive_int("numel", numel)
    if not (is_probability(p) and 0.0 < p < 1.0):
        raise ValueError(
            f"Expected `p` to be a float in (0, 1) (0 and 1 need no stream), but got {p!r}"
        )


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


@functools.lru_cache(maxsize=64)
def _gap_tables(p: float) -> tuple[np.ndarray, np.ndarray]:
    """Gap thresholds and guide table of the stream for ``0 < p < 1``.

    Returns:
        ``(thresholds, guide)``: uint64 ``(K,)``, ``thresholds[i] = 2^64 (1 - p)^(i + 1)``
        (decreasing, read-only), and uint32 ``(2**_GUIDE_BITS,)``, the gap of the largest word
        of each bucket of the top ``_GUIDE_BITS`` bits (where a gap search may start).

    """
    log_q = math.log1p(-p)
    k = max(1, min(_MAX_GAPS, math.ceil(-10.0 * math.log(2.0) / log_q)))
    powers = np.exp(np.arange(1, k + 1, dtype=np.float64) * log_q) * 2.0**64
    # the largest float64 below 2**64 is 2**64 - 2048
    thresholds = np.minimum(powers, 2.0**64 - 2048.0).astype(np.uint64)
    shift = np.uint64(64 - _GUIDE_BITS)
    with np.errstate(over="ignore"):
        bucket_max = (np.arange(1, 2**_GUIDE_BITS + 1, dtype=np.uint64) << shift) - np.uint64(1)
    guide = (k - np.searchsorted(thresholds[::-1], bucket_max, side="right")).astype(np.uint32)
    thresholds.flags.writeable = False
    guide.flags.writeable = False
    return thresholds, guide


@functools.cache
def _native_sampler() -> Any:
    """The native library, or ``None`` (with a warning, once) where it cannot be built."""
    from lightning_bet.native import get_library

    try:
        return get_library()
    except RuntimeError as exc:
        warnings.warn(
            f"fault maps are drawn by the numpy sampler (same maps, slower): {exc}",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


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
    flat = stored.detach().reshape(-1)

    def reads_one(positions: Tensor) -> Tensor:
        """Whether the stored bit at ``positions`` is 1 (-1): read at the positions only."""
        return (flat[positions.to(flat.device)] < 0).to(positions.device)

    if r0 == r1:
        flips = sample_positions(numel, r0, generator)
    else:
        cand0 = sample_positions(numel, r0, generator)
        cand1 = sample_positions(numel, r1, generator)
        flips = _merge_disjoint(cand0[~reads_one(cand0)], cand1[reads_one(cand1)])
    stuck_fraction = model.stuck_at_0 + model.stuck_at_1
    if stuck_fraction > 0:
        stuck = sample_positions(numel, stuck_fraction, generator)
        u = torch.rand(stuck.numel(), generator=generator, device=stuck.device, dtype=torch.float64)
        stuck_bit = u >= model.stuck_at_0 / stuck_fraction  # False: stuck at 0, True: at 1
        wrong_stuck = stuck[stuck_bit != reads_one(stuck)]
        flips = _merge_disjoint(flips[~_is_in_sorted(flips, stuck)], wrong_stuck)
    return flips.to(stored.device)


def _is_in_sorted(values: Tensor, sorted_set: Tensor) -> Tensor:
    """``torch.isin(values, sorted_set)`` for an ascending ``sorted_set``, by binary search."""
    if sorted_set.numel() == 0:
        return torch.zeros_like(values, dtype=torch.bool)
    at = torch.searchsorted(sorted_set, values).clamp_(max=sorted_set.numel() - 1)
    return sorted_set[at] == values


def _merge_disjoint(a: Tensor, b: Tensor) -> Tensor:
    """The ascending union of two ascending tensors with no value in common.

    Each value goes to its rank in the union (its index plus the number of values of the other
    tensor below it): two binary searches instead of a sort.
    """
    merged = torch.empty(a.numel() + b.numel(), dtype=a.dtype, device=a.device)
    merged[torch.arange(a.numel(), device=a.device) + torch.searchsorted(b, a)] = a
    merged[torch.arange(b.numel(), device=b.device) + torch.searchsorted(a, b)] = b
    return merged


def _sample_device(generator: torch.Generator | None) -> torch.device:
    """The device sampled positions live on before they are moved to the weights."""
    return generator.device if generator is not None else torch.device("cpu")
