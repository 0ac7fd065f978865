"""RRAM fault emulation on the packed bits of a bitstream (METHOD §2, §6, §7).

Fault maps come from the shared fault core: for layer ``l`` (position in the bitstream's layer
table, which is the order of ``binary_layers(net)``: conv layers, dense hidden layers, the output
layer) and realization ``r``, the flipped weights are

    ``sample_fault_indices(W_l, fault_model, make_generator(seed, key, r, l))``

over the *logical* signs ``W_l`` in PyTorch's element order (row-major ``(out, in)`` for a dense
layer, ``(C_out, C_in, k, k)`` for a convolutional one), with ``key`` the error rate ``p`` (or a
name), exactly as the PyTorch sweep (``lightning_bet.sweep.fault_maps``) keys them: pass ``key=p``
(the grid value) to reproduce a sweep's maps for asymmetric or stuck-at fault models, whose
default key is a name. A flat index is a stored cell
(:meth:`~lightning_bet.deploy.bitstream.PackedLayer.bit_positions`): dense index ``k`` is row
``k // in``, bit ``(k % in) % 32`` of word ``(k % in) // 32`` of that row; a conv layer's kernels
are one bit vector (format v2), so index ``e`` is bit ``e % 32`` of word ``e // 32``. Padding
bits are never faulted, and a kernel bit is one cell shared by every output position. The faulty
bitstream gets fresh CRCs, so any reader (numpy, C, ...) evaluates it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lightning_bet._validation import check_positive_int
from lightning_bet.deploy.bitstream import (
    PackedModel,
    parse_bitstream,
    refresh_checksums,
)
from lightning_bet.deploy.interpreter import run_bitstream
from lightning_bet.functional.faults import FaultModel, make_generator, sample_fault_indices

__all__ = [
    "EmulationResult",
    "default_key",
    "emulate",
    "fault_indices",
    "faulty_bitstreams",
    "inject_faults",
]


def default_key(fault_model: FaultModel) -> float | str:
    """The seed key of a fault model: ``p`` for symmetric flips, else a canonical name.

    Example:
        >>> default_key(FaultModel(p=0.01))
        0.01
        >>> default_key(FaultModel(p01=0.02, p10=0.0))
        'p01=0.02,p10=0.0,stuck_at_0=0.0,stuck_at_1=0.0'

    """
    if (
        fault_model.p01 is None
        and fault_model.p10 is None
        and not (fault_model.stuck_at_0 or fault_model.stuck_at_1)
    ):
        return float(fault_model.p)
    r0, r1 = fault_model.flip_rates
    return (
        f"p01={r0!r},p10={r1!r},stuck_at_0={fault_model.stuck_at_0!r},"
        f"stuck_at_1={fault_model.stuck_at_1!r}"
    )


def _packed(data: bytes | bytearray | PackedModel) -> PackedModel:
    if isinstance(data, PackedModel):
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        return parse_bitstream(data)
    raise TypeError(f"Expected `data` to be bitstream bytes, but got {type(data).__name__}")


def _layer_selection(layers: Sequence[int] | None, count: int) -> list[int]:
    if layers is None:
        return list(range(count))
    chosen = list(layers)
    if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count for i in chosen):
        raise ValueError(
            f"Expected `layers` to be layer indices in [0, {count}), but got {list(layers)!r}"
        )
    return sorted(set(chosen))


def fault_indices(
    data: bytes | bytearray | PackedModel,
    fault_model: FaultModel,
    seed: int,
    realization: int,
    key: float | str | None = None,
    layers: Sequence[int] | None = None,
) -> dict[int, Tensor]:
    """The fault map of one realization: flat logical weight indices to negate, per layer.

    Args:
        data: a bitstream (or its parsed :class:`PackedModel`).
        fault_model: which bits read wrong.
        seed: base seed.
        realization: realization index ``r``.
        key: seed key (default :func:`default_key`: ``p`` for symmetric flips).
        layers: layer indices to fault (default: all, first and last included).

    Returns:
        ``{layer_index: int64 (K,) sorted flat indices into the layer's signs}`` (``(out, in)``
        or ``(C_out, C_in, k, k)``, flattened), on the CPU.

    """
    if not isinstance(fault_model, FaultModel):
        raise TypeError(
            f"Expected `fault_model` to be a FaultModel, but got {type(fault_model).__name__}"
        )
    packed = _packed(data)
    key = default_key(fault_model) if key is None else key
    maps = {}
    for index in _layer_selection(layers, len(packed.layers)):
        layer = packed.layers[index]
        # the stored values in PyTorch order: bit 1 = -1 (only the signs of stored matter)
        stored = torch.from_numpy(layer.signs())
        generator = make_generator(seed, key, realization, index)
        maps[index] = sample_fault_indices(stored, fault_model, generator).cpu()
    return maps


def inject_faults(
    data: bytes | bytearray, indices: Mapping[int, Tensor | np.ndarray | Sequence[int]]
) -> bytes:
    """Flip the stored bits of the given logical weights and return a valid faulty bitstream.

    Args:
        data: a valid bitstream.
        indices: ``{layer_index: flat indices into that layer's weights}`` (``(out, in)`` or
            ``(C_out, C_in, k, k)``, flattened in PyTorch order).

    Returns:
        The bitstream with those weight bits flipped (padding bits untouched) and every section
        CRC and the file CRC recomputed.

    """
    packed = parse_bitstream(data)
    buffer = np.frombuffer(bytes(data), dtype=np.uint8).copy()
    for index, flat in indices.items():
        if (
            isinstance(index, bool)
            or not isinstance(index, int)
            or not 0 <= index < len(packed.layers)
        ):
            raise ValueError(
                f"Expected layer indices in [0, {len(packed.layers)}), but got {index!r}"
            )
        layer = packed.layers[index]
        k = np.asarray(flat.cpu() if isinstance(flat, Tensor) else flat, dtype=np.int64).ravel()
        numel = layer.weight_count
        if k.size and (k.min() < 0 or k.max() >= numel):
            raise ValueError(
                f"Expected the indices of layer {index} in [0, {numel}), but got values in "
                f"[{k.min()}, {k.max()}]"
            )
        word, bit = layer.bit_positions(k)
        byte = layer.weight_offset + 4 * word + bit // 8
        # XOR per occurrence: a repeated index flips back, as negating twice would
        np.bitwise_xor.at(buffer, byte, (1 << (bit % 8)).astype(np.uint8))
    return refresh_checksums(buffer.tobytes())


def faulty_bitstreams(
    data: bytes | bytearray,
    fault_model: FaultModel,
    realizations: int,
    seed: int = 0,
    key: float | str | None = None,
    layers: Sequence[int] | None = None,
) -> Iterator[bytes]:
    """Yield the faulty bitstream of each realization ``0 .. realizations - 1``."""
    check_positive_int("realizations", realizations, "an int >= 1")
    packed = parse_bitstream(data)
    for r in range(realizations):
        yield inject_faults(data, fault_indices(packed, fault_model, seed, r, key, layers))


@dataclass(frozen=True)
class EmulationResult:
    """Accuracy of the faulty bitstreams, one entry per realization.

    Attributes:
        accuracies: float64 ``(R,)``.
        mean: mean accuracy.
        std: sample standard deviation (``ddof=1``; 0 for one realization).
    """

    accuracies: np.ndarray
    mean: float
    std: float


def emulate(
    data: bytes | bytearray,
    q: np.ndarray,
    y: np.ndarray,
    fault_model: FaultModel,
    realizations: int = 10,
    seed: int = 0,
    key: float | str | None = None,
    layers: Sequence[int] | None = None,
    progress: bool = False,
) -> EmulationResult:
    """Accuracy over fault realizations of a bitstream, evaluated by the numpy interpreter.

    Args:
        data: a valid bitstream.
        q: ``(N, in_features)`` (or ``(N, *input_shape)``) integer pixels.
        y: ``(N,)`` integer labels.
        fault_model: which bits read wrong.
        realizations: number of fault maps ``R`` (``fixed`` semantics: one map per realization).
        seed: base seed; realization ``r`` of layer ``l`` uses ``make_generator(seed, key, r, l)``.
        key: seed key (default ``p`` for symmetric flips).
        layers: layers to fault (default all).
        progress: show a progress bar.

    Returns:
        An :class:`EmulationResult`.

    Example:
        >>> from lightning_bet.deploy.bitstream import write_bitstream
        >>> from lightning_bet.deploy.fold import to_deploy
        >>> from lightning_bet.models import build_model
        >>> data = write_bitstream(to_deploy(build_model("fcnn", (1, 8, 8), 10, (16,)), 16))
        >>> q, y = np.zeros((4, 64), np.uint8), np.zeros(4, np.int64)
        >>> emulate(data, q, y, FaultModel(p=0.0), realizations=2).accuracies.shape
        (2,)

    """
    labels = np.asarray(y).ravel()
    if np.asarray(q).ndim < 1 or np.asarray(q).shape[0] < 1:
        raise ValueError(f"Expected `q` to hold at least one sample, but got {np.shape(q)}")
    if labels.shape[0] != np.asarray(q).shape[0]:
        raise ValueError(
            f"Expected `y` to have one label per sample ({np.asarray(q).shape[0]}), but got "
            f"{labels.shape[0]}"
        )
    streams = faulty_bitstreams(data, fault_model, realizations, seed, key, layers)
    if progress:
        from tqdm.auto import tqdm

        streams = tqdm(streams, total=realizations, desc="emulate", leave=False)
    accuracies = np.array(
        [float(np.mean(run_bitstream(s, q).argmax(axis=1) == labels)) for s in streams]
    )
    std = float(accuracies.std(ddof=1)) if accuracies.size > 1 else 0.0
    return EmulationResult(accuracies, float(accuracies.mean()), std)
