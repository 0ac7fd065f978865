"""Benchmark: size of the bitstream of the FashionMNIST FCNN 784-2048-2048-10 and of two CNNs.

Compares the bytes of the bitstream with

- the information bound: one bit per weight, 32 bits per threshold and one bit per direction
  (hidden neurons; per output channel for a conv layer), i.e. what any lossless format must
  store; target: the file's payload (everything but the fixed header, layer table, CRCs) is at
  most 1.01x the bound;
- the float32 ``state_dict`` (latent weights, BatchNorm parameters and statistics, output scale);
  target (FCNN): at least 30x smaller.

Rows: the FCNN (format v1; its figures are the result's top-level keys), the digits CNN
``C32-MP-C64-MP-FC10`` on 1x8x8 and the VGG3 FashionMNIST shape ``C64-MP-C64-MP-FC2048-FC10``
on 1x28x28 (format v2; under ``"cnn"``, with their payload ratios also at the top level).
Sizes do not depend on training, so the networks are randomly initialised. Run:
``python -m lightning_bet.bench.bitstream_size`` or ``lightning-bet bench bitstream_size``.
"""

from __future__ import annotations

import io
import math
import os
from typing import Any

import torch
from torch import nn

from lightning_bet.bench import update_results
from lightning_bet.deploy.bitstream import parse_bitstream, write_bitstream
from lightning_bet.deploy.fold import to_deploy
from lightning_bet.layers import BinaryConv2d
from lightning_bet.models import BNN, BinaryBlock, OutputLayer, build_model

__all__ = ["digits_cnn", "run"]

#: payload / information bound that a row must not exceed
BOUND_TARGET = 1.01


def digits_cnn() -> BNN:
    """The digits CNN ``C32-MP-C64-MP-FC10`` on 1x8x8 (3x3 convolutions, padding 1)."""
    first = BinaryConv2d(1, 32, 3, padding=1, bias=False, binarize_input=False)
    second = BinaryConv2d(32, 64, 3, padding=1, bias=False)
    blocks = [BinaryBlock(conv, pool=nn.MaxPool2d(2)) for conv in (first, second)]
    return BNN((1, 8, 8), blocks, OutputLayer(64 * 2 * 2, 10, flatten=True))


def _row(net: nn.Module, input_levels: int, architecture: str) -> dict[str, Any]:
    """The size figures of one network's bitstream."""
    model = to_deploy(net.eval(), input_levels)
    data = write_bitstream(model)
    packed = parse_bitstream(data)
    weight_bits = sum(layer.weight.size for layer in model.layers)
    # thresholds and directions: one per hidden neuron or per output channel of a conv layer
    units = sum(layer.threshold.size for layer in model.layers[:-1])
    bound_bytes = math.ceil((weight_bits + 32 * units + units) / 8)
    payload = 0
    for layer in packed.layers:
        payload += layer.weight_words.nbytes
        if not layer.is_output:
            payload += layer.threshold.nbytes + layer.direction_words.nbytes
    state = net.state_dict()
    tensor_bytes = sum(t.numel() * t.element_size() for t in state.values())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return {
        "architecture": architecture,
        "format_version": packed.version,
        "bytes": len(data),
        "header_bytes": len(data) - payload,  # header, layer table, section CRCs, file CRC
        "payload_bytes": payload,
        "padding_bytes": payload - bound_bytes,
        "information_bound_bytes": bound_bytes,
        "vs_information_bound": payload / bound_bytes,
        "vs_information_bound_with_header": len(data) / bound_bytes,
        "float32_state_dict_bytes": tensor_bytes,
        "float32_state_dict_file_bytes": buffer.getbuffer().nbytes,
        "vs_float32_state_dict": tensor_bytes / len(data),
    }


def run(
    out_dir: str | os.PathLike = "runs/bench",
    hidden: tuple[int, ...] = (2048, 2048),
    input_shape: tuple[int, ...] = (1, 28, 28),
    num_classes: int = 10,
    input_levels: int = 255,
) -> dict[str, Any]:
    """Measure the bitstream sizes and merge them into ``<out_dir>/results.json``.

    Args:
        out_dir: results folder.
        hidden: hidden widths of the FCNN (default: the FashionMNIST FCNN).
        input_shape: shape of one FCNN sample.
        num_classes: FCNN classes.
        input_levels: FCNN pixel levels (255 for 8-bit images).

    Returns:
        The FCNN's ``{"bytes", "header_bytes", "payload_bytes", "information_bound_bytes",
        "vs_information_bound", "float32_state_dict_bytes", "vs_float32_state_dict", ...}``, plus
        ``"cnn": {"digits_cnn": row, "vgg3_fashion_mnist": row}`` (rows with the same keys),
        ``"digits_cnn_vs_information_bound"``, ``"vgg3_fashion_mnist_vs_information_bound"`` and
        ``"meets_targets"`` over all rows.

    """
    torch.manual_seed(0)
    net = build_model("fcnn", input_shape, num_classes, hidden)
    architecture = "fcnn " + "-".join(map(str, (math.prod(input_shape), *hidden, num_classes)))
    result = _row(net, input_levels, architecture)
    result.pop("format_version")  # the FCNN row keeps its keys
    result["targets"] = {
        "vs_information_bound": f"<= {BOUND_TARGET}",
        "vs_float32_state_dict": ">= 30",
    }
    cnn = {
        "digits_cnn": _row(digits_cnn(), 16, "digits cnn 1x8x8 C32-MP-C64-MP-FC10"),
        "vgg3_fashion_mnist": _row(
            build_model("vgg3", (1, 28, 28), 10, (2048,)),
            255,
            "vgg3 1x28x28 C64-MP-C64-MP-FC2048-FC10",
        ),
    }
    result["cnn"] = cnn
    for name, row in cnn.items():
        result[f"{name}_vs_information_bound"] = row["vs_information_bound"]
    result["meets_targets"] = bool(
        result["vs_information_bound"] <= BOUND_TARGET
        and result["vs_float32_state_dict"] >= 30
        and all(row["vs_information_bound"] <= BOUND_TARGET for row in cnn.values())
    )
    update_results(out_dir, {"bitstream_size": result})
    return result


if __name__ == "__main__":
    outcome = run()
    for row in [outcome, *outcome["cnn"].values()]:
        print(
            f"{row['architecture']}: {row['bytes']} bytes "
            f"({row['header_bytes']} header/table/CRC bytes); "
            f"{row['vs_information_bound']:.4f}x the information bound "
            f"({row['information_bound_bytes']} bytes); "
            f"{row['vs_float32_state_dict']:.1f}x smaller than the float32 state_dict "
            f"({row['float32_state_dict_bytes']} bytes)"
        )
