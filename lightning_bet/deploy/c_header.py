"""C package for microcontrollers: the bitstream as a C array plus the portable runtime.

:func:`write_c_package` writes ``<name>.h`` (the bitstream bytes, v1 or v2, as
``static const uint8_t <name>_bet[]``, 4-byte aligned, in the style of ``xxd -i``, with the
layer shapes and the scratch sizes of :func:`scratch_layout` as ``#define`` s) and copies
``bet_runtime.h`` / ``bet_runtime.c`` next to it. A firmware then needs no file system and no
allocator::

    #include "model.h"
    static bet_model net;
    static uint32_t scratch[MODEL_SCRATCH_WORDS];
    static int32_t logits[MODEL_NUM_CLASSES];
    if (bet_model_init(&net, model_bet, model_bet_len) == BET_OK) {
        int32_t label = bet_predict(&net, pixels, logits, scratch);
    }
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from lightning_bet.deploy.bitstream import (
    PackedModel,
    pack_model,
    parse_bitstream,
    write_bitstream,
)
from lightning_bet.deploy.c_runner import RUNTIME_SOURCES, runtime_dir
from lightning_bet.deploy.model import DeployModel

__all__ = ["c_array", "render_header", "scratch_layout", "write_c_package"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_BYTES_PER_LINE = 12


def _bitstream_of(model: object) -> bytes:
    if isinstance(model, DeployModel):
        return write_bitstream(model)
    if isinstance(model, bytes | bytearray | memoryview):
        return bytes(model)
    raise TypeError(
        f"Expected `model` to be a DeployModel or bitstream bytes, but got {type(model).__name__}"
    )


def _words(bits: int) -> int:
    return (bits + 31) // 32


def scratch_layout(model: DeployModel | PackedModel) -> dict[str, int]:
    """Scratch words ``bet_predict`` needs for ``model`` (``BET_SCRATCH_WORDS_CONV``).

    The scratch is two ping-pong bit buffers for the widest hidden output (a convolutional
    layer's ``C_out * H_out * W_out`` map, packed), the largest im2col patch of a convolutional
    layer (patch bits and their in-the-image mask for binary inputs, one byte per pixel for the
    first layer), ``C_out`` int32 running maxima for max-pooling, and one word.

    Args:
        model: the deploy-mode network, or its packed form (``parse_bitstream``).

    Returns:
        ``{"max_hidden", "activation_words", "patch_words", "conv_channels",
        "scratch_words"}``: ``scratch_words = 2 * activation_words + patch_words +
        conv_channels + 1``, what ``bet_scratch_words`` returns for the model's bitstream.

    Example:
        >>> net = build_model("fcnn", (1, 8, 8), 10, (16,))  # doctest: +SKIP
        >>> scratch_layout(to_deploy(net, 16))["scratch_words"]  # doctest: +SKIP
        3

    """
    packed = model if isinstance(model, PackedModel) else pack_model(model)
    hidden = packed.layers[:-1]
    max_hidden = max((layer.out_features for layer in hidden), default=0)
    convs = [layer for layer in hidden if layer.is_conv]
    fans = [(c.in_shape[0] * c.kernel**2, c.binary_input) for c in convs]
    patch = max((2 * _words(n) if binary else -(-n // 4) for n, binary in fans), default=0)
    channels = max((c.out_channels for c in convs), default=0)
    return {
        "max_hidden": max_hidden,
        "activation_words": _words(max_hidden),
        "patch_words": patch,
        "conv_channels": channels,
        "scratch_words": 2 * _words(max_hidden) + patch + channels + 1,
    }


def _describe(packed: PackedModel) -> str:
    """``FCNN 64-256-10`` or ``CNN C32k3p1-MP2-C64k3p1-MP2-10`` (stride shown when not 1)."""
    if not packed.has_conv:
        widths = [packed.layers[0].in_features] + [layer.out_features for layer in packed.layers]
        return "FCNN " + "-".join(map(str, widths))
    parts = []
    for layer in packed.layers:
        if layer.is_conv:
            stride = f"s{layer.stride}" if layer.stride != 1 else ""
            parts.append(f"C{layer.out_channels}k{layer.kernel}{stride}p{layer.padding}")
            parts += [f"MP{layer.pool}"] if layer.pool > 1 else []
        else:
            parts.append(str(layer.out_features))
    return "CNN " + "-".join(parts)


def c_array(data: bytes, indent: str = "    ") -> str:
    """Format bytes as the body of a C array initializer, 12 per line (``xxd -i`` style).

    Example:
        >>> print(c_array(b"LBET"))
            0x4c, 0x42, 0x45, 0x54

    """
    lines = [
        indent + ", ".join(f"0x{b:02x}" for b in data[i : i + _BYTES_PER_LINE])
        for i in range(0, len(data), _BYTES_PER_LINE)
    ]
    return ",\n".join(lines)


def render_header(bitstream: bytes, name: str = "model") -> str:
    """The text of ``<name>.h`` for a (validated) bitstream.

    Args:
        bitstream: a bitstream, v1 or v2 (validated with ``parse_bitstream``).
        name: a C identifier; prefixes the array (``<name>_bet``), its length
            (``<name>_bet_len``) and the macros (``<NAME>_...``).

    Returns:
        The header's text.

    Raises:
        ValueError: for a name that is not a C identifier.
        BitstreamError: for an invalid bitstream.

    """
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(f"Expected `name` to be a C identifier, but got {name!r}")
    if name == "bet_runtime":
        raise ValueError("Expected `name` not to be 'bet_runtime' (the runtime's own header)")
    packed = parse_bitstream(bitstream)
    upper = name.upper()
    layers = packed.layers
    scratch = scratch_layout(packed)
    shapes = ", ".join(f"{{{layer.out_features}, {layer.in_features}}}" for layer in layers)
    shape_text = "x".join(str(s) for s in packed.input_shape) or "not recorded"
    defines = [
        ("NUM_LAYERS", f"{len(layers)}u", "hidden layers + the output layer"),
        ("NUM_INPUTS", f"{layers[0].in_features}u", "uint8 pixels per sample"),
        ("NUM_CLASSES", f"{layers[-1].out_features}u", "int32 logits per sample"),
        ("INPUT_LEVELS", f"{packed.input_levels}u", "pixels q in [0, INPUT_LEVELS]"),
        ("MAX_HIDDEN", f"{scratch['max_hidden']}u", "widest hidden output (conv: C*H*W bits)"),
        ("PATCH_WORDS", f"{scratch['patch_words']}u", "largest conv im2col patch, in words"),
        ("CONV_CHANNELS", f"{scratch['conv_channels']}u", "largest conv C_out (int32 maxima)"),
        (
            "SCRATCH_WORDS",
            f"{scratch['scratch_words']}u",
            "BET_SCRATCH_WORDS_CONV(MAX_HIDDEN, PATCH_WORDS, CONV_CHANNELS)",
        ),
        ("BET_LEN", f"{len(bitstream)}u", "bytes of the bitstream"),
    ]
    lines = [
        f"/* {name}.h: lightning-bet bitstream v{packed.version}, {_describe(packed)}, input shape "
        f"{shape_text}.",
        " * Generated by lightning_bet.deploy.c_header; do not edit. Include it in ONE .c file",
        " * (the array is static); compile bet_runtime.c with it. See export/RUNTIME.md. */",
        f"#ifndef {upper}_BET_H",
        f"#define {upper}_BET_H",
        "",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "",
        '#include "bet_runtime.h"',
        "",
    ]
    lines += [f"#define {upper}_{key} {value} /* {why} */" for key, value, why in defines]
    lines += [
        "/* per layer {out_features, in_features} */",
        f"#define {upper}_LAYER_SHAPES {{{shapes}}}",
        "",
        f"#if BET_MAX_LAYERS < {len(layers)}",
        f'#error "{name}.h needs BET_MAX_LAYERS >= {len(layers)}"',
        "#endif",
        "",
        f"static const uint8_t {name}_bet[{upper}_BET_LEN] BET_ALIGN4 = {{",
        c_array(bitstream),
        "};",
        f"static const size_t {name}_bet_len BET_UNUSED = {upper}_BET_LEN;",
        "",
        f"#endif /* {upper}_BET_H */",
        "",
    ]
    return "\n".join(lines)


def write_c_package(
    model: DeployModel | bytes, out_dir: str | os.PathLike, name: str = "model"
) -> dict[str, object]:
    """Write ``<name>.h`` and copy the C runtime sources into ``out_dir``.

    Args:
        model: a :class:`DeployModel` or a bitstream (v1 or v2).
        out_dir: destination folder (created if needed).
        name: C identifier naming the header, the array and the macros.

    Returns:
        ``{"header": Path, "sources": [Path, ...], "bitstream_bytes": int,
        "header_bytes": int, "scratch_words": int, "layers": [(out, in), ...]}`` plus the
        parts of the scratch (:func:`scratch_layout`).

    Raises:
        TypeError: for a ``model`` that is neither a ``DeployModel`` nor bytes.
        ValueError: for a bad ``name`` or an invalid bitstream (``BitstreamError``).

    Example:
        >>> info = write_c_package(to_deploy(net, 16), "firmware/")  # doctest: +SKIP
        >>> info["header"].name
        'model.h'

    """
    bitstream = _bitstream_of(model)
    text = render_header(bitstream, name)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    header = folder / f"{name}.h"
    header.write_text(text)
    source_dir = runtime_dir()
    sources = []
    for source in RUNTIME_SOURCES:
        sources.append(Path(shutil.copyfile(source_dir / source, folder / source)))
    packed = parse_bitstream(bitstream)
    return {
        "header": header,
        "sources": sources,
        "bitstream_bytes": len(bitstream),
        "header_bytes": header.stat().st_size,
        **scratch_layout(packed),
        "layers": [(layer.out_features, layer.in_features) for layer in packed.layers],
    }
