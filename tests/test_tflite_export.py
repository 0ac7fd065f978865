"""TFLite export: agreement with deploy mode, builtin-op graph, validation, sizes."""

import copy
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lightning_bet.deploy.model import DeployLayer, DeployModel
from lightning_bet.deploy.tflite_export import (
    read_tflite_metadata,
    run_tflite,
    tflite_op_names,
    tflite_size_report,
    write_tflite,
)
from tests.deploy_models import random_deploy_model

RESOLVERS = ["auto", "builtin", "reference"]
_WEIGHTS = ["float32", "int8"]
ALLOWED_OPS = {"FULLY_CONNECTED", "GREATER_EQUAL", "SELECT_V2", "ARG_MAX", "DEQUANTIZE"}


def _runtime_available() -> bool:
    try:
        import tflite_runtime.interpreter  # noqa: F401
    except ImportError:
        try:
            import ai_edge_litert.interpreter  # noqa: F401
        except ImportError:
            return False
    return True


needs_runtime = pytest.mark.skipif(
    not _runtime_available(),
    reason="no TFLite runtime importable (pip install tflite-runtime or ai-edge-litert)",
)


def reference_logits(model: DeployModel, q: np.ndarray) -> np.ndarray:
    """Deploy mode straight from the contract, in int64 numpy."""
    v = np.asarray(q).reshape(len(q), -1).astype(np.int64)
    for layer in model.layers:
        a = v @ layer.weight.astype(np.int64).T
        if layer.threshold is None:
            return a
        t = layer.threshold.astype(np.int64)
        # d (a - T) >= 0 written without arithmetic on T, which may be near the int64 limits
        v = np.where(np.where(layer.direction == 1, a >= t, a <= t), 1, -1)
    raise AssertionError("no output layer")


def first_argmax(logits: np.ndarray) -> np.ndarray:
    """First index of the maximum, written without np.argmax."""
    return (logits == logits.max(axis=1, keepdims=True)).astype(np.int8).argmax(axis=1)


def random_model(sizes, levels, rng, q) -> DeployModel:
    """Random network (tests.deploy_models) with four constant neurons per hidden layer whose
    thresholds lie far beyond int32 (gamma = 0 style)."""
    far = [2**40, -(2**40), 2**62, -(2**62)]
    return random_deploy_model(sizes, levels, rng, q, lambda i, n_in: far, scale=0.125)


@pytest.fixture(scope="module")
def fashion_case():
    rng = np.random.default_rng(0)
    q = rng.integers(0, 256, size=(300, 784))
    q[:10] = 0
    q[10:20] = 255
    q[20:40, : 784 // 2] = 0  # half-blank images, as in real data
    model = random_model([784, 512, 512, 10], 255, rng, q)
    return model, q


def test_reference_sees_equalities_and_both_directions(fashion_case):
    model, q = fashion_case
    a = q.astype(np.int64) @ model.layers[0].weight.astype(np.int64).T
    hit = a == model.layers[0].threshold
    d = model.layers[0].direction
    assert hit[:, d == 1].any() and hit[:, d == -1].any()  # the edge case is exercised


@needs_runtime
@pytest.mark.parametrize("weights", ["float32", "int8"])
def test_fashion_format_random_inputs_match_deploy_mode(fashion_case, weights):
    model, q = fashion_case
    data = write_tflite(model, weights=weights)
    expected = reference_logits(model, q)
    preds, logits = run_tflite(data, q)
    np.testing.assert_array_equal(logits, expected)
    np.testing.assert_array_equal(preds, first_argmax(expected))
    assert preds.dtype == np.int64 and logits.dtype == np.int64


@needs_runtime
@pytest.mark.parametrize("resolver", RESOLVERS)
@pytest.mark.parametrize("batch_size", [1, 37, 4096])
def test_all_kernels_and_batch_sizes_agree(resolver, batch_size):
    rng = np.random.default_rng(1)
    q = rng.integers(0, 17, size=(60, 1, 8, 8))
    model = random_model([64, 48, 32, 10], 16, rng, q)
    model = replace(model, input_shape=(1, 8, 8))
    preds, logits = run_tflite(write_tflite(model), q, batch_size=batch_size, op_resolver=resolver)
    expected = reference_logits(model, q)
    np.testing.assert_array_equal(logits, expected)
    np.testing.assert_array_equal(preds, first_argmax(expected))


def _edge_model(t, d, levels=4) -> DeployModel:
    # hidden: 2 neurons on 3 pixel inputs; output decodes the two hidden bits uniquely:
    # logits = (h0 + h1, h0 - h1).
    w0 = np.array([[1, -1, 1], [-1, 1, 1]], np.int8)
    hidden = DeployLayer(w0, np.array(t, np.int64), np.array(d, np.int8), False)
    out = DeployLayer(np.array([[1, 1], [1, -1]], np.int8), None, None, True)
    return DeployModel((hidden, out), levels, 1.0, (3,))


def _decode(logits):
    return np.stack([(logits[:, 0] + logits[:, 1]) // 2, (logits[:, 0] - logits[:, 1]) // 2], 1)


@needs_runtime
@pytest.mark.parametrize("resolver", RESOLVERS)
def test_threshold_edge_cases(resolver):
    q = np.array([[3, 1, 2], [0, 0, 0], [4, 4, 4]])  # a0 = (4, 0, 4), a1 = (0, 0, 4)
    cases = [
        # (thresholds, directions, expected hidden outputs per sample)
        ((4, 0), (1, 1), [[1, 1], [-1, 1], [1, 1]]),  # a == T with d = +1 gives +1
        ((4, 0), (-1, -1), [[1, 1], [1, 1], [1, -1]]),  # a == T with d = -1 gives +1
        ((5, 1), (1, -1), [[-1, 1], [-1, 1], [-1, -1]]),
        ((13, -13), (1, 1), [[-1, 1], [-1, 1], [-1, 1]]),  # just beyond |a| <= 12
        ((2**62, -(2**62)), (-1, -1), [[1, -1], [1, -1], [1, -1]]),  # gamma = 0 style
        ((-(2**63), 2**63 - 1), (1, 1), [[1, -1], [1, -1], [1, -1]]),  # int64 extremes
        ((12, -12), (1, -1), [[-1, -1], [-1, -1], [-1, -1]]),  # exactly at the bound
    ]
    for t, d, hidden in cases:
        model = _edge_model(t, d)
        np.testing.assert_array_equal(_decode(reference_logits(model, q)), hidden)
        _, logits = run_tflite(write_tflite(model), q, op_resolver=resolver)
        np.testing.assert_array_equal(_decode(logits), hidden, err_msg=f"T={t}, d={d}")


@needs_runtime
@pytest.mark.parametrize("resolver", RESOLVERS)
def test_logit_ties_give_the_first_index(resolver):
    rng = np.random.default_rng(2)
    row = rng.choice(np.array([-1, 1], np.int8), size=16)
    # classes 1, 2 and 4 always tie, class 3 is their negation, class 0 ties on zero logits
    w = np.stack([np.zeros(16, np.int8) + 1, row, row, -row, row])
    w[0, :8] = -1  # class 0: logit = sum of the second half minus the first half
    out = DeployLayer(w, None, None, True)
    hidden_w = rng.choice(np.array([-1, 1], np.int8), size=(16, 5))
    hidden = DeployLayer(hidden_w, np.zeros(16, np.int64), np.ones(16, np.int8), False)
    model = DeployModel((hidden, out), 3, 1.0, (5,))
    q = np.array(np.meshgrid(*[range(4)] * 5)).reshape(5, -1).T  # all 1024 inputs
    expected = reference_logits(model, q)
    ties = (expected == expected.max(1, keepdims=True)).sum(1)
    assert (ties >= 2).sum() > 100 and (ties >= 3).any()
    preds, logits = run_tflite(write_tflite(model), q, op_resolver=resolver)
    np.testing.assert_array_equal(logits, expected)
    np.testing.assert_array_equal(preds, first_argmax(expected))


@needs_runtime
def test_output_layer_only():
    rng = np.random.default_rng(3)
    q = rng.integers(0, 9, size=(40, 20))
    w = rng.choice(np.array([-1, 1], np.int8), (7, 20))
    model = DeployModel((DeployLayer(w, None, None, False),), 8, 2.0)
    expected = reference_logits(model, q)
    preds, logits = run_tflite(write_tflite(model), q)
    np.testing.assert_array_equal(logits, expected)
    np.testing.assert_array_equal(preds, first_argmax(expected))
    assert tflite_op_names(write_tflite(model)) == ["FULLY_CONNECTED", "ARG_MAX"]


@needs_runtime
def test_trained_digits_model_matches_deploy_mode_on_every_test_sample():
    import lightning as L
    import torch

    from lightning_bet import BNNClassifier, DigitsDataModule
    from lightning_bet.data.digits import load_digits_splits
    from lightning_bet.deploy.fold import deploy_forward, to_deploy

    L.seed_everything(0, verbose=False)
    module = BNNClassifier(hidden=[256, 256])
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DigitsDataModule(batch_size=64))
    module.eval()
    x, y = load_digits_splits()["test"]
    q = torch.round(x * DigitsDataModule.input_levels).to(torch.int64)
    model = to_deploy(module.net, DigitsDataModule.input_levels)
    expected = deploy_forward(model, q).numpy()
    np.testing.assert_array_equal(expected, reference_logits(model, q.numpy()))
    for weights in ("float32", "int8"):
        preds, logits = run_tflite(write_tflite(model, weights=weights), q.numpy())
        np.testing.assert_array_equal(logits, expected)
        np.testing.assert_array_equal(preds, first_argmax(expected))
    assert len(q) == 360 and (preds == y.numpy()).mean() > 0.8  # a trained model, not noise


def test_graph_uses_builtin_ops_only_and_no_sign(fashion_case, tmp_path):
    import tflite

    model, _ = fashion_case
    path = tmp_path / "model.tflite"
    for weights in ("float32", "int8"):
        data = write_tflite(model, path=path, weights=weights)
        assert path.read_bytes() == data
        parsed = tflite.Model.GetRootAsModel(data, 0)
        names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
        codes = [
            max(
                parsed.OperatorCodes(i).BuiltinCode(),
                parsed.OperatorCodes(i).DeprecatedBuiltinCode(),
            )
            for i in range(parsed.OperatorCodesLength())
        ]
        assert {names[c] for c in codes} <= ALLOWED_OPS
        assert tflite.BuiltinOperator.SIGN not in codes
        assert tflite.BuiltinOperator.CUSTOM not in codes
        assert all(parsed.OperatorCodes(i).CustomCode() is None for i in range(len(codes)))
        ops = tflite_op_names(data)
        fc_count = 3 + (3 if weights == "int8" else 0)
        assert len(ops) == 3 * 2 + 1 + 1 + (3 if weights == "int8" else 0)
        assert sum(op in ("FULLY_CONNECTED", "DEQUANTIZE") for op in ops) == fc_count
        assert ops[-1] == "ARG_MAX"
        graph = parsed.Subgraphs(0)
        x = graph.Tensors(graph.Inputs(0))
        assert x.ShapeSignatureAsNumpy().tolist() == [-1, 784]
        assert x.Type() == tflite.TensorType.FLOAT32
        assert [graph.Tensors(graph.Outputs(i)).Name() for i in range(2)] == [
            b"logits",
            b"prediction",
        ]


def test_bytes_are_deterministic_and_metadata_round_trips(fashion_case):
    model, _ = fashion_case
    data = write_tflite(model)
    assert data == write_tflite(model)
    meta = read_tflite_metadata(data)
    assert meta["input_levels"] == 255 and meta["scale"] == 0.125
    assert meta["layers"] == [[512, 784], [512, 512], [10, 512]]
    assert meta["input_shape"] == [784] and meta["weights"] == "float32"


def test_size_report():
    rng = np.random.default_rng(4)
    q = rng.integers(0, 256, size=(8, 784))
    model = random_model([784, 512, 10], 255, rng, q)
    report = tflite_size_report(model)
    count = 784 * 512 + 512 * 10
    assert report["weight_count"] == count
    assert report["weight_bits_bytes"] == 512 * 25 * 4 + 10 * 16 * 4  # rows padded to 32 bits
    assert 4 * count < report["tflite_float32_bytes"] < 4 * count + 20_000
    assert count < report["tflite_int8_bytes"] < count + 20_000
    assert (
        report["float32_over_bits"]
        == report["tflite_float32_bytes"] / (report["weight_bits_bytes"])
    )


def _small_model() -> DeployModel:
    w0 = np.array([[1, -1, 1], [-1, 1, 1]], np.int8)
    hidden = DeployLayer(w0, np.array([0, 1], np.int64), np.array([1, -1], np.int8), False)
    out = DeployLayer(np.array([[1, 1], [1, -1], [-1, 1]], np.int8), None, None, True)
    return DeployModel((hidden, out), 4, 1.0, (3,))


def _forced(obj, **fields):
    """A copy of a frozen dataclass with fields set after construction (no re-validation), as
    in-place edits or unpickled objects can produce."""
    out = copy.copy(obj)
    for name, value in fields.items():
        object.__setattr__(out, name, value)
    return out


def _forced_layer(model, index, **changes):
    layers = list(model.layers)
    layers[index] = _forced(layers[index], **changes)
    return _forced(model, layers=tuple(layers))


def test_weights_corrupted_in_place_are_rejected():
    model = _small_model()
    model.layers[0].weight[0, 1] = 0
    with pytest.raises(
        ValueError,
        match=r"`model.layers\[0\].weight` to hold only -1 and \+1, but got 0 at index \(0, 1\)",
    ):
        write_tflite(model)
    model = _small_model()
    model.layers[0].direction[1] = 3
    with pytest.raises(
        ValueError, match=r"`model.layers\[0\].direction` to hold only -1 and \+1, but got 3"
    ):
        write_tflite(model)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda m: _forced(m, layers=()), ValueError, r"`model.layers` to hold at least"),
        (
            lambda m: _forced_layer(m, 1, weight=np.ones((3, 5), np.int8)),
            ValueError,
            r"`model.layers\[1\].weight` to have 2 inputs .* got shape \(3, 5\)",
        ),
        (
            lambda m: _forced_layer(m, 0, weight=np.array([[1, -1, 1], [-1, 1, 0.5]])),
            ValueError,
            r"only -1 and \+1, but got 0.5 at index \(1, 2\)",
        ),
        (
            lambda m: _forced_layer(m, 0, weight=np.ones((0, 3), np.int8)),
            ValueError,
            r"`model.layers\[0\].weight` to be a non-empty 2-D numpy array",
        ),
        (
            lambda m: _forced_layer(m, 0, weight=[[1, -1, 1], [-1, 1, 1]]),
            ValueError,
            r"non-empty 2-D numpy array \(out, in\), but got list",
        ),
        (
            lambda m: _forced_layer(m, 0, threshold=np.array([0.5, 1.0])),
            ValueError,
            r"`model.layers\[0\].threshold` to have an integer dtype, but got float64",
        ),
        (
            lambda m: _forced_layer(m, 0, threshold=np.array([0, 1, 2])),
            ValueError,
            r"`model.layers\[0\].threshold` to have shape \(2,\), but got \(3,\)",
        ),
        (
            lambda m: _forced_layer(m, 0, threshold=None),
            ValueError,
            r"hidden layer `model.layers\[0\]` to have a threshold and a direction",
        ),
        (
            lambda m: _forced_layer(m, 1, threshold=np.zeros(3, np.int64)),
            ValueError,
            r"output layer `model.layers\[1\]` to have threshold=None",
        ),
        (
            lambda m: _forced_layer(m, 1, binary_input=False),
            ValueError,
            r"`model.layers\[1\].binary_input` to be True .* but got False",
        ),
        (
            lambda m: _forced_layer(m, 0, binary_input=True),
            ValueError,
            r"`model.layers\[0\].binary_input` to be False .* but got True",
        ),
        (
            lambda m: _forced(m, input_shape=(1, 2, 2)),
            ValueError,
            r"`model.layers\[0\].weight` to have 4 inputs \(`model.input_shape` \(1, 2, 2\)\)",
        ),
        (
            lambda m: _forced(m, input_levels=0),
            ValueError,
            r"`model.input_levels` to be a positive int, but got 0",
        ),
        (lambda m: _forced(m, scale=-1.0), ValueError, r"`model.scale` to be a float > 0"),
        (lambda m: m.layers, TypeError, r"`model` to be a DeployModel, but got tuple"),
    ],
)
def test_invalid_models_are_rejected(change, error, match):
    with pytest.raises(error, match=match):
        write_tflite(change(_small_model()))


def test_sums_that_could_leave_exact_float32_are_rejected():
    # 32 897 pixel inputs at 255 levels: |a| <= 8 388 735, 2 |a| + 1 > 2**24; 32 896 fit.
    w = np.ones((1, 32_897), np.int8)
    too_wide = DeployModel((DeployLayer(w, None, None, False),), 255, 1.0)
    with pytest.raises(
        ValueError,
        match=r"= 8388735 must be at most 8388607\), but got fan-in 32897 with inputs up to 255",
    ):
        write_tflite(too_wide)
    ok = DeployModel((DeployLayer(w[:, :32_896], None, None, False),), 255, 1.0)
    assert write_tflite(ok)[4:8] == b"TFL3"


def test_invalid_writer_and_runner_arguments():
    model = _small_model()
    with pytest.raises(ValueError, match=r"`weights` to be one of \['float32', 'int8'\]"):
        write_tflite(model, weights="int4")
    with pytest.raises(ValueError, match=r"TFLite flatbuffer \(file identifier 'TFL3'\)"):
        run_tflite(b"not a model at all", np.zeros((1, 3)))
    with pytest.raises(TypeError, match=r"`model_bytes` to be bytes, but got str"):
        read_tflite_metadata("model.tflite")


@needs_runtime
@pytest.mark.parametrize(
    ("q", "kwargs", "match"),
    [
        (np.zeros((2, 4)), {}, r"`q` to have shape \(N, 3\) .* but got \(2, 4\)"),
        (np.zeros(3), {}, r"but got \(3,\)"),
        (np.array([[0, 1, 5]]), {}, r"integer pixels in \[0, 4\], but got values in \[0, 5\]"),
        (np.array([[0, 1, -1]]), {}, r"integer pixels in \[0, 4\]"),
        (np.array([[0, 1.5, 2]]), {}, r"integer pixels in \[0, 4\].*\(integers: False\)"),
        (np.array([["a", "b", "c"]]), {}, r"`q` to hold numbers, but got dtype <U1"),
        (np.zeros((1, 3)), {"batch_size": 0}, r"`batch_size` to be a positive int, but got 0"),
        (np.zeros((1, 3)), {"op_resolver": "xnn"}, r"`op_resolver` to be one of"),
    ],
)
def test_invalid_runner_inputs(q, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_tflite(write_tflite(_small_model()), q, **kwargs)


@needs_runtime
def test_empty_batch_and_uint8_inputs():
    model = _small_model()
    data = write_tflite(model)
    preds, logits = run_tflite(data, np.zeros((0, 3), np.uint8))
    assert preds.shape == (0,) and logits.shape == (0, 3)
    q = np.array([[4, 0, 4], [1, 2, 3]], np.uint8)
    np.testing.assert_array_equal(run_tflite(data, q)[1], reference_logits(model, q))


@needs_runtime
def test_export_command_writes_an_int8_tflite(tmp_path, capsys):
    from lightning_bet.cli import main
    from lightning_bet.deploy.bitstream import read_bitstream
    from lightning_bet.deploy.cli import export_model
    from tests.test_deploy_fold import trained_digits

    _, ckpt = trained_digits()
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "digits_fcnn.yaml"
    argv = ["export", "--ckpt", str(ckpt), "--config", str(recipe)]
    main([*argv, "--out", str(tmp_path / "int8"), "--tflite-weights", "int8"])
    manifest = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    assert manifest["tflite_weights"] == "int8"
    assert manifest["agreement"]["tflite"] == 1.0  # on every digits test sample
    data = (tmp_path / "int8" / "model.tflite").read_bytes()
    assert read_tflite_metadata(data)["weights"] == "int8"
    assert tflite_op_names(data).count("DEQUANTIZE") == 3
    model = read_bitstream((tmp_path / "int8" / "model.bet").read_bytes())
    assert 3.5 < len(write_tflite(model, weights="float32")) / len(data) < 4
    assert main([*argv, "--out", str(tmp_path / "bad"), "--tflite-weights", "x"]) == 2
    assert "invalid choice: 'x' (choose from 'float32', 'int8')" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before anything is written
    with pytest.raises(  # the Python API
        ValueError, match=r"`tflite_weights` to be 'float32' or 'int8', but got 'x'"
    ):
        export_model(ckpt, recipe, tmp_path / "bad", tflite_weights="x")
    assert not (tmp_path / "bad").exists()


GOLDEN = Path(__file__).parent / "golden" / "tflite_small.json"


def describe_tflite(data: bytes) -> dict:
    """Everything that defines the graph, read with the schema classes, as JSON-able data."""
    import tflite

    parsed = tflite.Model.GetRootAsModel(data, 0)
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(tflite.TensorType).items() if not k.startswith("_")}
    numpy_types = {"FLOAT32": np.float32, "INT32": np.int32, "INT8": np.int8}
    graph = parsed.Subgraphs(0)
    tensors = []
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        raw = parsed.Buffers(t.Buffer()).DataAsNumpy()
        entry = {
            "name": t.Name().decode(),
            "type": types[t.Type()],
            "shape": t.ShapeAsNumpy().tolist() if t.ShapeLength() else [],
            "shape_signature": t.ShapeSignatureAsNumpy().tolist()
            if t.ShapeSignatureLength()
            else None,
            "data": None
            if isinstance(raw, int)
            else np.frombuffer(raw.tobytes(), numpy_types[types[t.Type()]]).tolist(),
        }
        q = t.Quantization()
        if q is not None and q.ScaleLength():
            entry["quantization"] = [q.ScaleAsNumpy().tolist(), q.ZeroPointAsNumpy().tolist()]
        tensors.append(entry)
    operators = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = parsed.OperatorCodes(op.OpcodeIndex())
        operators.append(
            {
                "op": names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())],
                "version": code.Version(),
                "inputs": op.InputsAsNumpy().tolist(),
                "outputs": op.OutputsAsNumpy().tolist(),
                "options_type": op.BuiltinOptionsType(),
            }
        )
    return {
        "version": parsed.Version(),
        "description": parsed.Description().decode(),
        "inputs": graph.InputsAsNumpy().tolist(),
        "outputs": graph.OutputsAsNumpy().tolist(),
        "tensors": tensors,
        "operators": operators,
        "metadata": read_tflite_metadata(data),
        "signature": parsed.SignatureDefs(0).SignatureKey().decode(),
    }


def _golden_model() -> DeployModel:
    w0 = np.array([[1, -1, 1], [-1, 1, 1]], np.int8)
    hidden = DeployLayer(w0, np.array([2, -(2**40)], np.int64), np.array([-1, 1], np.int8), False)
    out = DeployLayer(np.array([[1, 1], [1, -1], [-1, 1]], np.int8), None, None, True)
    return DeployModel((hidden, out), 4, 0.5, (3,))


@pytest.mark.parametrize("weights", ["float32", "int8"])
def test_graph_of_a_tiny_model_matches_the_golden_file(weights):
    # Regenerate after a deliberate change: python -m tests.test_tflite_export
    golden = json.loads(GOLDEN.read_text())[weights]
    assert describe_tflite(write_tflite(_golden_model(), weights=weights)) == golden
    tensors = {t["name"]: t for t in golden["tensors"]}
    # bias = -d * T: (d, T) = (-1, 2) gives 2; (+1, -2**40) is clamped to T = -(3 * 4 + 1): 13
    assert tensors["layer0/bias"]["data"] == [2.0, 13.0]
    stored = tensors["layer0/weight" if weights == "float32" else "layer0/weight/int8"]
    assert stored["data"] == [-1, 1, -1, -1, 1, 1]  # row 0 negated by d = -1


@needs_runtime
def test_signature_runner_of_a_stock_interpreter():
    from lightning_bet.deploy.tflite_export import _interpreter_api

    interpreter_cls, _ = _interpreter_api()
    model = _golden_model()
    q = np.array([[1, 2, 3], [4, 0, 4], [0, 0, 0]])
    runner = interpreter_cls(model_content=write_tflite(model)).get_signature_runner()
    out = runner(q=q.astype(np.float32))
    expected = reference_logits(model, q)
    np.testing.assert_array_equal(out["logits"], expected)
    np.testing.assert_array_equal(out["prediction"], first_argmax(expected))


if __name__ == "__main__":
    dumps = {w: describe_tflite(write_tflite(_golden_model(), weights=w)) for w in _WEIGHTS}
    text = json.dumps(dumps, indent=1)
    # one line per list of numbers, so that a review diff shows which values changed
    text = re.sub(r"\[\s*([^\[\]{}]*?)\s*\]", lambda m: "[" + " ".join(m[1].split()) + "]", text)
    GOLDEN.write_text(text + "\n")


def test_import_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, lightning_bet.deploy.tflite_export; "
        "print(sorted(m for m in ('tflite', 'flatbuffers', 'tflite_runtime', 'ai_edge_litert') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
