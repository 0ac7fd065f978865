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
- output layer: ``logits = FULLY_CONNECTED(v, W)`` (integer values, unscaled: multiply by
  ``model.scale`` for the float logits) and ``prediction = ARG_MAX(logits, axis=1)`` (int32;
  the builtin kernel keeps the first index on ties, as deploy mode does, which the tests check).
- the signature ``"serving_default"`` names them, for ``Interpreter.get_signature_runner()``;
  a metadata entry ``"lightning_bet"`` holds a JSON description (:func:`read_tflite_metadata`).

Exactness: every value in the graph is an integer. A float32 sum of integers is exact, whatever
the summation order, as long as every partial sum stays within ``2**24``. With fan-in ``n`` and
inputs bounded by ``m`` (``m = input_levels`` for pixel inputs, 1 for ``±1`` inputs), ``|a| <= B =
n * m``; thresholds are clamped to ``[-(B + 1), B + 1]`` (which does not change any output, since
``a`` never leaves ``[-B, B]``), so partial sums including the bias stay within ``2 B + 1``.
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
from lightning_bet.deploy.model import DeployModel

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

    def activation(self, name: str, dtype: int, width: int | None) -> int:
        """A ``(N, width)`` (or ``(N,)`` for ``width=None``) tensor with a dynamic batch."""
        shape = (1,) if width is None else (1, width)
        signature = (-1,) if width is None else (-1, width)
        self.tensors.append(_Tensor(name, shape, signature, dtype, 0))
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


def _validated_layers(
    model: DeployModel,
) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None, bool, int]]:
    """Check ``model`` against the deploy-mode contract; ``(W, T, d, binary, bound)`` per layer."""
    if not isinstance(model, DeployModel):
        raise TypeError(f"Expected `model` to be a DeployModel, but got {type(model).__name__}")
    levels = model.input_levels
    check_positive_int("model.input_levels", levels, types=(int, np.integer))
    if not isinstance(model.scale, int | float | np.floating) or not model.scale > 0:
        raise ValueError(f"Expected `model.scale` to be a float > 0, but got {model.scale!r}")
    layers = tuple(model.layers)
    if not layers:
        raise ValueError("Expected `model.layers` to hold at least the output layer, but got ()")
    checked = []
    width = None
    for i, layer in enumerate(layers):
        prefix = f"model.layers[{i}]"
        is_output = i == len(layers) - 1
        weight = layer.weight
        if not isinstance(weight, np.ndarray) or weight.ndim != 2 or 0 in weight.shape:
            shape = getattr(weight, "shape", type(weight).__name__)
            raise ValueError(
                f"Expected `{prefix}.weight` to be a non-empty 2-D numpy array (out, in), but got "
                f"{shape}"
            )
        out, fan_in = weight.shape
        _check_array(f"{prefix}.weight", weight, (out, fan_in))
        _check_signs(f"{prefix}.weight", weight)
        if width is None:
            flat = math.prod(model.input_shape) if len(model.input_shape) else fan_in
            if flat != fan_in:
                raise ValueError(
                    f"Expected `model.layers[0].weight` to have {flat} inputs "
                    f"(`model.input_shape` {tuple(model.input_shape)}), but got {fan_in}"
                )
        elif fan_in != width:
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
        binary = bool(layer.binary_input)
        bound = _layer_bound(fan_in, binary, int(levels))
        if 2 * bound + 1 > _EXACT_LIMIT:
            raise ValueError(
                f"Expected `{prefix}` to keep float32 sums exact (fan-in x max |input| = {bound} "
                f"must be at most {(_EXACT_LIMIT - 1) // 2}), but got fan-in {fan_in} with "
                f"inputs up to {1 if binary else levels}"
            )
        checked.append((weight, threshold, direction, binary, bound))
        width = out
    return checked


def _metadata(model: DeployModel, weights: str) -> dict[str, Any]:
    return {
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


def _build_graph(model: DeployModel, weights: str) -> tuple[_Graph, int, tuple[int, int]]:
    layers = _validated_layers(model)
    graph = _Graph()
    fc, ge, select, argmax, dequantize = 9, 62, 123, 56, 6  # BuiltinOperator codes
    plus = graph.const("plus_one", np.ones((1,), np.float32))
    minus = graph.const("minus_one", -np.ones((1,), np.float32))
    zero = graph.const("zero", np.zeros((1,), np.float32))

    def fc_options(builder: Any) -> int:
        tflite = _import_schema()
        tflite.FullyConnectedOptionsStart(builder)
        return tflite.FullyConnectedOptionsEnd(builder)  # no activation, default weights format

    def sign(name: str, x: int, width: int) -> int:
        cond = graph.activation(f"{name}/ge0", _BOOL, width)
        graph.op(ge, (x, zero), (cond,))
        out = graph.activation(name, _FLOAT32, width)
        graph.op(select, (cond, plus, minus), (out,))
        return out

    def weight_tensor(name: str, w: np.ndarray) -> int:
        if weights == "float32":
            return graph.const(name, w.astype(np.float32))
        stored = graph.const(f"{name}/int8", w.astype(np.int8), quantized=True)
        out = len(graph.tensors)
        graph.tensors.append(_Tensor(name, tuple(w.shape), None, _FLOAT32, 0))
        graph.op(dequantize, (stored,), (out,), version=2)  # version 2: int8 input
        return out

    x = graph.activation("q", _FLOAT32, layers[0][0].shape[1])
    v = x
    for i, (w, t, d, _, bound) in enumerate(layers[:-1]):
        out = w.shape[0]
        d64 = d.astype(np.int64)
        t64 = np.clip(t, -(bound + 1), bound + 1).astype(np.int64)  # clip first: no wrap-around
        kernel = weight_tensor(f"layer{i}/weight", d64[:, None] * w.astype(np.int64))
        bias = graph.const(f"layer{i}/bias", (-d64 * t64).astype(np.float32))
        z = graph.activation(f"layer{i}/d_times_a_minus_t", _FLOAT32, out)
        graph.op(fc, (v, kernel, bias), (z,), options_type=8, options=fc_options)
        v = sign(f"layer{i}/output", z, out)
    w = layers[-1][0]
    classes = w.shape[0]
    kernel = weight_tensor(f"layer{len(layers) - 1}/weight", w)
    logits = graph.activation("logits", _FLOAT32, classes)
    # Optional bias input of FULLY_CONNECTED omitted with index -1.
    graph.op(fc, (v, kernel, -1), (logits,), options_type=8, options=fc_options)

    def argmax_options(builder: Any) -> int:
        tflite = _import_schema()
        tflite.ArgMaxOptionsStart(builder)
        tflite.ArgMaxOptionsAddOutputType(builder, _INT32)
        return tflite.ArgMaxOptionsEnd(builder)

    axis = graph.const("class_axis", np.ones((1,), np.int32))
    prediction = graph.activation("prediction", _INT32, None)
    graph.op(argmax, (logits, axis), (prediction,), options_type=40, options=argmax_options)
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

    The graph (module docstring) reproduces deploy mode exactly: integer logits equal
    ``W_L @ ... `` of :class:`~lightning_bet.deploy.model.DeployModel` on every input, and the
    prediction is the first maximal logit.

    Args:
        model: the deploy-mode network (dense layers; weights and directions ``±1``, integer
            thresholds).
        path: if given, also write the bytes to this file.
        weights: ``"float32"`` (default; 4 bytes per binary weight) or ``"int8"`` (1 byte per
            weight, a ``DEQUANTIZE`` op converts them to float32 at load time; exact).

    Returns:
        The flatbuffer bytes. Input ``"q"``: float32 ``(N, F)`` integer pixels (dynamic ``N``);
        outputs ``"logits"``: float32 ``(N, C)`` integer-valued unscaled logits, and
        ``"prediction"``: int32 ``(N,)``.

    Raises:
        TypeError: if ``model`` is not a ``DeployModel`` or holds non-array weights.
        ValueError: if ``model`` breaks the deploy-mode contract (no layers, mismatched shapes,
            weights or directions not ``±1``, non-integer thresholds, a hidden layer without
            threshold, an output layer with one) or a layer's sums could exceed ``2**24``.

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
        "inputs", "outputs"}``; ``"layers"`` lists ``[out, in]`` per layer.

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
        with every row padded to 32-bit words (as in the bitstream), and the size ratios.

    """
    float_bytes = len(write_tflite(model, weights="float32"))
    int8_bytes = len(write_tflite(model, weights="int8"))
    count = sum(layer.weight.size for layer in model.layers)
    bits = sum(4 * layer.shape[0] * math.ceil(layer.shape[1] / 32) for layer in model.layers)
    return {
        "tflite_float32_bytes": float_bytes,
        "tflite_int8_bytes": int8_bytes,
        "weight_count": int(count),
        "weight_bits_bytes": int(bits),
        "float32_over_bits": float_bytes / bits,
        "int8_over_bits": int8_bytes / bits,
    }
