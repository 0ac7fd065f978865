"""TFLite export of a deploy-mode BNN: builtin ops only, exact float32 arithmetic (METHOD §7).

:func:`write_tflite` turns a :class:`~lightning_bet.deploy.model.DeployModel` into a ``.tflite``
flatbuffer that stock runtimes (``tflite-runtime``, ``ai-edge-litert``, TFLite Micro) run with
their builtin kernels; :func:`run_tflite` runs it. The flatbuffer is written in pure Python with
the generated schema builders of the ``tflite`` package and ``flatbuffers`` (no TensorFlow).

Graph, for a batch of ``N`` samples (the batch dimension is dynamic: ``shape_signature`` is
``[-1, ...]``, so ``Interpreter.resize_tensor_input`` works):

- input ``q``: float32 ``(N, F)`` holding the integer pixels ``q`` in ``[0, input_levels]``
  (float32 rather than uint8 so that any ``input_levels`` works and no CAST is needed; integers
  below ``2**24`` are exact in float32).
- hidden layer ``l`` with weights ``W``, thresholds ``T`` and directions ``d``: the direction is
  folded into the layer, ``z = FULLY_CONNECTED(v, weights=d * W, bias=-d * T) = d * (a - T)``
  (``d * W`` is still in ``{-1, +1}``), then ``v = SELECT_V2(GREATER_EQUAL(z, 0), +1, -1)``.
  This is exactly deploy mode's ``o = +1 iff d * (a - T) >= 0`` (``SIGN`` is not used: TFLite's
  ``SIGN(0)`` is ``0``, not ``+1``).
- convolutional layer (:class:`~lightning_bet.deploy.model.DeployConv`, kernels ``W``, stride
  ``s``, zero padding ``p``, max-pool window ``P``) on NHWC tensors: the flat input is first
  brought to ``(N, H, W, C)`` (``RESHAPE``, then ``TRANSPOSE`` when ``C > 1``). Zero padding must
  contribute 0, so the *binarized* (or pixel) input is padded with zeros: ``CONV_2D`` with
  ``SAME`` padding where TFLite's ``SAME`` reads exactly PyTorch's windows (stride 1 and
  ``p = (k - 1) / 2``, and some strided cases), else ``PAD`` with ``p`` zeros on each side then
  a ``VALID`` ``CONV_2D``. Without pooling the direction is folded into the kernels as for a
  dense layer: ``z = CONV_2D(v, d * W, bias=-d * T)``. With pooling the pool must see ``a``
  itself (max-pool then threshold is an OR of threshold bits for ``d = +1`` and an AND for
  ``d = -1``): ``z = MUL(MAX_POOL_2D(CONV_2D(v, W, bias=-T)), d)``, exact since
  ``max(a) - T = max(a - T)``. Then the sign as for a dense layer. Before the first dense layer
  the ``(N, H, W, C)`` map is flattened in PyTorch's ``(C, H, W)`` order (``TRANSPOSE`` to
  ``(N, C, H, W)`` when ``C > 1`` and ``H W > 1``, then ``RESHAPE``), so the dense weights are
  deploy mode's, unpermuted. The input stays the flat ``(N, C*H*W)`` pixels in ``(C, H, W)``
  order, as for a dense network.
- output layer: ``logits = FULLY_CONNECTED(v, W)`` (integer values, unscaled: multiply by
  ``model.scale`` for the float logits) and ``prediction = ARG_MAX(logits, axis=1)`` (int32;
  the builtin kernel keeps the first index on ties, as deploy mode does, which the tests check).
- the signature ``"serving_default"`` names them, for ``Interpreter.get_signature_runner()``;
  a metadata entry ``"lightning_bet"`` holds a JSON description (:func:`read_tflite_metadata`).

Exactness: every value in the graph is an integer. A float32 sum of integers is exact, whatever
the summation order, as long as every partial sum stays within ``2**24``. With fan-in ``n`` and
inputs bounded by ``m`` (``m = input_levels`` for pixel inputs, 1 for ``±1`` inputs), ``|a| <= B =
n * m`` (``n = C_in k k`` for a convolution, fewer terms at padded borders); thresholds are
clamped to ``[-(B + 1), B + 1]`` (which does not change any output, since ``a`` never leaves
``[-B, B]``), so partial sums including the bias stay within ``2 B + 1``.
:func:`write_tflite` raises a ``ValueError`` if ``2 B + 1 > 2**24`` for any layer (e.g. more than
32 896 pixel inputs at 255 levels, or more than 8 388 607 binary inputs): far above the reference
networks (``784 * 255 = 199 920`` for FashionMNIST).

Size: float32 weights take 32 bits per binary weight (``weights="float32"``, the default, runs
everywhere). ``weights="int8"`` stores them as int8 (scale 1, zero point 0) behind a builtin
``DEQUANTIZE`` to float32, 4x smaller and still exact. Both are reference models for stock
runtimes; the bit-packed bitstream (1 bit per weight) is the compact format.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from lightning_bet._validation import check_positive_int
from lightning_bet.deploy.model import DeployConv, DeployModel

__all__ = [
    "SIGNATURE_KEY",
    "TFLITE_METADATA_NAME",
    "read_tflite_metadata",
    "run_tflite",
    "tflite_op_names",
    "tflite_size_report",
    "write_tflite",
]

#: Name of the model metadata entry holding a JSON description of the exported network.
TFLITE_METADATA_NAME = "lightning_bet"
#: Key of the model's one signature (input ``"q"``, outputs ``"logits"`` and ``"prediction"``).
SIGNATURE_KEY = "serving_default"

_FORMAT = "lightning-bet-tflite"
_FORMAT_VERSION = 1
#: Integers up to ``2**24`` are exact in float32.
_EXACT_LIMIT = 2**24
_WEIGHT_DTYPES = ("float32", "int8")
_OP_RESOLVERS = ("auto", "builtin", "reference")

# TFLite schema constants (schema.fbs): TensorType, BuiltinOperator, BuiltinOptions.
_FLOAT32, _INT32, _BOOL, _INT8 = 0, 2, 6, 9
_OPS = {
    "CONV_2D": 3,
    "DEQUANTIZE": 6,
    "FULLY_CONNECTED": 9,
    "MAX_POOL_2D": 17,
    "MUL": 18,
    "RESHAPE": 22,
    "PAD": 34,
    "TRANSPOSE": 39,
    "ARG_MAX": 56,
    "GREATER_EQUAL": 62,
    "SELECT_V2": 123,
}
_SAME, _VALID = 0, 1  # Padding
_DEPRECATED_CODE_LIMIT = 127  # PLACEHOLDER_FOR_GREATER_OP_CODES


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    signature: tuple[int, ...] | None
    dtype: int
    buffer: int
    quantized: bool = False


@dataclass
class _Op:
    code: int
    version: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options_type: int = 0
    options: Callable[[Any], int] | None = None


class _Graph:
    """The tensors, buffers and operators of one subgraph, before serialization."""

    def __init__(self) -> None:
        self.buffers: list[bytes] = [b""]  # buffer 0: the empty sentinel the schema requires
        self.tensors: list[_Tensor] = []
        self.ops: list[_Op] = []
        self.metadata: list[tuple[str, int]] = []

    def buffer(self, data: bytes) -> int:
        self.buffers.append(data)
        return len(self.buffers) - 1

    def const(self, name: str, array: np.ndarray, quantized: bool = False) -> int:
        dtype = {
            np.dtype(np.float32): _FLOAT32,
            np.dtype(np.int32): _INT32,
            np.dtype(np.int8): _INT8,
        }[array.dtype]
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        self.tensors.append(
            _Tensor(name, tuple(array.shape), None, dtype, self.buffer(data), quantized)
        )
        return len(self.tensors) - 1

    def activation(self, name: str, dtype: int, *dims: int) -> int:
        """A ``(N, *dims)`` tensor with a dynamic batch ``N``."""
        self.tensors.append(_Tensor(name, (1, *dims), (-1, *dims), dtype, 0))
        return len(self.tensors) - 1

    def op(self, code: int, inputs: tuple[int, ...], outputs: tuple[int, ...], **kw: Any) -> None:
        self.ops.append(_Op(code, kw.pop("version", 1), inputs, outputs, **kw))


def _import_schema() -> Any:
    try:
        import flatbuffers  # noqa: F401
        import tflite
    except ImportError as err:  # pragma: no cover - both are dependencies of the package
        raise ModuleNotFoundError(
            "Writing TFLite models needs the `tflite` and `flatbuffers` packages: "
            "pip install tflite flatbuffers"
        ) from err
    return tflite


def _check_array(name: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"Expected `{name}` to be a numpy array, but got {type(value).__name__}")
    if value.shape != shape:
        raise ValueError(f"Expected `{name}` to have shape {shape}, but got {value.shape}")
    if value.dtype.kind not in "iuf":
        raise ValueError(f"Expected `{name}` to hold numbers, but got dtype {value.dtype}")
    return value


def _check_signs(name: str, value: np.ndarray) -> None:
    bad = ~np.isin(value, (-1, 1))
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        got = value[first].item()  # a Python number: the same message under numpy 1 and 2
        raise ValueError(
            f"Expected `{name}` to hold only -1 and +1, but got {got!r} at index {first}"
        )


def _layer_bound(fan_in: int, binary_input: bool, input_levels: int) -> int:
    """The largest ``|a|`` a layer can produce: ``fan_in * max |input|``."""
    return fan_in * (1 if binary_input else input_levels)


@dataclass
class _Checked:
    """One validated layer: ``conv`` is the layer itself for a convolution, else ``None``."""

    weight: np.ndarray
    threshold: np.ndarray | None
    direction: np.ndarray | None
    bound: int
    conv: DeployConv | None = None

    def clipped_threshold(self) -> np.ndarray:
        """int64 ``T`` clamped to ``[-(B + 1), B + 1]`` (clamped first: no wrap-around)."""
        return np.clip(self.threshold, -(self.bound + 1), self.bound + 1).astype(np.int64)


def _check_conv_geometry(prefix: str, layer: DeployConv) -> None:
    """Re-run :class:`DeployConv`'s own checks (stride, padding, pool tiling, shapes)."""
    try:
        DeployConv(
            layer.weight,
            layer.threshold,
            layer.direction,
            layer.in_shape,
            layer.stride,
            layer.padding,
            layer.pool,
            layer.binary_input,
        )
    except (TypeError, ValueError) as error:
        raise ValueError(f"Expected `{prefix}` to be a valid convolution: {error}") from None


def _validated_layers(model: DeployModel) -> list[_Checked]:
    """Check ``model`` against the deploy-mode contract, layer by layer."""
    if not isinstance(model, DeployModel):
        raise TypeError(f"Expected `model` to be a DeployModel, but got {type(model).__name__}")
    levels = model.input_levels
    check_positive_int("model.input_levels", levels, types=(int, np.integer))
    if not isinstance(model.scale, int | float | np.floating) or not model.scale > 0:
        raise ValueError(f"Expected `model.scale` to be a float > 0, but got {model.scale!r}")
    layers = tuple(model.layers)
    if not layers:
        raise ValueError("Expected `model.layers` to hold at least the output layer, but got ()")
    checked: list[_Checked] = []
    width = 0  # output features of the layer before
    previous: DeployConv | None = None  # the layer before, if convolutional
    for i, layer in enumerate(layers):
        prefix = f"model.layers[{i}]"
        is_output = i == len(layers) - 1
        conv = isinstance(layer, DeployConv)
        if conv and is_output:
            raise ValueError(
                f"Expected the output layer `{prefix}` to be a dense DeployLayer, but got a "
                "DeployConv"
            )
        if conv and i > 0 and previous is None:
            raise ValueError(
                f"Expected convolutional layers before dense ones, but `{prefix}` is a DeployConv "
                f"after the dense model.layers[{i - 1}]"
            )
        weight = layer.weight
        ndim, kind = (4, "(C_out, C_in, k, k)") if conv else (2, "(out, in)")
        if not isinstance(weight, np.ndarray) or weight.ndim != ndim or 0 in weight.shape:
            shape = getattr(weight, "shape", type(weight).__name__)
            raise ValueError(
                f"Expected `{prefix}.weight` to be a non-empty {ndim}-D numpy array {kind}, but "
                f"got {shape}"
            )
        _check_array(f"{prefix}.weight", weight, weight.shape)
        _check_signs(f"{prefix}.weight", weight)
        out, fan_in = weight.shape[0], math.prod(weight.shape[1:])
        if i == 0:
            in_features = layer.in_features if conv else fan_in
            flat = math.prod(model.input_shape) if len(model.input_shape) else in_features
            if flat != in_features or (conv and tuple(model.input_shape) != layer.in_shape):
                got = f"a convolution of `in_shape` {layer.in_shape}" if conv else f"{fan_in}"
                raise ValueError(
                    f"Expected `{prefix}.weight` to have {flat} inputs (`model.input_shape` "
                    f"{tuple(model.input_shape)}), but got {got}"
                )
        elif conv and layer.in_shape != previous.out_shape:
            raise ValueError(
                f"Expected `{prefix}.in_shape` to be {previous.out_shape} (the output of "
                f"model.layers[{i - 1}]), but got {layer.in_shape}"
            )
        elif not conv and fan_in != width:
            raise ValueError(
                f"Expected `{prefix}.weight` to have {width} inputs (the outputs of "
                f"model.layers[{i - 1}]), but got shape {weight.shape}"
            )
        if bool(layer.binary_input) != (i > 0):
            raise ValueError(
                f"Expected `{prefix}.binary_input` to be {i > 0} (the first layer takes integer "
                f"pixels, later layers the +1/-1 outputs of the layer before), but got "
                f"{layer.binary_input!r}"
            )
        if is_output:
            if layer.threshold is not None or layer.direction is not None:
                raise ValueError(
                    f"Expected the output layer `{prefix}` to have threshold=None and "
                    "direction=None, but got a threshold or direction"
                )
            threshold = direction = None
        else:
            if layer.threshold is None or layer.direction is None:
                raise ValueError(
                    f"Expected hidden layer `{prefix}` to have a threshold and a direction, but "
                    "got None (only the last layer is the output layer)"
                )
            threshold = _check_array(f"{prefix}.threshold", layer.threshold, (out,))
            if threshold.dtype.kind not in "iu":
                raise ValueError(
                    f"Expected `{prefix}.threshold` to have an integer dtype, but got "
                    f"{threshold.dtype}"
                )
            direction = _check_array(f"{prefix}.direction", layer.direction, (out,))
            _check_signs(f"{prefix}.direction", direction)
        if conv:
            _check_conv_geometry(prefix, layer)
        binary = bool(layer.binary_input)
        bound = _layer_bound(fan_in, binary, int(levels))
        if 2 * bound + 1 > _EXACT_LIMIT:
            raise ValueError(
                f"Expected `{prefix}` to keep float32 sums exact (fan-in x max |input| = {bound} "
                f"must be at most {(_EXACT_LIMIT - 1) // 2}), but got fan-in {fan_in} with "
                f"inputs up to {1 if binary else levels}"
            )
        checked.append(_Checked(weight, threshold, direction, bound, layer if conv else None))
        width = layer.out_features if conv else out
        previous = layer if conv else None
    return checked


def _metadata(model: DeployModel, weights: str) -> dict[str, Any]:
    meta = {
        "format": _FORMAT,
        "version": _FORMAT_VERSION,
        "input_levels": int(model.input_levels),
        "input_shape": [int(s) for s in model.input_shape],
        "scale": float(model.scale),
        "layers": [list(layer.shape) for layer in model.layers],
        "weights": weights,
        "inputs": ["q"],
        "outputs": ["logits", "prediction"],
    }
    convs = [layer for layer in model.layers if isinstance(layer, DeployConv)]
    if convs:  # only for convolutional networks: dense files stay byte for byte as they were
        meta["convolutions"] = [
            {
                "in_shape": list(layer.in_shape),
                "out_shape": list(layer.out_shape),
                "kernel": layer.kernel_size,
                "stride": layer.stride,
                "padding": layer.padding,
                "pool": layer.pool,
            }
            for layer in convs
        ]
    return meta


def _same_is_exact(conv: DeployConv) -> bool:
    """Whether TFLite's ``SAME`` padding reads exactly PyTorch's zero-padded windows.

    TFLite's ``SAME`` gives ``ceil(H / s)`` outputs and pads ``total // 2`` zeros before, with
    ``total = (out - 1) s + k - H``; both convolutions then read the same input positions (zeros
    beyond the borders) when the output sizes and the padding before agree on both axes.
    """
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    for size, out in zip(conv.in_shape[1:], conv.conv_shape[1:], strict=True):
        same_out = -(-size // s)
        before = max((same_out - 1) * s + k - size, 0) // 2
        if same_out != out or before != p:
            return False
    return True


# Builders of the operators' options tables (called while serializing).
def _fc_options(builder: Any) -> int:
    tflite = _import_schema()
    tflite.FullyConnectedOptionsStart(builder)
    return tflite.FullyConnectedOptionsEnd(builder)  # no activation, default weights format


def _conv_options(padding: int, stride: int) -> Callable[[Any], int]:
    def build(builder: Any) -> int:
        tflite = _import_schema()
        tflite.Conv2DOptionsStart(builder)
        tflite.Conv2DOptionsAddPadding(builder, padding)
        tflite.Conv2DOptionsAddStrideW(builder, stride)
        tflite.Conv2DOptionsAddStrideH(builder, stride)
        tflite.Conv2DOptionsAddDilationWFactor(builder, 1)
        tflite.Conv2DOptionsAddDilationHFactor(builder, 1)
        return tflite.Conv2DOptionsEnd(builder)  # no fused activation

    return build


def _pool_options(window: int) -> Callable[[Any], int]:
    def build(builder: Any) -> int:
        tflite = _import_schema()
        tflite.Pool2DOptionsStart(builder)
        tflite.Pool2DOptionsAddPadding(builder, _VALID)
        tflite.Pool2DOptionsAddStrideW(builder, window)
        tflite.Pool2DOptionsAddStrideH(builder, window)
        tflite.Pool2DOptionsAddFilterWidth(builder, window)
        tflite.Pool2DOptionsAddFilterHeight(builder, window)
        return tflite.Pool2DOptionsEnd(builder)

    return build


def _mul_options(builder: Any) -> int:
    tflite = _import_schema()
    tflite.MulOptionsStart(builder)
    return tflite.MulOptionsEnd(builder)


def _argmax_options(builder: Any) -> int:
    tflite = _import_schema()
    tflite.ArgMaxOptionsStart(builder)
    tflite.ArgMaxOptionsAddOutputType(builder, _INT32)
    return tflite.ArgMaxOptionsEnd(builder)


class _ModelGraph(_Graph):
    """A :class:`_Graph` with the building blocks of a deploy-mode network."""

    def __init__(self, weights: str) -> None:
        super().__init__()
        self.weights = weights
        self.plus = self.const("plus_one", np.ones((1,), np.float32))
        self.minus = self.const("minus_one", -np.ones((1,), np.float32))
        self.zero = self.const("zero", np.zeros((1,), np.float32))

    def sign(self, name: str, x: int, dims: tuple[int, ...]) -> int:
        """``+1`` where ``x >= 0``, else ``-1`` (``SIGN`` would give 0 at 0)."""
        cond = self.activation(f"{name}/ge0", _BOOL, *dims)
        self.op(_OPS["GREATER_EQUAL"], (x, self.zero), (cond,))
        out = self.activation(name, _FLOAT32, *dims)
        self.op(_OPS["SELECT_V2"], (cond, self.plus, self.minus), (out,))
        return out

    def weight(self, name: str, w: np.ndarray) -> int:
        """A float32 weight tensor, stored as float32 or as int8 behind a ``DEQUANTIZE``."""
        if self.weights == "float32":
            return self.const(name, w.astype(np.float32))
        stored = self.const(f"{name}/int8", w.astype(np.int8), quantized=True)
        out = len(self.tensors)
        self.tensors.append(_Tensor(name, tuple(w.shape), None, _FLOAT32, 0))
        self.op(_OPS["DEQUANTIZE"], (stored,), (out,), version=2)  # version 2: int8 input
        return out

    def reshaped(self, name: str, x: int, dims: tuple[int, ...]) -> int:
        shape = self.const(f"{name}/shape", np.array((-1, *dims), np.int32))
        out = self.activation(name, _FLOAT32, *dims)
        self.op(_OPS["RESHAPE"], (x, shape), (out,))
        return out

    def transposed(self, name: str, x: int, perm: tuple[int, ...], dims: tuple[int, ...]) -> int:
        perm_tensor = self.const(f"{name}/perm", np.array(perm, np.int32))
        out = self.activation(name, _FLOAT32, *dims)
        self.op(_OPS["TRANSPOSE"], (x, perm_tensor), (out,))
        return out

    def to_nhwc(self, name: str, x: int, chw: tuple[int, int, int]) -> int:
        """``(N, C*H*W)`` in PyTorch's order -> ``(N, H, W, C)``."""
        c, h, w = chw
        if c == 1:  # (1, H, W) and (H, W, 1) have the same element order
            return self.reshaped(name, x, (h, w, 1))
        return self.transposed(name, self.reshaped(f"{name}/nchw", x, chw), (0, 2, 3, 1), (h, w, c))

    def to_flat(self, name: str, x: int, chw: tuple[int, int, int]) -> int:
        """``(N, H, W, C)`` -> ``(N, C*H*W)`` flattened in PyTorch's ``(C, H, W)`` order."""
        c, h, w = chw
        if c > 1 and h * w > 1:
            x = self.transposed(f"{name}/nchw", x, (0, 3, 1, 2), chw)
        return self.reshaped(name, x, (c * h * w,))

    def dense(self, i: int, v: int, layer: _Checked) -> int:
        """Hidden dense layer ``i`` on ``(N, in)``: ``sign(d * (W v - T))``, ``(N, out)``."""
        out = layer.weight.shape[0]
        d64 = layer.direction.astype(np.int64)
        kernel = self.weight(f"layer{i}/weight", d64[:, None] * layer.weight.astype(np.int64))
        bias = self.const(f"layer{i}/bias", (-d64 * layer.clipped_threshold()).astype(np.float32))
        z = self.activation(f"layer{i}/d_times_a_minus_t", _FLOAT32, out)
        self.op(
            _OPS["FULLY_CONNECTED"], (v, kernel, bias), (z,), options_type=8, options=_fc_options
        )
        return self.sign(f"layer{i}/output", z, (out,))

    def conv(self, i: int, v: int, layer: _Checked) -> int:
        """Convolutional layer ``i`` on ``(N, H, W, C_in)``: ``(N, H_out, W_out, C_out)``."""
        conv = layer.conv
        c_out, h_c, w_c = conv.conv_shape
        p = conv.padding
        padding = _SAME if p and _same_is_exact(conv) else _VALID
        if p and padding == _VALID:  # explicit zeros: they add 0, for pixels and +-1 alike
            c, h, w = conv.in_shape
            pads = np.array([[0, 0], [p, p], [p, p], [0, 0]], np.int32)
            padded = self.activation(f"layer{i}/padded", _FLOAT32, h + 2 * p, w + 2 * p, c)
            self.op(_OPS["PAD"], (v, self.const(f"layer{i}/paddings", pads)), (padded,))
            v = padded
        d64 = layer.direction.astype(np.int64)
        w64, bias = layer.weight.astype(np.int64), -layer.clipped_threshold()
        pooled = conv.pool > 1
        if not pooled:  # fold the direction into the kernels, as for a dense layer
            w64, bias = d64[:, None, None, None] * w64, d64 * bias
        kernel = self.weight(f"layer{i}/weight", w64.transpose(0, 2, 3, 1))  # OHWI
        bias_tensor = self.const(f"layer{i}/bias", bias.astype(np.float32))
        name = f"layer{i}/a_minus_t" if pooled else f"layer{i}/d_times_a_minus_t"
        z = self.activation(name, _FLOAT32, h_c, w_c, c_out)
        options = _conv_options(padding, conv.stride)
        self.op(_OPS["CONV_2D"], (v, kernel, bias_tensor), (z,), options_type=1, options=options)
        dims = (h_c, w_c, c_out)
        if pooled:  # the pool sees a - T itself; the direction comes after it
            dims = (*conv.out_shape[1:], c_out)
            pool = self.activation(f"layer{i}/pooled", _FLOAT32, *dims)
            options = _pool_options(conv.pool)
            self.op(_OPS["MAX_POOL_2D"], (z,), (pool,), options_type=5, options=options)
            direction = self.const(f"layer{i}/direction", d64.astype(np.float32))
            z = self.activation(f"layer{i}/d_times_a_minus_t", _FLOAT32, *dims)
            self.op(_OPS["MUL"], (pool, direction), (z,), options_type=21, options=_mul_options)
        return self.sign(f"layer{i}/output", z, dims)


def _build_graph(model: DeployModel, weights: str) -> tuple[_Graph, int, tuple[int, int]]:
    layers = _validated_layers(model)
    graph = _ModelGraph(weights)
    x = graph.activation("q", _FLOAT32, model.in_features)
    v = x
    convs = [layer.conv for layer in layers if layer.conv is not None]
    if convs:
        v = graph.to_nhwc("q/nhwc", v, convs[0].in_shape)
    for i, layer in enumerate(layers[:-1]):
        if layer.conv is None:
            v = graph.dense(i, v, layer)
            continue
        v = graph.conv(i, v, layer)
        if i == len(convs) - 1:
            v = graph.to_flat(f"layer{i}/flat", v, layer.conv.out_shape)
    w = layers[-1].weight
    kernel = graph.weight(f"layer{len(layers) - 1}/weight", w)
    logits = graph.activation("logits", _FLOAT32, w.shape[0])
    # Optional bias input of FULLY_CONNECTED omitted with index -1.
    graph.op(
        _OPS["FULLY_CONNECTED"], (v, kernel, -1), (logits,), options_type=8, options=_fc_options
    )
    axis = graph.const("class_axis", np.ones((1,), np.int32))
    prediction = graph.activation("prediction", _INT32)
    graph.op(
        _OPS["ARG_MAX"], (logits, axis), (prediction,), options_type=40, options=_argmax_options
    )
    meta = json.dumps(_metadata(model, weights), sort_keys=True).encode()
    graph.metadata.append((TFLITE_METADATA_NAME, graph.buffer(meta)))
    return graph, x, (logits, prediction)


def _byte_vector(builder: Any, data: bytes, alignment: int = 16) -> int:
    builder.StartVector(1, len(data), alignment)
    builder.head -= len(data)
    builder.Bytes[builder.head : builder.head + len(data)] = data
    return builder.EndVector()


def _int_vector(builder: Any, values: tuple[int, ...], dtype: type = np.int32) -> int:
    return builder.CreateNumpyVector(np.asarray(values, dtype=dtype))


def _offset_vector(builder: Any, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _serialize(graph: _Graph, inputs: tuple[int, ...], outputs: tuple[int, ...]) -> bytes:
    import flatbuffers

    tflite = _import_schema()
    builder = flatbuffers.Builder(1024 + sum(len(b) + 32 for b in graph.buffers))
    buffers = []
    for data in graph.buffers:
        vec = _byte_vector(builder, data) if data else None
        tflite.BufferStart(builder)
        if vec is not None:
            tflite.BufferAddData(builder, vec)
        buffers.append(tflite.BufferEnd(builder))

    tensors = []
    for tensor in graph.tensors:
        name = builder.CreateString(tensor.name)
        shape = _int_vector(builder, tensor.shape)
        signature = _int_vector(builder, tensor.signature) if tensor.signature else None
        quant = None
        if tensor.quantized:
            scale = builder.CreateNumpyVector(np.ones((1,), np.float32))
            zero_point = _int_vector(builder, (0,), np.int64)
            tflite.QuantizationParametersStart(builder)
            tflite.QuantizationParametersAddScale(builder, scale)
            tflite.QuantizationParametersAddZeroPoint(builder, zero_point)
            quant = tflite.QuantizationParametersEnd(builder)
        tflite.TensorStart(builder)
        tflite.TensorAddShape(builder, shape)
        tflite.TensorAddType(builder, tensor.dtype)
        tflite.TensorAddBuffer(builder, tensor.buffer)
        tflite.TensorAddName(builder, name)
        if quant is not None:
            tflite.TensorAddQuantization(builder, quant)
        if signature is not None:
            tflite.TensorAddShapeSignature(builder, signature)
        tensors.append(tflite.TensorEnd(builder))

    codes: list[tuple[int, int]] = []
    for op in graph.ops:
        if (op.code, op.version) not in codes:
            codes.append((op.code, op.version))
    operators = []
    for op in graph.ops:
        options = op.options(builder) if op.options is not None else None
        op_inputs = _int_vector(builder, op.inputs)
        op_outputs = _int_vector(builder, op.outputs)
        tflite.OperatorStart(builder)
        tflite.OperatorAddOpcodeIndex(builder, codes.index((op.code, op.version)))
        tflite.OperatorAddInputs(builder, op_inputs)
        tflite.OperatorAddOutputs(builder, op_outputs)
        if options is not None:
            tflite.OperatorAddBuiltinOptionsType(builder, op.options_type)
            tflite.OperatorAddBuiltinOptions(builder, options)
        operators.append(tflite.OperatorEnd(builder))

    tensor_vec = _offset_vector(builder, tensors)
    input_vec = _int_vector(builder, inputs)
    output_vec = _int_vector(builder, outputs)
    operator_vec = _offset_vector(builder, operators)
    subgraph_name = builder.CreateString("main")
    tflite.SubGraphStart(builder)
    tflite.SubGraphAddTensors(builder, tensor_vec)
    tflite.SubGraphAddInputs(builder, input_vec)
    tflite.SubGraphAddOutputs(builder, output_vec)
    tflite.SubGraphAddOperators(builder, operator_vec)
    tflite.SubGraphAddName(builder, subgraph_name)
    subgraph = tflite.SubGraphEnd(builder)

    opcodes = []
    for code, version in codes:
        tflite.OperatorCodeStart(builder)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(builder, min(code, _DEPRECATED_CODE_LIMIT))
        tflite.OperatorCodeAddBuiltinCode(builder, code)
        tflite.OperatorCodeAddVersion(builder, version)
        opcodes.append(tflite.OperatorCodeEnd(builder))

    metadata = []
    for name, buffer in graph.metadata:
        name_offset = builder.CreateString(name)
        tflite.MetadataStart(builder)
        tflite.MetadataAddName(builder, name_offset)
        tflite.MetadataAddBuffer(builder, buffer)
        metadata.append(tflite.MetadataEnd(builder))

    def tensor_maps(indices: tuple[int, ...]) -> int:
        maps = []
        for index in indices:
            name_offset = builder.CreateString(graph.tensors[index].name)
            tflite.TensorMapStart(builder)
            tflite.TensorMapAddName(builder, name_offset)
            tflite.TensorMapAddTensorIndex(builder, index)
            maps.append(tflite.TensorMapEnd(builder))
        return _offset_vector(builder, maps)

    signature_inputs, signature_outputs = tensor_maps(inputs), tensor_maps(outputs)
    signature_key = builder.CreateString(SIGNATURE_KEY)
    tflite.SignatureDefStart(builder)
    tflite.SignatureDefAddInputs(builder, signature_inputs)
    tflite.SignatureDefAddOutputs(builder, signature_outputs)
    tflite.SignatureDefAddSignatureKey(builder, signature_key)
    tflite.SignatureDefAddSubgraphIndex(builder, 0)
    signature = tflite.SignatureDefEnd(builder)

    opcode_vec = _offset_vector(builder, opcodes)
    subgraph_vec = _offset_vector(builder, [subgraph])
    buffer_vec = _offset_vector(builder, buffers)
    metadata_vec = _offset_vector(builder, metadata)
    signature_vec = _offset_vector(builder, [signature])
    description = builder.CreateString("lightning-bet deploy-mode BNN (builtin ops, exact)")
    tflite.ModelStart(builder)
    tflite.ModelAddVersion(builder, 3)
    tflite.ModelAddOperatorCodes(builder, opcode_vec)
    tflite.ModelAddSubgraphs(builder, subgraph_vec)
    tflite.ModelAddDescription(builder, description)
    tflite.ModelAddBuffers(builder, buffer_vec)
    tflite.ModelAddMetadata(builder, metadata_vec)
    tflite.ModelAddSignatureDefs(builder, signature_vec)
    builder.Finish(tflite.ModelEnd(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def write_tflite(
    model: DeployModel,
    path: str | os.PathLike[str] | None = None,
    weights: Literal["float32", "int8"] = "float32",
) -> bytes:
    """Write a deploy-mode model as a ``.tflite`` flatbuffer of builtin ops only.

    The graph (module docstring) reproduces deploy mode exactly: the integer logits equal
    :func:`~lightning_bet.deploy.fold.deploy_forward`'s on every input, and the prediction is
    the first maximal logit.

    Args:
        model: the deploy-mode network (convolutional layers, then dense layers; weights and
            directions ``±1``, integer thresholds).
        path: if given, also write the bytes to this file.
        weights: ``"float32"`` (default; 4 bytes per binary weight) or ``"int8"`` (1 byte per
            weight, a ``DEQUANTIZE`` op converts them to float32 at load time; exact).

    Returns:
        The flatbuffer bytes. Input ``"q"``: float32 ``(N, F)`` integer pixels (dynamic ``N``;
        for a convolutional network ``F = C * H * W`` in PyTorch's ``(C, H, W)`` order);
        outputs ``"logits"``: float32 ``(N, C)`` integer-valued unscaled logits, and
        ``"prediction"``: int32 ``(N,)``.

    Raises:
        TypeError: if ``model`` is not a ``DeployModel`` or holds non-array weights.
        ValueError: if ``model`` breaks the deploy-mode contract (no layers, mismatched shapes,
            weights or directions not ``±1``, non-integer thresholds, a hidden layer without
            threshold, an output layer with one, a convolution after a dense layer or with an
            invalid geometry) or a layer's sums could exceed ``2**24``.

    Example:
        >>> import numpy as np
        >>> from lightning_bet.deploy.model import DeployLayer, DeployModel
        >>> out = DeployLayer(np.array([[1, -1], [-1, 1]], np.int8), None, None, False)
        >>> data = write_tflite(DeployModel((out,), input_levels=16, scale=1.0))
        >>> data[4:8]
        b'TFL3'

    """
    if weights not in _WEIGHT_DTYPES:
        raise ValueError(
            f"Expected `weights` to be one of {list(_WEIGHT_DTYPES)}, but got {weights!r}"
        )
    graph, x, outputs = _build_graph(model, weights)
    data = _serialize(graph, (x,), outputs)
    if path is not None:
        with open(path, "wb") as f:
            f.write(data)
    return data


def _parse(model_bytes: bytes) -> Any:
    tflite = _import_schema()
    if not isinstance(model_bytes, bytes | bytearray | memoryview):
        raise TypeError(f"Expected `model_bytes` to be bytes, but got {type(model_bytes).__name__}")
    data = bytes(model_bytes)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError(
            "Expected `model_bytes` to be a TFLite flatbuffer (file identifier 'TFL3'), but got "
            f"{data[4:8]!r}"
        )
    return tflite.Model.GetRootAsModel(data, 0)


def read_tflite_metadata(model_bytes: bytes) -> dict[str, Any]:
    """The JSON description :func:`write_tflite` stores in the model's metadata.

    Args:
        model_bytes: a flatbuffer written by :func:`write_tflite`.

    Returns:
        ``{"format", "version", "input_levels", "input_shape", "scale", "layers", "weights",
        "inputs", "outputs"}``; ``"layers"`` lists ``[out, in]`` per layer (flattened sizes for
        a convolution). A convolutional network also has ``"convolutions"``: per conv layer
        ``{"in_shape", "out_shape", "kernel", "stride", "padding", "pool"}``.

    Raises:
        ValueError: if the model has no lightning-bet metadata entry.

    """
    model = _parse(model_bytes)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() is not None and entry.Name().decode() == TFLITE_METADATA_NAME:
            raw = model.Buffers(entry.Buffer()).DataAsNumpy()
            return json.loads(bytes(raw).decode())
    raise ValueError(
        f"Expected `model_bytes` to hold a {TFLITE_METADATA_NAME!r} metadata entry (written by "
        "write_tflite), but found none"
    )


def tflite_op_names(model_bytes: bytes) -> list[str]:
    """Names of the operators of a TFLite model's first subgraph, in execution order.

    Custom operators are listed as ``"CUSTOM:<name>"``.

    Args:
        model_bytes: a ``.tflite`` flatbuffer.

    Returns:
        e.g. ``["FULLY_CONNECTED", "GREATER_EQUAL", "SELECT_V2", ...]``.

    """
    tflite = _import_schema()
    model = _parse(model_bytes)
    names = {
        value: key
        for key, value in vars(tflite.BuiltinOperator).items()
        if not key.startswith("_") and isinstance(value, int)
    }
    subgraph = model.Subgraphs(0)
    result = []
    for i in range(subgraph.OperatorsLength()):
        code = model.OperatorCodes(subgraph.Operators(i).OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = names.get(builtin, str(builtin))
        if name == "CUSTOM":
            name = f"CUSTOM:{(code.CustomCode() or b'').decode()}"
        result.append(name)
    return result


def _interpreter_api() -> tuple[Any, Any]:
    """``(Interpreter, OpResolverType)`` from tflite-runtime, else from ai-edge-litert."""
    try:
        from tflite_runtime.interpreter import Interpreter, OpResolverType
    except ImportError:
        try:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType
        except ImportError as err:
            raise ModuleNotFoundError(
                "Running TFLite models needs a TFLite runtime: pip install tflite-runtime "
                "(Python < 3.12) or pip install ai-edge-litert"
            ) from err
    return Interpreter, OpResolverType


def run_tflite(
    model_bytes: bytes,
    q: np.ndarray,
    batch_size: int = 4096,
    op_resolver: Literal["auto", "builtin", "reference"] = "auto",
    num_threads: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Run a model written by :func:`write_tflite` on integer pixels.

    Args:
        model_bytes: the flatbuffer.
        q: integer pixels ``(N, F)`` or ``(N, *input_shape)`` in ``[0, input_levels]`` (any
            numeric dtype holding integers).
        batch_size: samples per ``invoke`` (the model's batch dimension is resized to it; 1 runs
            one sample at a time).
        op_resolver: ``"auto"`` (the runtime's default, with the XNNPACK delegate),
            ``"builtin"`` (optimized builtin kernels, no delegate) or ``"reference"``
            (reference kernels).
        num_threads: interpreter threads (runtime default if ``None``).
        progress: show a progress bar over the batches.

    Returns:
        ``(predictions, logits)``: int64 ``(N,)`` from the model's ``ARG_MAX`` and int64
        ``(N, C)`` unscaled integer logits (multiply by the model's ``scale`` for float logits).

    Raises:
        ModuleNotFoundError: if neither ``tflite-runtime`` nor ``ai-edge-litert`` is installed.
        ValueError: if ``q`` does not hold integers in ``[0, input_levels]`` of the right shape,
            or an argument is out of range.

    """
    meta = read_tflite_metadata(model_bytes)
    if op_resolver not in _OP_RESOLVERS:
        raise ValueError(
            f"Expected `op_resolver` to be one of {list(_OP_RESOLVERS)}, but got {op_resolver!r}"
        )
    check_positive_int("batch_size", batch_size)
    features = meta["layers"][0][1]
    levels = meta["input_levels"]
    q = np.asarray(q)
    if q.ndim < 2 or math.prod(q.shape[1:]) != features:
        raise ValueError(
            f"Expected `q` to have shape (N, {features}) or (N, *input_shape) with {features} "
            f"features per sample, but got {q.shape}"
        )
    if q.dtype.kind not in "iuf":
        raise ValueError(f"Expected `q` to hold numbers, but got dtype {q.dtype}")
    flat = q.reshape(q.shape[0], features)
    if flat.size and (
        not np.array_equal(flat, np.round(flat)) or flat.min() < 0 or flat.max() > levels
    ):
        raise ValueError(
            f"Expected `q` to hold integer pixels in [0, {levels}], but got values in "
            f"[{flat.min()}, {flat.max()}] (integers: {np.array_equal(flat, np.round(flat))})"
        )
    interpreter_cls, resolver_type = _interpreter_api()
    resolver = {
        "auto": resolver_type.AUTO,
        "builtin": resolver_type.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        "reference": resolver_type.BUILTIN_REF,
    }[op_resolver]
    interpreter = interpreter_cls(
        model_content=bytes(model_bytes),
        num_threads=num_threads,
        experimental_op_resolver_type=resolver,
    )
    input_index = interpreter.get_input_details()[0]["index"]
    by_name = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    logits_index, prediction_index = by_name["logits"], by_name["prediction"]
    classes = meta["layers"][-1][0]
    n = flat.shape[0]
    logits = np.empty((n, classes), np.int64)
    predictions = np.empty((n,), np.int64)
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="tflite", unit="batch")
    current = None
    for start in starts:
        chunk = flat[start : start + batch_size].astype(np.float32)
        if chunk.shape[0] != current:
            interpreter.resize_tensor_input(input_index, list(chunk.shape), strict=True)
            interpreter.allocate_tensors()
            current = chunk.shape[0]
        interpreter.set_tensor(input_index, chunk)
        interpreter.invoke()
        logits[start : start + len(chunk)] = interpreter.get_tensor(logits_index)
        predictions[start : start + len(chunk)] = interpreter.get_tensor(prediction_index)
    return predictions, logits


def tflite_size_report(model: DeployModel) -> dict[str, int | float]:
    """Sizes in bytes of the TFLite exports of ``model`` next to the 1-bit weight payload.

    Args:
        model: the deploy-mode network.

    Returns:
        ``{"tflite_float32_bytes", "tflite_int8_bytes", "weight_count", "weight_bits_bytes",
        "float32_over_bits", "int8_over_bits"}``: the full flatbuffer sizes for both weight
        storages, the number of binary weights, the bytes of those weights packed at 1 bit each
        as the bitstream stores them (a dense layer's rows each padded to 32-bit words; a
        convolutional layer's ``C_out * C_in * k * k`` kernel bits as one vector, padded once
        to a 32-bit word: ``export/FORMAT.md``, version 2), and the size ratios.

    """
    float_bytes = len(write_tflite(model, weights="float32"))
    int8_bytes = len(write_tflite(model, weights="int8"))
    count = sum(layer.weight.size for layer in model.layers)
    bits = sum(
        4 * math.ceil(layer.weight.size / 32)
        if isinstance(layer, DeployConv)
        else 4 * layer.shape[0] * math.ceil(layer.shape[1] / 32)
        for layer in model.layers
    )
    return {
        "tflite_float32_bytes": float_bytes,
        "tflite_int8_bytes": int8_bytes,
        "weight_count": int(count),
        "weight_bits_bytes": int(bits),
        "float32_over_bits": float_bytes / bits,
        "int8_over_bits": int8_bytes / bits,
    }
