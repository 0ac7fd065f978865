import json
import shutil

import numpy as np
import pytest

from lightning_bet import native
from lightning_bet.native import build

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")

N_VALUES = (1, 31, 32, 33, 64, 100, 785)
BATCHES = (1, 3, 17)
ROWS = (1, 5, 33)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("native_cache")


@pytest.fixture(scope="module")
def lib(cache):
    return native.load_library(native.NATIVE_FLAGS, directory=cache)


@pytest.fixture(scope="module")
def portable(cache):
    return native.load_library(native.PORTABLE_FLAGS, directory=cache)


def random_signs(rng, *shape):
    return rng.choice(np.array([-1.0, 1.0]), size=shape)


def reference(x, w):
    return (x.astype(np.int64) @ w.astype(np.int64).T).astype(np.int32)


@pytest.mark.parametrize("n", N_VALUES)
def test_matches_numpy_reference(lib, n):
    rng = np.random.default_rng(n)
    for batch in BATCHES:
        for rows in ROWS:
            x = random_signs(rng, batch, n)
            w = random_signs(rng, rows, n)
            got = lib.binary_dense(native.pack_signs(x), native.pack_signs(w), n, threads=1)
            assert got.dtype == np.int32
            np.testing.assert_array_equal(got, reference(x, w), err_msg=f"{batch=} {rows=}")


def test_all_equal_and_all_opposite_signs(lib):
    n = 100
    ones = np.ones((2, n))
    xp, wp = native.pack_signs(ones), native.pack_signs(np.vstack([ones[:1], -ones[:1]]))
    np.testing.assert_array_equal(lib.binary_dense(xp, wp, n), [[n, -n], [n, -n]])


def test_larger_problem_all_thread_counts_agree(lib):
    rng = np.random.default_rng(7)
    # odd word count, batch and row tails, several blocks, large enough for threads
    n, batch, rows = 1985, 130, 300
    x, w = random_signs(rng, batch, n), random_signs(rng, rows, n)
    xp, wp = native.pack_signs(x), native.pack_signs(w)
    want = reference(x, w)
    for threads in (1, 2, 3):
        np.testing.assert_array_equal(lib.binary_dense(xp, wp, n, threads=threads), want)
    np.testing.assert_array_equal(native.binary_dense(xp, wp, n), want)


def test_c_reference_function_agrees(lib):
    rng = np.random.default_rng(3)
    n = 100
    xp = native.pack_signs(random_signs(rng, 5, n))
    wp = native.pack_signs(random_signs(rng, 9, n))
    out = np.empty((5, 9), dtype=np.int32)
    ptr = native._as_u32_ptr
    rc = lib.cdll.bdense_popcount_reference(
        ptr(xp), ptr(wp), out.ctypes.data_as(build._i32p), 5, 9, xp.shape[1], n
    )
    assert rc == 0
    np.testing.assert_array_equal(out, lib.binary_dense(xp, wp, n))


def test_one_dimensional_input_and_out_buffer(lib):
    rng = np.random.default_rng(4)
    x, w = random_signs(rng, 33), random_signs(rng, 5, 33)
    xp, wp = native.pack_signs(x), native.pack_signs(w)
    got = lib.binary_dense(xp, wp, 33)
    assert got.shape == (5,)
    np.testing.assert_array_equal(got, reference(x[None], w)[0])
    out = np.zeros((1, 5), dtype=np.int32)
    assert lib.binary_dense(xp[None], wp, 33, out=out) is out
    np.testing.assert_array_equal(out[0], got)


def test_empty_shapes(lib):
    wp = native.pack_signs(np.ones((4, 40)))
    assert lib.binary_dense(np.zeros((0, 2), np.uint32), wp, 40).shape == (0, 4)
    got = lib.binary_dense(np.zeros((3, 0), np.uint32), np.zeros((2, 0), np.uint32), 0)
    np.testing.assert_array_equal(got, np.zeros((3, 2), np.int32))


def test_pack_signs_layout_and_sign_convention():
    x = np.ones(33)
    assert native.pack_signs(x).tolist() == [0, 0]
    x[0] = -1.0
    x[31] = -0.5
    x[32] = -3.0
    assert native.pack_signs(x).tolist() == [0x80000001, 1]
    # sign(0) = +1, also for -0.0: bit 0
    zeros = np.array([0.0, -0.0, 0.0, 2.0, -1e-30])
    assert native.pack_signs(zeros).tolist() == [0b10000]
    assert native.pack_signs(np.array([0, 1, -1], dtype=np.int8)).tolist() == [0b100]
    # bools are the bits themselves (True = bit 1 = -1)
    assert native.pack_signs(np.array([True, False, True])).tolist() == [0b101]
    packed = native.pack_signs(np.ones((2, 3, 70)))
    assert packed.dtype == np.uint32 and packed.shape == (2, 3, 3)


@pytest.mark.parametrize("n", N_VALUES)
def test_pack_unpack_round_trip(n):
    rng = np.random.default_rng(100 + n)
    x = random_signs(rng, 4, n)
    packed = native.pack_signs(x)
    assert packed.shape == (4, -(-n // 32))
    np.testing.assert_array_equal(native.unpack_signs(packed, n), x.astype(np.int8))
    bits = rng.random((4, n)) < 0.5
    np.testing.assert_array_equal(native.pack_signs(bits), native.pack_signs(np.where(bits, -1, 1)))
    # padding bits are zero
    assert native._padding_is_zero(packed, n)


def test_pack_signs_rejects_bad_input():
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        native.pack_signs([1.0, -1.0])
    with pytest.raises(TypeError, match="dtype"):
        native.pack_signs(np.array(["a", "b"]))
    with pytest.raises(ValueError, match="NaN"):
        native.pack_signs(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="at least one dimension"):
        native.pack_signs(np.array(1.0))


def test_binary_dense_rejects_bad_input(lib):
    xp = native.pack_signs(np.ones((2, 40)))
    wp = native.pack_signs(np.ones((3, 40)))
    with pytest.raises(TypeError, match="xpacked"):
        lib.binary_dense(xp.astype(np.int64), wp, 40)
    with pytest.raises(TypeError, match="wpacked"):
        lib.binary_dense(xp, wp.tolist(), 40)
    with pytest.raises(ValueError, match="same number of words"):
        lib.binary_dense(xp, native.pack_signs(np.ones((3, 70))), 40)
    with pytest.raises(ValueError, match="n must satisfy"):
        lib.binary_dense(xp, wp, 65)
    with pytest.raises(TypeError, match="n must be an int"):
        lib.binary_dense(xp, wp, 40.0)
    signs = np.ones(40)
    signs[39] = -1.0
    with pytest.raises(ValueError, match="wpacked has non-zero padding"):
        lib.binary_dense(xp, native.pack_signs(np.tile(signs, (3, 1))), 39)
    dirty = xp.copy()
    dirty[0, 1] |= np.uint32(1 << 20)  # bit 52 >= n = 40
    with pytest.raises(ValueError, match="xpacked has non-zero padding"):
        lib.binary_dense(dirty, wp, 40)
    with pytest.raises(ValueError, match="threads"):
        lib.binary_dense(xp, wp, 40, threads=0)
    with pytest.raises(ValueError, match="out must be"):
        lib.binary_dense(xp, wp, 40, out=np.empty((3, 2), np.int32))
    with pytest.raises(TypeError, match="out must be"):
        lib.binary_dense(xp, wp, 40, out=np.empty((2, 3), np.int64))


def test_portable_build_gives_identical_results(lib, portable):
    assert portable.kernel_path == "portable"
    assert portable.path != lib.path
    rng = np.random.default_rng(11)
    for n in (*N_VALUES, 1985):
        for batch, rows in ((1, 33), (17, 5), (70, 40), (130, 300)):
            xp = native.pack_signs(random_signs(rng, batch, n))
            wp = native.pack_signs(random_signs(rng, rows, n))
            np.testing.assert_array_equal(
                portable.binary_dense(xp, wp, n, threads=2), lib.binary_dense(xp, wp, n)
            )


def packed_signs_reference(a, t):
    """Bits ``a < t`` packed LSB-first into uint32 words, by hand (no numpy packbits)."""
    batch, rows = a.shape
    words = -(-rows // 32)
    out = np.zeros((batch, words), dtype=np.uint64)
    for j in range(rows):
        out[:, j // 32] |= (a[:, j] < t[j]).astype(np.uint64) << np.uint64(j % 32)
    return out.astype(np.uint32)


@pytest.mark.parametrize("flavour", ["lib", "portable"])
def test_sign_pack_and_fused_popcount_sign_match_reference(flavour, request):
    library = request.getfixturevalue(flavour)
    rng = np.random.default_rng(5)
    for n in (1, 33, 100, 785):
        for batch, rows in ((1, 1), (3, 7), (17, 33), (70, 64), (130, 300), (9, 1000)):
            x, w = random_signs(rng, batch, n), random_signs(rng, rows, n)
            xp, wp = native.pack_signs(x), native.pack_signs(w)
            a = reference(x, w)
            t = rng.integers(-n, n + 2, rows).astype(np.int32)
            t[: min(rows, 3)] = a[0, : min(rows, 3)]  # ties: a == t gives bit 0
            want = packed_signs_reference(a, t)
            for threads in (1, 2):
                got = library.sign_pack(a, t, threads=threads)
                np.testing.assert_array_equal(got, want, err_msg=f"{n=} {batch=} {rows=}")
                fused = library.binary_dense_sign(xp, wp, n, t, threads=threads)
                np.testing.assert_array_equal(fused, want, err_msg=f"{n=} {batch=} {rows=}")


def test_sign_pack_rejects_bad_input(lib):
    a = np.zeros((2, 5), np.int32)
    with pytest.raises(
        TypeError,
        match=r"a must be a numpy int32 array, got ndarray\(dtype=float64, shape=\(2, 5\)\)",
    ):
        lib.sign_pack(a.astype(np.float64), np.zeros(5, np.int32))
    with pytest.raises(TypeError, match="thresholds must be a numpy int32 array"):
        lib.sign_pack(a, np.zeros(5, np.int64))
    with pytest.raises(ValueError, match=r"thresholds must have shape \(5,\) to match the rows"):
        lib.sign_pack(a, np.zeros(4, np.int32))
    xp, wp = native.pack_signs(np.ones((2, 40))), native.pack_signs(np.ones((3, 40)))
    with pytest.raises(ValueError, match=r"thresholds must have shape \(3,\) to match the rows"):
        lib.binary_dense_sign(xp, wp, 40, np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="n must satisfy"):
        lib.binary_dense_sign(xp, wp, 65, np.zeros(3, np.int32))


def test_popcount_peak_reports_positive_rates(lib, portable):
    peak = lib.popcount_peak(threads=1, iters=200_000, trials=1)
    assert peak["threads"] == 1 and peak["scalar_gbitops"] > 0 and peak["peak_gbitops"] > 0
    assert peak["peak_gbitops_cpu"] > 0
    if lib.has_avx512:
        assert peak["peak_kind"] == "vpopcntq-512" and peak["vector_gbitops"] > 0
    p = portable.popcount_peak(threads=1, iters=100_000, trials=1)
    assert p["vector_gbitops"] is None and p["peak_kind"] == "popcnt-64"
    assert p["peak_gbitops"] == p["scalar_gbitops"] > 0


def test_build_is_cached_and_keyed_by_flags(cache):
    a = build.build_library(native.NATIVE_FLAGS, directory=cache)
    mtime = a.stat().st_mtime_ns
    assert build.build_library(native.NATIVE_FLAGS, directory=cache) == a
    assert a.stat().st_mtime_ns == mtime
    assert build.build_library(native.PORTABLE_FLAGS, directory=cache) != a
    assert not list(cache.glob(".libbdense-*"))  # no temporaries left behind


def test_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LIGHTNING_BET_CACHE", str(tmp_path))
    assert build.cache_dir() == tmp_path / "native"
    monkeypatch.delenv("LIGHTNING_BET_CACHE")
    assert build.cache_dir().parts[-3:] == (".cache", "lightning_bet", "native")


def test_missing_compiler_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="no-such-cc-xyz"):
        build.build_library(native.NATIVE_FLAGS, compiler="no-such-cc-xyz", directory=tmp_path)


def test_compile_error_names_command_and_stderr(tmp_path):
    with pytest.raises(RuntimeError, match=r"(?s)Command: gcc .*--no-such-flag.*stderr"):
        build.build_library(("-O3", "--no-such-flag"), directory=tmp_path)
    assert not list(tmp_path.glob(".libbdense-*"))


def test_benchmark_smoke(lib, tmp_path, monkeypatch):
    from lightning_bet.bench import c_kernel

    monkeypatch.setattr(c_kernel, "BATCH", 64)
    monkeypatch.setattr(c_kernel, "ROWS", 96)
    (tmp_path / "results.json").write_text(json.dumps({"other": {"keep": 1}}))
    entry = c_kernel.run(out_dir=str(tmp_path), repeats=2, threads=1, library=lib)
    assert entry["threads"] == 1 and entry["gmacs"] > 0 and entry["peak_gbitops"] > 0
    assert entry["fraction_of_peak"] > 0 and entry["fraction_of_peak_cpu"] > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["other"] == {"keep": 1}
    assert saved["c_kernel"] == entry


def test_concurrent_builds_and_calls(tmp_path, lib):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=3) as pool:
        paths = list(
            pool.map(
                lambda _: build.build_library(native.PORTABLE_FLAGS, directory=tmp_path), range(3)
            )
        )
    assert len(set(paths)) == 1 and paths[0].exists()
    assert not list(tmp_path.glob(".libbdense-*"))

    rng = np.random.default_rng(5)
    problems = []
    for n in (100, 785, 1985):
        x, w = random_signs(rng, 40, n), random_signs(rng, 50, n)
        problems.append((native.pack_signs(x), native.pack_signs(w), n, reference(x, w)))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda p: lib.binary_dense(p[0], p[1], p[2]), problems * 4))
    for got, (_, _, _, want) in zip(results, problems * 4, strict=True):
        np.testing.assert_array_equal(got, want)
