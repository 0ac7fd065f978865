"""A model summary in bits, in the spirit of larq's ``summary()``.

For every binary layer of a network (found by :func:`lightning_bet.network.blocks`): its binary
and float parameters, fan-in, the bytes of its packed weights as the bitstream stores them (one
row per output neuron or output channel, ``fan_in`` bits padded to whole 32-bit words, METHOD
§7) and the bits of its folded thresholds (32-bit threshold and 1-bit direction per neuron, the
directions padded to 32-bit words); then totals against the same parameters stored as float32.

A convolution's binary parameters are its kernel bits ``C_out * C_in / groups * kh * kw``;
format v2 stores them as one bit vector padded to whole 32-bit words only at its end.
BatchNorm parameters (``gamma``, ``beta``), biases and
the output scale count as float parameters; in deploy mode the BatchNorm is folded into the
thresholds and only the output scale (a float32) remains. Bitstream headers, tables and CRCs
(a few dozen bytes per layer, ``export/FORMAT.md``) are not counted.

Three ways in: :func:`summary` (returns a :class:`BitSummary`, whose ``str`` is the table),
``lightning-bet summary --config recipe.yaml``, and :class:`BitSummaryCallback`, which logs the
table at the start of ``fit`` on rank zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_bet.layers import BinaryConv2d, BinaryLinear
from lightning_bet.network import blocks as network_blocks
from lightning_bet.network import fan_in

__all__ = ["BitSummary", "BitSummaryCallback", "LayerSummary", "cli_main", "summary"]

_WORD_BITS = 32
_FLOAT_BYTES = 4


def _words(bits: int) -> int:
    return -(-bits // _WORD_BITS)


@dataclass(frozen=True)
class LayerSummary:
    """One binary layer of a :class:`BitSummary`.

    Attributes:
        name: qualified name of the binary layer.
        kind: layer type, with its max-pool and whether it is the output layer.
        shape: weight shape (``(out, in)`` or ``(C_out, C_in / groups, kh, kw)``).
        fan_in: weights per output neuron.
        binary_params: number of binary weights (kernel bits for a convolution).
        float_params: float parameters that belong to the layer (its BatchNorm's ``gamma`` and
            ``beta``, a bias, the output scale).
        packed_bytes: bytes of the packed weights: ``4 * rows * ceil(fan_in / 32)`` (dense),
            ``4 * ceil(kernel bits / 32)`` (convolutional, one vector in format v2).
        threshold_bits: bits of the folded thresholds and directions (0 for the output layer).

    """

    name: str
    kind: str
    shape: tuple[int, ...]
    fan_in: int
    binary_params: int
    float_params: int
    packed_bytes: int
    threshold_bits: int


@dataclass(frozen=True)
class BitSummary:
    """Per-layer sizes in bits of a binarized network and their totals (see the module doc).

    Attributes:
        layers: one :class:`LayerSummary` per binary layer, the output layer last.

    """

    layers: tuple[LayerSummary, ...]

    @property
    def binary_params(self) -> int:
        """Total binary weights."""
        return sum(layer.binary_params for layer in self.layers)

    @property
    def float_params(self) -> int:
        """Total float parameters."""
        return sum(layer.float_params for layer in self.layers)

    @property
    def deploy_bytes(self) -> int:
        """Bytes in deploy mode: packed weights, thresholds and directions, the f32 output scale."""
        return (
            sum(layer.packed_bytes + layer.threshold_bits // 8 for layer in self.layers)
            + _FLOAT_BYTES
        )

    @property
    def float32_bytes(self) -> int:
        """Bytes of every parameter stored as float32."""
        return _FLOAT_BYTES * (self.binary_params + self.float_params)

    @property
    def compression(self) -> float:
        """``float32_bytes / deploy_bytes``."""
        return self.float32_bytes / self.deploy_bytes

    def table(self) -> str:
        """The summary as a text table with a totals section."""
        header = (
            "Layer",
            "Type",
            "Weight shape",
            "Fan-in",
            "Binary params",
            "Float params",
            "Packed bytes",
            "Threshold bits",
        )
        rows = [
            (
                layer.name,
                layer.kind,
                "x".join(map(str, layer.shape)),
                f"{layer.fan_in:,}",
                f"{layer.binary_params:,}",
                f"{layer.float_params:,}",
                f"{layer.packed_bytes:,}",
                f"{layer.threshold_bits:,}",
            )
            for layer in self.layers
        ]
        packed = sum(layer.packed_bytes for layer in self.layers)
        thresholds = sum(layer.threshold_bits for layer in self.layers)
        total = (
            "Total",
            "",
            "",
            "",
            f"{self.binary_params:,}",
            f"{self.float_params:,}",
            f"{packed:,}",
            f"{thresholds:,}",
        )
        widths = [max(len(r[k]) for r in [header, *rows, total]) for k in range(len(header))]

        def line(cells: Sequence[str]) -> str:
            first = [cells[k].ljust(widths[k]) for k in range(3)]
            rest = [cells[k].rjust(widths[k]) for k in range(3, len(cells))]
            return "  ".join(first + rest).rstrip()

        rule = "-" * len(line(header))
        return "\n".join(
            [
                line(header),
                rule,
                *[line(r) for r in rows],
                rule,
                line(total),
                "",
                f"Deploy size: {self.deploy_bytes:,} bytes (packed weights, thresholds, "
                "directions, output scale; bitstream headers and CRCs not counted)",
                f"Float32 size: {self.float32_bytes:,} bytes "
                f"({self.compression:.1f}x the deploy size)",
            ]
        )

    def __str__(self) -> str:
        return self.table()


def _float_params(layer: nn.Module, *others: nn.Module) -> int:
    """Float parameters of a binary layer (all but its weight) and of ``others`` (all)."""
    count = sum(p.numel() for name, p in layer.named_parameters() if name != "weight")
    return count + sum(p.numel() for other in others for p in other.parameters())


def _layer(
    name: str, layer: BinaryLinear | BinaryConv2d, kind: str, floats: int, hidden: bool = True
) -> LayerSummary:
    n = fan_in(layer)
    rows = layer.weight.shape[0]
    return LayerSummary(
        name=name,
        kind=kind,
        shape=tuple(layer.weight.shape),
        fan_in=n,
        binary_params=layer.weight.numel(),
        float_params=floats,
        packed_bytes=_FLOAT_BYTES
        * (_words(layer.weight.numel()) if isinstance(layer, BinaryConv2d) else rows * _words(n)),
        threshold_bits=_WORD_BITS * (rows + _words(rows)) if hidden else 0,
    )


def summary(module: nn.Module) -> BitSummary:
    """The model summary in bits of any module made of the project's binary layers.

    Args:
        module: a ``BNN``, a ``BNNClassifier``, a user's ``nn.Sequential`` or LightningModule
            (its blocks are found by :func:`lightning_bet.network.blocks`).

    Returns:
        The :class:`BitSummary`; ``print`` it for the table.

    Example:
        >>> from lightning_bet.models import build_model
        >>> s = summary(build_model("fcnn", (1, 8, 8), 10, (256, 256)))
        >>> s.binary_params, s.float_params, s.deploy_bytes
        (84480, 1025, 12676)

    """
    view = network_blocks(module)
    layers = []
    for block in view.blocks:
        kind = type(block.layer).__name__
        if block.pool is not None:
            kind += f" + {type(block.pool).__name__}"
        layers.append(_layer(block.name, block.layer, kind, _float_params(block.layer, block.bn)))
    head = view.head
    floats = _float_params(head.layer) + (1 if head.output is not None else 0)
    layers.append(_layer(head.name, head.layer, "BinaryLinear (output)", floats, hidden=False))
    return BitSummary(tuple(layers))


class BitSummaryCallback(Callback):
    """Log the :func:`summary` of the model at the start of ``fit`` (rank zero only).

    The table goes through Lightning's ``rank_zero_info`` (the console, at Lightning's default
    log level); the last summary is kept as :attr:`summary`.

    Example:
        >>> trainer = L.Trainer(callbacks=[BitSummaryCallback()])

    """

    def __init__(self) -> None:
        self.summary: BitSummary | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self.summary = summary(pl_module)
        rank_zero_info(f"Model summary in bits of {type(pl_module).__name__}:\n{self.summary}")


def cli_main(argv: Sequence[str] | None = None) -> BitSummary:
    """``lightning-bet summary --config recipe.yaml``: print the summary of a recipe's model."""
    from lightning_bet._arguments import make_parser, parse
    from lightning_bet.recipe import make_cli_quietly

    parser = make_parser(
        "summary",
        "Per-layer binary and float parameters, packed bytes, fan-in and threshold bits of a "
        "recipe's model, with totals against float32.",
    )
    parser.add_argument("--config", required=True, help="the recipe (LightningCLI YAML)")
    args = parse(parser, argv)
    result = summary(make_cli_quietly(args.config).model)
    print(result)
    return result
