"""The peers' side of ``lightning-bet bench peers``; runs inside the peers venv (``make peers``).

It imports only what that venv holds (numpy, TensorFlow + larq + Larq Compute Engine, torch +
PyTorchFI), never ``lightning_bet``, and talks to the benchmark over stdin/stdout: one JSON
command per line in, one JSON answer per line out. Commands:

- ``{"cmd": "lce_build", "name", "sizes", "variant", "batch"}``: a larq network of the given
  dense sizes (``variant`` ``"dense"``: ``QuantDense`` layers; ``"conv1x1"``: the same layers
  as 1x1 ``QuantConv2D`` on a 1x1 map, which LCE turns into its binary ``LceBconv2d``), converted
  with LCE for a fixed batch size, loaded into LCE's interpreter on one thread. Answers the
  model's size and op names.
- ``{"cmd": "lce_time", "name", "calls"}``: seconds per sample over ``calls`` interpreter calls.
- ``{"cmd": "pytorchfi", "weights", "x", "y", "p", "maps", "seed", "mode"}``: accuracy and
  seconds per fault map of PyTorchFI weight injection on the float network stored in the
  ``weights`` npz (``mode`` ``"layer"``: one custom injection function per layer that negates all
  of the layer's faulty weights; ``"location"``: one injection per faulty weight).
- ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

_MODELS: dict = {}


def _lce_model(sizes: list[int], variant: str, batch: int):  # noqa: ANN202
    import larq as lq
    import tf_keras as keras

    binary = {"kernel_quantizer": "ste_sign", "kernel_constraint": "weight_clip", "use_bias": False}
    inputs = keras.Input(shape=(sizes[0],), batch_size=batch)
    h = inputs
    if variant == "conv1x1":
        h = keras.layers.Reshape((1, 1, sizes[0]))(h)
    for i, width in enumerate(sizes[1:]):
        quantizer = {"input_quantizer": "ste_sign"} if i > 0 else {}
        if variant == "conv1x1":
            h = lq.layers.QuantConv2D(width, 1, **quantizer, **binary)(h)
        else:
            h = lq.layers.QuantDense(width, **quantizer, **binary)(h)
        if i < len(sizes) - 2:
            h = keras.layers.BatchNormalization(momentum=0.9, scale=False)(h)
    if variant == "conv1x1":
        h = keras.layers.Flatten()(h)
    return keras.Model(inputs, h)


def _op_names(flatbuffer: bytes) -> list[str]:
    """Builtin and custom operator names of a TFLite flatbuffer (LCE's custom ops included)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    names = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        custom = code.CustomCode()
        names.append(custom.decode() if custom else builtin.get(code.BuiltinCode(), "?"))
    return names


def lce_build(name: str, sizes: list[int], variant: str, batch: int) -> dict:
    """Build, convert and load one LCE model; keep its interpreter and an input under ``name``."""
    import larq_compute_engine as lce
    import tensorflow as tf
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    tf.random.set_seed(0)
    model = _lce_model(sizes, variant, batch)
    flatbuffer = lce.convert_keras_model(model)
    interpreter = Interpreter(flatbuffer, num_threads=1)
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 256, (batch, sizes[0])) / 255).astype(np.float32)
    interpreter.interpreter.predict([x])  # warm up
    _MODELS[name] = (interpreter, x)
    return {"bytes": len(flatbuffer), "ops": sorted(set(_op_names(flatbuffer)))}


def lce_time(name: str, calls: int) -> dict:
    """Seconds per sample of ``calls`` interpreter calls of model ``name``."""
    interpreter, x = _MODELS[name]
    predict = interpreter.interpreter.predict
    start = time.perf_counter()
    for _ in range(calls):
        predict([x])
    return {"seconds_per_sample": (time.perf_counter() - start) / (calls * x.shape[0])}


def _float_network(weights: dict):  # noqa: ANN202
    import torch
    from torch import nn

    class Sign(nn.Module):
        def forward(self, x):  # noqa: ANN001, ANN202, D102
            return torch.where(x >= 0, 1.0, -1.0)

    layers: list = []
    count = len([k for k in weights if k.startswith("w")])
    for i in range(count):
        w = torch.from_numpy(weights[f"w{i}"].astype(np.float32))
        linear = nn.Linear(w.shape[1], w.shape[0], bias=False)
        linear.weight.data.copy_(w)
        layers.append(linear)
        if i < count - 1:
            bn = nn.BatchNorm1d(w.shape[0])
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, key).data.copy_(torch.from_numpy(weights[f"bn{i}_{key}"]))
            layers += [bn, Sign()]
    return nn.Sequential(*layers).eval()


def pytorchfi(
    weights: str, x: str, y: str, p: float, maps: int, seed: int, mode: str, batch: int = 10000
) -> dict:
    """Accuracy over ``maps`` fault maps at rate ``p`` with PyTorchFI, and seconds per map."""
    import torch
    from pytorchfi.core import fault_injection
    from torch import nn

    torch.set_num_threads(1)
    net = _float_network(dict(np.load(weights)))
    inputs = torch.from_numpy(np.load(x).astype(np.float32) / 255)
    labels = torch.from_numpy(np.load(y).astype(np.int64))
    injector = fault_injection(
        net, batch, input_shape=[inputs.shape[1]], layer_types=[nn.Linear], use_cuda=False
    )
    generator = torch.Generator().manual_seed(seed)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    accuracies, seconds = [], []
    for _ in range(maps):
        masks = [torch.rand(m.weight.shape, generator=generator) < p for m in linears]
        start = time.perf_counter()
        if mode == "layer":
            pending = iter(masks)

            def negate(weight, index, _pending=pending):  # noqa: ANN001, ANN202
                weight[next(_pending)] *= -1  # the whole layer's faults in one call
                return weight[index]

            corrupted = injector.declare_weight_fi(
                function=negate,
                layer_num=list(range(len(linears))),
                k=[0] * len(linears),
                dim1=[0] * len(linears),
                dim2=[None] * len(linears),
                dim3=[None] * len(linears),
            )
        else:
            layer_num, k, dim1, values = [], [], [], []
            for i, (mask, linear) in enumerate(zip(masks, linears, strict=True)):
                rows, cols = torch.nonzero(mask, as_tuple=True)
                layer_num += [i] * len(rows)
                k += rows.tolist()
                dim1 += cols.tolist()
                values += (-linear.weight[rows, cols]).tolist()
            corrupted = injector.declare_weight_fi(
                layer_num=layer_num,
                k=k,
                dim1=dim1,
                dim2=[None] * len(k),
                dim3=[None] * len(k),
                value=values,
            )
        with torch.no_grad():
            correct = 0
            for lo in range(0, len(labels), batch):
                logits = corrupted(inputs[lo : lo + batch])
                correct += int((logits.argmax(1) == labels[lo : lo + batch]).sum())
        seconds.append(time.perf_counter() - start)
        accuracies.append(correct / len(labels))
    return {"accuracies": accuracies, "seconds_per_map": seconds}


def main() -> None:
    """Serve commands from stdin until ``quit``."""
    if hasattr(os, "sched_setaffinity") and os.environ.get("LIGHTNING_BET_PEERS_CPU"):
        os.sched_setaffinity(0, {int(os.environ["LIGHTNING_BET_PEERS_CPU"])})
    handlers = {"lce_build": lce_build, "lce_time": lce_time, "pytorchfi": pytorchfi}
    for line in sys.stdin:
        request = json.loads(line)
        command = request.pop("cmd")
        if command == "quit":
            break
        try:
            answer = {"ok": True, **handlers[command](**request)}
        except Exception as error:  # noqa: BLE001 - reported to the benchmark, which raises
            answer = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
