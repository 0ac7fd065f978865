"""Statistical and contract tests of the shared fault core (``lightning_bet.functional.faults``)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from lightning_bet.functional.faults import (
    FaultModel,
    _gap_tables,
    bernoulli_positions,
    bernoulli_positions_numpy,
    derive_seed,
    make_generator,
    sample_fault_indices,
    sample_positions,
)

N_BITS = 2_000_000


def within_4_sd(hits: int, trials: int, p: float) -> bool:
    sd = math.sqrt(trials * p * (1 - p))
    return abs(hits - trials * p) <= 4 * sd + 1e-9


def stored_bits(n: int = N_BITS, negative_fraction: float = 0.3, seed: int = 0) -> torch.Tensor:
    """Stored weights +-1 with an exact 0 (bit 0) and -0.0 (also bit 0) among them."""
    g = torch.Generator().manual_seed(seed)
    w = torch.where(torch.rand(n, generator=g) < negative_fraction, -1.0, 1.0)
    w[0], w[1] = 0.0, -0.0
    return w


def naive_positions(numel: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """The biased construction: a Binomial count of uniform draws *with replacement*."""
    count = int(torch.binomial(torch.tensor(float(numel)), torch.tensor(p), generator=generator))
    return torch.unique(torch.randint(numel, (count,), generator=generator))


# ------------------------------------------------------------------------------------ rates


@pytest.mark.parametrize("p", [1e-4, 1e-3, 0.01, 0.1, 0.2, 0.3, 0.5])
def test_symmetric_rate_within_4_sd(p):
    index = sample_positions(N_BITS, p, make_generator(1, p))
    assert within_4_sd(index.numel(), N_BITS, p)
    assert torch.equal(index, torch.unique(index))  # sorted and unique
    assert index.min() >= 0 and index.max() < N_BITS


@pytest.mark.parametrize(
    "model",
    [
        FaultModel(p=0.05),
        FaultModel(p01=0.02, p10=0.1),
        FaultModel(p01=0.3, p10=0.0),
        FaultModel(stuck_at_0=0.04, stuck_at_1=0.01),
        FaultModel(p=0.02, stuck_at_1=0.05),
        FaultModel(p01=0.01, p10=0.2, stuck_at_0=0.03, stuck_at_1=0.02),
    ],
)
def test_read_error_rate_per_stored_value_within_4_sd(model):
    stored = stored_bits()
    index = sample_fault_indices(stored, model, make_generator(2, "rates"))
    read_wrong = torch.zeros(N_BITS, dtype=torch.bool)
    read_wrong[index] = True
    bit1 = stored < 0
    r0, r1 = model.flip_rates
    s0, s1 = model.stuck_at_0, model.stuck_at_1
    free = 1 - s0 - s1
    # stored 0 reads wrong if stuck at 1, or free and flipped; stored 1 symmetrically
    expected = {False: s1 + free * r0, True: s0 + free * r1}
    for bit, p in expected.items():
        cells = bit1 == bit
        assert within_4_sd(int(read_wrong[cells].sum()), int(cells.sum()), p), (bit, p)


def test_stuck_cells_read_their_value_whatever_was_written():
    stored = stored_bits(10_000)
    for model, bit in ((FaultModel(stuck_at_1=1.0), True), (FaultModel(stuck_at_0=1.0), False)):
        index = sample_fault_indices(stored, model, make_generator(3))
        read_bit1 = stored < 0  # the stored 0.0 and -0.0 are bit 0
        read_bit1[index] = ~read_bit1[index]
        assert (read_bit1 == bit).all()


# ------------------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("p", [0.2, 0.3])
def test_poisson_set_is_exact_and_naive_binomial_is_biased_low(p):
    ours = sample_positions(N_BITS, p, make_generator(4, p)).numel()
    naive = naive_positions(N_BITS, p, make_generator(4, p)).numel()
    assert within_4_sd(ours, N_BITS, p)
    assert not within_4_sd(naive, N_BITS, p)
    # the naive set loses the repeats: its rate is 1 - exp(-p), far below p
    assert within_4_sd(naive, N_BITS, 1 - math.exp(-p))


def test_count_is_binomial_over_realizations():
    """Per-bit independence: K ~ Binomial(n, p) (mean n p, variance n p (1 - p))."""
    n, p, reps = 1000, 0.2, 3000
    generator = make_generator(5)
    counts = np.array([sample_positions(n, p, generator).numel() for _ in range(reps)])
    mean_sd = math.sqrt(n * p * (1 - p) / reps)
    assert abs(counts.mean() - n * p) < 4 * mean_sd
    var = n * p * (1 - p)
    var_sd = var * math.sqrt(2 / (reps - 1))  # approx. sd of the sample variance
    assert abs(counts.var(ddof=1) - var) < 4 * var_sd
    positions = np.concatenate([sample_positions(n, p, generator).numpy() for _ in range(reps)])
    per_position = np.bincount(positions, minlength=n)
    # every position is hit about reps * p times: chi-square over positions
    expected = reps * p
    chi2 = ((per_position - expected) ** 2 / (expected * (1 - p))).sum()
    assert abs(chi2 - n) < 4 * math.sqrt(2 * n)


def test_edge_probabilities():
    g = make_generator(6)
    assert sample_positions(100, 0.0, g).numel() == 0
    assert torch.equal(sample_positions(100, 1.0, g), torch.arange(100))
    assert sample_positions(0, 0.5, g).numel() == 0
    assert sample_fault_indices(torch.ones(10), FaultModel(), g).numel() == 0


# ------------------------------------------------------------------------------------ cost


def _median_time(fn, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def test_cost_grows_with_flips_not_bits():
    n = 10_000_000
    g = make_generator(7)
    sparse = _median_time(lambda: sample_positions(n, 1e-4, g))
    dense = _median_time(lambda: torch.rand(n, generator=g))
    assert sparse < 0.1 * dense, (sparse, dense)
    more = _median_time(lambda: sample_positions(n, 1e-2, g))
    assert sparse < more  # 100x the flips costs more


# ------------------------------------------------------------------------------------ seeding


def test_seeding_is_reproducible_and_keyed():
    stored = stored_bits(100_000)
    model = FaultModel(p01=0.01, p10=0.03, stuck_at_1=0.001)
    a = sample_fault_indices(stored, model, make_generator(8, 0.01, 0, 2))
    b = sample_fault_indices(stored, model, make_generator(8, 0.01, 0, 2))
    c = sample_fault_indices(stored, model, make_generator(8, 0.01, 1, 2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert derive_seed(8, 0.01, 0, 2) == derive_seed(8, 0.01, 0, 2)
    assert derive_seed(8, 0.1) != derive_seed(8, 0.1 + 1e-17 + 2**-56)  # floats keyed exactly
    assert derive_seed(8, "a") != derive_seed(8, "b") != derive_seed(9, "b")
    assert 0 <= derive_seed(2**70, -1) < 2**63


def test_indices_live_on_the_weights_device():
    stored = torch.empty(1000, device="meta")
    index = sample_fault_indices(stored, FaultModel(p=0.1), make_generator(9))
    assert index.device == stored.device and index.dtype == torch.int64
    if torch.cuda.is_available():
        weights = stored_bits(100_000).cuda()
        for model in (FaultModel(p=0.1), FaultModel(p01=0.1, p10=0.02, stuck_at_0=0.01)):
            on_gpu = sample_fault_indices(weights, model, make_generator(9))
            on_cpu = sample_fault_indices(weights.cpu(), model, make_generator(9))
            assert on_gpu.device == weights.device
            assert torch.equal(on_gpu.cpu(), on_cpu)  # the CPU generator: same map everywhere


# ------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"p": 1.5}, r"Expected `p` to be a float in \[0, 1\], but got 1.5"),
        ({"p": -0.01}, r"Expected `p` to be a float in \[0, 1\], but got -0.01"),
        ({"p": float("nan")}, r"Expected `p` to be a float in \[0, 1\], but got nan"),
        ({"p": True}, r"Expected `p` to be a float in \[0, 1\], but got True"),
        ({"p01": 2.0}, r"Expected `p01` to be a float in \[0, 1\], but got 2.0"),
        ({"p10": float("nan")}, r"Expected `p10` to be a float in \[0, 1\], but got nan"),
        ({"stuck_at_0": -1}, r"Expected `stuck_at_0` to be a float in \[0, 1\], but got -1"),
        (
            {"p": 0.1, "p01": 0.2},
            r"Expected either `p` \(symmetric flips\) or `p01`/`p10` \(asymmetric flips\), but "
            r"got p=0.1, p01=0.2, p10=None",
        ),
        (
            {"stuck_at_0": 0.6, "stuck_at_1": 0.5},
            r"Expected `stuck_at_0 \+ stuck_at_1` to be at most 1, but got 0.6 \+ 0.5",
        ),
    ],
)
def test_fault_model_messages(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FaultModel(**kwargs)


def test_sample_positions_messages_and_dict_round_trip():
    with pytest.raises(ValueError, match=r"Expected `p` to be a float in \[0, 1\], but got 1.01"):
        sample_positions(10, 1.01)
    with pytest.raises(ValueError, match=r"Expected `p` to be a float in \[0, 1\], but got nan"):
        sample_positions(10, float("nan"))
    with pytest.raises(ValueError, match=r"unknown \['x'\]"):
        FaultModel.from_dict({"p": 0.1, "x": 1})
    model = FaultModel(p01=0.1, p10=0.2, stuck_at_1=0.05)
    assert FaultModel.from_dict(model.to_dict()) == model
    assert FaultModel(p=0.1).is_symmetric and not model.is_symmetric
    assert FaultModel().is_null and not model.is_null


@pytest.mark.parametrize(
    ("p", "count", "crc"),
    [(0.001, 813, 295048503), (0.1, 79726, 1582085182), (0.3, 240899, 2722448974)],
)
def test_fault_map_stream_is_pinned(p, count, crc):
    # The committed reproduction, the README's figures and every shared fault map (training,
    # sweeps, bitstream emulation) come from this stream: changing it must be deliberate.
    # (Pinned from the SplitMix64 segment stream the reproduction was regenerated with.)
    import zlib

    index = sample_positions(802816, p, make_generator(0, "stream", p))
    assert index.dtype == torch.int64 and index.numel() == count
    assert zlib.crc32(index.numpy().astype("<i8").tobytes()) == crc


def test_asymmetric_and_stuck_at_stream_is_pinned():
    import zlib

    stored = torch.arange(-600.0, 600.0).reshape(30, 40)
    model = FaultModel(p01=0.05, p10=0.01, stuck_at_1=0.02)
    index = sample_fault_indices(stored, model, make_generator(0, "stream"))
    assert index.numel() == 42
    assert zlib.crc32(index.numpy().astype("<i8").tobytes()) == 1328004603


# ------------------------------------------------------------------------------------ stream


def reference_positions(seed: int, numel: int, p: float) -> np.ndarray:
    """The stream of the module docstring, one draw at a time in Python integers."""
    mask = (1 << 64) - 1
    gamma = 0x9E3779B97F4A7C15

    def splitmix64(z: int) -> int:
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    thresholds = [int(t) for t in _gap_tables(p)[0]]
    positions = []
    for s, begin in enumerate(range(0, numel, 1 << 16)):
        end = min(begin + (1 << 16), numel)
        counter = splitmix64((seed + (s + 1) * gamma) & mask)
        at = begin - 1
        while at < end - 1:
            counter = (counter + gamma) & mask
            x = splitmix64(counter)
            gap = sum(x < t for t in thresholds)
            at += gap if gap == len(thresholds) else gap + 1
            if gap < len(thresholds) and at < end:
                positions.append(at)
    return np.array(positions, dtype=np.int64)


@pytest.mark.parametrize(
    ("seed", "numel", "p"),
    [(1, 1, 0.5), (2, 70_000, 0.3), (3, 131_073, 0.02), (4, 200_000, 1e-5), (2**63 - 1, 5, 0.999)],
)
def test_native_and_numpy_samplers_follow_the_reference_stream(seed, numel, p):
    expected = reference_positions(seed, numel, p)
    assert np.array_equal(bernoulli_positions_numpy(seed, numel, p), expected)
    assert np.array_equal(bernoulli_positions(seed, numel, p).numpy(), expected)


@pytest.mark.parametrize(
    ("numel", "p"),
    [(10, 0.3), (65_536, 0.1), (65_537, 0.01), (1_000_000, 0.05), (3_000_000, 2e-4), (500, 0.9)],
)
def test_native_sampler_equals_numpy_twin_at_any_thread_count_and_room(numel, p):
    from lightning_bet.native import get_library

    library = get_library()
    thresholds, guide = _gap_tables(p)
    expected = bernoulli_positions_numpy(11, numel, p)
    for threads, slot in [(1, 1_000_000), (2, 1_000_000), (3, 1_000_000), (2, 1), (1, 0)]:
        ours = library.bernoulli_positions(
            11,
            numel,
            thresholds,
            guide,
            segment=1 << 16,
            guide_bits=12,
            slot=slot,
            threads=threads,
        )
        assert np.array_equal(ours, expected), (threads, slot)


def test_gap_tables_match_the_geometric_tail():
    for p in (1e-6, 1e-3, 0.1, 0.5, 0.99):
        thresholds, guide = _gap_tables(p)
        k = np.arange(1, thresholds.size + 1)
        assert np.all(np.diff(thresholds.astype(np.float64)) <= 0)
        assert np.allclose(thresholds.astype(np.float64) * 2.0**-64, (1 - p) ** k, rtol=1e-12)
        assert thresholds.size == 4096 or (1 - p) ** thresholds.size <= 2**-10
        # guide[b] is the gap of the largest word of bucket b
        top = np.array([((b + 1) << 52) - 1 for b in range(4096)], dtype=np.uint64)
        gaps = (thresholds[None, :] > top[:, None]).sum(axis=1)
        assert np.array_equal(guide, gaps.astype(np.uint32))


def test_numpy_sampler_is_used_without_a_compiler(monkeypatch):
    import lightning_bet.native as native
    from lightning_bet.functional import faults

    expected = sample_positions(100_000, 0.1, make_generator(12))

    def no_compiler():
        raise RuntimeError("C compiler not found: running 'gcc --version' failed")

    monkeypatch.setattr(native, "get_library", no_compiler)
    faults._native_sampler.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"numpy sampler \(same maps, slower\): C compiler"):
            ours = sample_positions(100_000, 0.1, make_generator(12))
    finally:
        faults._native_sampler.cache_clear()
    assert torch.equal(ours, expected)


def test_native_sampler_messages():
    from lightning_bet.native import get_library

    library = get_library()
    thresholds, guide = _gap_tables(0.1)
    with pytest.raises(TypeError, match=r"thresholds must be a 1-D numpy uint64 array, got"):
        library.bernoulli_positions(
            1, 10, thresholds.astype(np.int64), guide, segment=16, guide_bits=12, slot=4
        )
    with pytest.raises(ValueError, match=r"guide must have 2\*\*guide_bits=1024 entries, got 4096"):
        library.bernoulli_positions(1, 10, thresholds, guide, segment=16, guide_bits=10, slot=4)
    with pytest.raises(ValueError, match=r"bdense_bernoulli_positions rejected numel=-1"):
        library.bernoulli_positions(1, -1, thresholds, guide, segment=16, guide_bits=12, slot=4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 10, 0.1), r"Expected `seed` to be an int in \[0, 2\*\*63\), but got -1"),
        (
            (2**63, 10, 0.1),
            r"Expected `seed` to be an int in \[0, 2\*\*63\), but got 9223372036854775808",
        ),
        ((1, 0, 0.1), r"Expected `numel` to be a positive int, but got 0"),
        (
            (1, 10, 0.0),
            r"Expected `p` to be a float in \(0, 1\) \(0 and 1 need no stream\), but got 0.0",
        ),
        (
            (1, 10, 1.0),
            r"Expected `p` to be a float in \(0, 1\) \(0 and 1 need no stream\), but got 1.0",
        ),
        ((1, 10, float("nan")), r"Expected `p` to be a float in \(0, 1\) .*, but got nan"),
    ],
)
def test_stream_argument_messages(args, message):
    for sampler in (bernoulli_positions, bernoulli_positions_numpy):
        with pytest.raises(ValueError, match=message):
            sampler(*args)
