"""Benchmark: size of the bitstream of the FashionMNIST FCNN 784-2048-2048-10.

Compares the bytes of the format-v1 file with

- the information bound: one bit per weight, 32 bits per threshold and one bit per direction
  (hidden neurons), i.e. what any lossless format must store; target: the file's payload
  (everything but the fixed header, layer table, CRCs) is at most 1.01x the bound;
- the float32 ``state_dict`` (latent weights, BatchNorm parameters and statistics, output scale);
  target: at least 30x smaller.

Sizes do not depend on training, so the network is randomly initialised. Run:
``python -m lightning_bet.bench.bitstream_size`` or ``lightning-bet bench bitstream_size``.
"""

from __future__ import annotations

import io
import math
import os
from typing import Any

import torch

from lightning_bet.bench import update_results
from lightning_bet.deploy.bitstream import parse_bitstream, write_bitstream
from lightning_bet.deploy.fold import to_deploy
from lightning_bet.models import build_model

__all__ = ["run"]


def run(
    out_dir: str | os.PathLike = "runs/bench",
    hidden: tuple[int, ...] = (2048, 2048),
    input_shape: tuple[int, ...] = (1, 28, 28),
    num_classes: int = 10,
    input_levels: int = 255,
) -> dict[str, Any]:
    """Measure the bitstream size and merge it into ``<out_dir>/results.json``.

    Args:
        out_dir: results folder.
        hidden: hidden widths (default: the FashionMNIST FCNN).
        input_shape: shape of one sample.
        num_classes: classes.
        input_levels: pixel levels (255 for 8-bit images).

    Returns:
        ``{"bytes", "header_bytes", "payload_bytes", "information_bound_bytes",
        "vs_information_bound", "float32_state_dict_bytes", "vs_float32_state_dict", ...}``.

    """
    torch.manual_seed(0)
    net = build_model("fcnn", input_shape, num_classes, hidden).eval()
    model = to_deploy(net, input_levels)
    data = write_bitstream(model)
    packed = parse_bitstream(data)

    weight_bits = sum(layer.weight.size for layer in model.layers)
    hidden_neurons = sum(layer.shape[0] for layer in model.layers[:-1])
    bound_bits = weight_bits + 32 * hidden_neurons + hidden_neurons
    bound_bytes = math.ceil(bound_bits / 8)
    payload = 0
    for layer in packed.layers:
        payload += layer.weight_words.nbytes
        if not layer.is_output:
            payload += layer.threshold.nbytes + layer.direction_words.nbytes
    header_bytes = len(data) - payload  # header, layer table, section CRCs, file CRC

    state = net.state_dict()
    tensor_bytes = sum(t.numel() * t.element_size() for t in state.values())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    result = {
        "architecture": "fcnn "
        + "-".join(map(str, (math.prod(input_shape), *hidden, num_classes))),
        "bytes": len(data),
        "header_bytes": header_bytes,
        "payload_bytes": payload,
        "padding_bytes": payload - bound_bytes,
        "information_bound_bytes": bound_bytes,
        "vs_information_bound": payload / bound_bytes,
        "vs_information_bound_with_header": len(data) / bound_bytes,
        "float32_state_dict_bytes": tensor_bytes,
        "float32_state_dict_file_bytes": buffer.getbuffer().nbytes,
        "vs_float32_state_dict": tensor_bytes / len(data),
        "targets": {"vs_information_bound": "<= 1.01", "vs_float32_state_dict": ">= 30"},
    }
    result["meets_targets"] = bool(
        result["vs_information_bound"] <= 1.01 and result["vs_float32_state_dict"] >= 30
    )
    update_results(out_dir, {"bitstream_size": result})
    return result


if __name__ == "__main__":
    outcome = run()
    print(
        f"{outcome['architecture']}: {outcome['bytes']} bytes "
        f"({outcome['header_bytes']} header/table/CRC bytes); "
        f"{outcome['vs_information_bound']:.4f}x the information bound "
        f"({outcome['information_bound_bytes']} bytes); "
        f"{outcome['vs_float32_state_dict']:.1f}x smaller than the float32 state_dict "
        f"({outcome['float32_state_dict_bytes']} bytes)"
    )
