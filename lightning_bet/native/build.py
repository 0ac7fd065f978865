"""Compile the native kernel on first use and load it with ctypes.

The shared library is built with ``gcc`` from ``bdense.c`` and ``bconv.c`` into a cache directory
and reused while the source, compiler, flags and CPU stay the same:

* cache directory: ``$LIGHTNING_BET_CACHE/native`` when ``LIGHTNING_BET_CACHE`` is
  set, else ``~/.cache/lightning_bet/native``;
* file name: ``libbdense-<key>.so`` where ``key`` hashes the C sources and headers,
  the compiler command and its version, the flags and (for ``-march=native``
  builds) the CPU model and feature flags, so a cache shared between machines
  never hands one CPU a library built for another.

Builds are process- and thread-safe: the compiler writes to a unique temporary
file in the cache directory which is then atomically renamed into place, and
loaded libraries are memoised per path under a lock.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
import threading
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
C_SOURCE = SOURCE_DIR / "bdense.c"
C_HEADER = SOURCE_DIR / "bdense.h"
#: Every source file compiled into the library (dense kernel first, then the convolutions).
C_SOURCES = (C_SOURCE, SOURCE_DIR / "bconv.c")
#: Every header the sources include.
C_HEADERS = (C_HEADER, SOURCE_DIR / "bconv.h")

#: Flags of the fast build (AVX512-VPOPCNTDQ path where the CPU has it).
NATIVE_FLAGS: tuple[str, ...] = ("-O3", "-march=native")
#: Flags of the portable build (``__builtin_popcountll`` path, no ISA extensions).
PORTABLE_FLAGS: tuple[str, ...] = ("-O3",)
#: Flags added to every build.
COMMON_FLAGS: tuple[str, ...] = ("-std=c99", "-fPIC", "-shared", "-pthread")

DEFAULT_COMPILER = "gcc"

_LOCK = threading.Lock()
_LOADED: dict[str, ctypes.CDLL] = {}
_VERSIONS: dict[str, str] = {}

_u32p = ctypes.POINTER(ctypes.c_uint32)
_i32p = ctypes.POINTER(ctypes.c_int32)


def cache_dir() -> Path:
    """Directory holding the compiled libraries.

    Returns:
        ``$LIGHTNING_BET_CACHE/native`` when the variable is set and non-empty,
        else ``~/.cache/lightning_bet/native``.
    """
    root = os.environ.get("LIGHTNING_BET_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "lightning_bet"
    return base / "native"


def _compiler_version(compiler: str) -> str:
    """First line of ``compiler --version`` (memoised).

    Raises:
        RuntimeError: If the compiler cannot be run.
    """
    with _LOCK:
        if compiler in _VERSIONS:
            return _VERSIONS[compiler]
    cmd = [compiler, "--version"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise RuntimeError(
            f"C compiler not found: running {shlex.join(cmd)!r} failed ({exc}). "
            "Install gcc (e.g. `apt-get install gcc`) or pass compiler=... to build the "
            "lightning_bet native kernel."
        ) from exc
    if proc.returncode != 0:
        raise RuntimeError(
            f"C compiler check {shlex.join(cmd)!r} exited with {proc.returncode}:\n"
            f"{proc.stderr.strip()}"
        )
    lines = proc.stdout.strip().splitlines()
    version = lines[0] if lines else ""
    with _LOCK:
        _VERSIONS[compiler] = version
    return version


def _cpu_fingerprint() -> str:
    """CPU model and feature flags (Linux ``/proc/cpuinfo``), else the platform."""
    parts = [platform.machine(), platform.processor()]
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return "|".join(parts)
    wanted = ("model name", "flags", "features", "cpu model", "isa")
    seen: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in wanted and key not in seen:
            seen.add(key)
            parts.append(f"{key}={value.strip()}")
    return "|".join(parts)


def library_key(compiler: str, flags: tuple[str, ...]) -> str:
    """Cache key of a build: source, header, compiler, flags and (native builds) CPU.

    Args:
        compiler: Compiler command.
        flags: Optimisation/ISA flags (``COMMON_FLAGS`` are added automatically).

    Returns:
        A 16-hex-digit key.
    """
    h = hashlib.sha256()
    for path in (*C_SOURCES, *C_HEADERS):
        h.update(path.read_bytes())
        h.update(b"\0")
    h.update(compiler.encode())
    h.update(b"\0")
    h.update(_compiler_version(compiler).encode())
    h.update(b"\0")
    h.update(" ".join((*flags, *COMMON_FLAGS)).encode())
    if any("native" in f for f in flags):
        h.update(_cpu_fingerprint().encode())
    return h.hexdigest()[:16]


def build_library(
    flags: tuple[str, ...] = NATIVE_FLAGS,
    *,
    compiler: str = DEFAULT_COMPILER,
    directory: str | os.PathLike[str] | None = None,
) -> Path:
    """Compile ``bdense.c`` and ``bconv.c`` into the cache unless an up-to-date build exists.

    Args:
        flags: Optimisation/ISA flags, e.g. ``NATIVE_FLAGS`` or ``PORTABLE_FLAGS``.
        compiler: Compiler command (``gcc`` or a compatible driver).
        directory: Cache directory; default ``cache_dir()``.

    Returns:
        Path of the shared library.

    Raises:
        TypeError: If ``flags`` is not a tuple/list of strings.
        RuntimeError: If the compiler is missing or the compilation fails; the
            message names the full command and carries the compiler's stderr.
    """
    if isinstance(flags, str) or not all(isinstance(f, str) for f in flags):
        raise TypeError(f"flags must be a sequence of str, got {flags!r}")
    flags = tuple(flags)
    out_dir = Path(directory) if directory is not None else cache_dir()
    target = out_dir / f"libbdense-{library_key(compiler, flags)}.so"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".libbdense-", suffix=".so.tmp", dir=out_dir)
    os.close(fd)
    cmd = [compiler, *flags, *COMMON_FLAGS, "-o", tmp_name, *map(str, C_SOURCES)]
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise RuntimeError(
                f"C compiler not found: running {shlex.join(cmd)!r} failed ({exc})."
            ) from exc
        if proc.returncode != 0:
            raise RuntimeError(
                f"Compiling the native kernel failed (exit {proc.returncode}).\n"
                f"Command: {shlex.join(cmd)}\nCompiler stderr:\n{proc.stderr.strip()}"
            )
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Attach argument and return types to the exported functions."""
    kernel_args = [_u32p, _u32p, _i32p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.bdense_popcount.argtypes = kernel_args
    lib.bdense_popcount.restype = ctypes.c_int
    lib.bdense_popcount_reference.argtypes = kernel_args
    lib.bdense_popcount_reference.restype = ctypes.c_int
    lib.bdense_popcount_threads.argtypes = [*kernel_args, ctypes.c_int]
    lib.bdense_popcount_threads.restype = ctypes.c_int
    lib.bdense_sign_pack_threads.argtypes = [_i32p, _i32p, _u32p, *[ctypes.c_int] * 3]
    lib.bdense_sign_pack_threads.restype = ctypes.c_int
    lib.bdense_popcount_sign_threads.argtypes = [_u32p, _u32p, _i32p, _u32p, *[ctypes.c_int] * 5]
    lib.bdense_popcount_sign_threads.restype = ctypes.c_int
    for name in ("bdense_peak_vector", "bdense_peak_scalar"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_int, ctypes.c_longlong]
        fn.restype = ctypes.c_double
    i64p = ctypes.POINTER(ctypes.c_longlong)
    lib.bdense_bernoulli_positions.argtypes = [
        ctypes.c_uint64,
        ctypes.c_longlong,
        ctypes.c_longlong,
        ctypes.POINTER(ctypes.c_uint64),
        ctypes.c_int,
        _u32p,
        ctypes.c_int,
        i64p,
        ctypes.c_longlong,
        i64p,
        ctypes.c_int,
    ]
    lib.bdense_bernoulli_positions.restype = ctypes.c_longlong
    conv_args = [ctypes.c_void_p] * 7 + [ctypes.c_int] * 11
    lib.bconv_binary_sign_threads.argtypes = conv_args
    lib.bconv_binary_sign_threads.restype = ctypes.c_int
    lib.bconv_int_sign_threads.argtypes = conv_args
    lib.bconv_int_sign_threads.restype = ctypes.c_int
    lib.bdense_has_avx512.argtypes = []
    lib.bdense_has_avx512.restype = ctypes.c_int
    lib.bdense_online_cpus.argtypes = []
    lib.bdense_online_cpus.restype = ctypes.c_int
    return lib


def load_cdll(
    flags: tuple[str, ...] = NATIVE_FLAGS,
    *,
    compiler: str = DEFAULT_COMPILER,
    directory: str | os.PathLike[str] | None = None,
) -> tuple[ctypes.CDLL, Path]:
    """Build (if needed) and load the library, memoised per file path.

    Args:
        flags: Optimisation/ISA flags.
        compiler: Compiler command.
        directory: Cache directory; default ``cache_dir()``.

    Returns:
        The loaded library with typed functions and its path.

    Raises:
        RuntimeError: If the build fails (see ``build_library``).
    """
    path = build_library(flags, compiler=compiler, directory=directory)
    key = str(path)
    with _LOCK:
        lib = _LOADED.get(key)
        if lib is None:
            lib = _declare(ctypes.CDLL(key))
            _LOADED[key] = lib
    return lib, path
