"""The C runtime's host batch path (bet_batch.c): bit-identical to bet_predict and deploy mode."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_bet.deploy.bitstream import write_bitstream
from lightning_bet.deploy.c_batch import BATCH_CFLAGS, BatchRuntime
from lightning_bet.deploy.c_runner import run_c, runtime_dir
from lightning_bet.deploy.fold import deploy_forward
from tests.deploy_models import random_deploy_model

#: the same sources built for every SIMD path this x86-64 host can run (and the plain scalar one)
PORTABLE = tuple(flag for flag in BATCH_CFLAGS if flag != "-march=native")
BUILDS = {
    "native": BATCH_CFLAGS,
    "scalar": PORTABLE,
    "avx2": (*PORTABLE, "-mavx2", "-mpopcnt"),
}


def _constants(layer, n_in):
    bound = n_in * 255 + 1
    return [bound, -bound, bound - 1]


def _case(sizes, levels, seed, samples=97):
    rng = np.random.default_rng(seed)
    q = rng.integers(0, levels + 1, (samples, sizes[0])).astype(np.uint8)
    model = random_deploy_model(sizes, levels, rng, q, _constants)
    reference = deploy_forward(model, torch.from_numpy(q.astype(np.int64))).numpy()
    return model, q, reference


def _first_argmax(logits):
    return logits.argmax(axis=1).astype(np.int32)  # numpy's argmax takes the first maximum


@pytest.mark.parametrize("build", sorted(BUILDS))
@pytest.mark.parametrize(
    "sizes",
    [(784, 70, 65, 10), (64, 1, 3), (1, 5, 2), (130, 64, 128, 129, 7), (33, 4)],
)
def test_batch_path_equals_deploy_mode_for_every_simd_build(build, sizes):
    model, q, reference = _case(sizes, levels=255, seed=sum(sizes))
    runtime = BatchRuntime(write_bitstream(model), cflags=BUILDS[build])
    for batch in (1, 5, None):
        classes, logits = runtime.predict(q, batch=batch)
        np.testing.assert_array_equal(logits, reference)
        np.testing.assert_array_equal(classes, _first_argmax(reference))


def test_batch_path_equals_the_portable_per_sample_path():
    model, q, reference = _case((200, 96, 40, 10), levels=16, seed=3)
    data = write_bitstream(model)
    classes, logits = BatchRuntime(data).predict(q)
    portable_classes, portable_logits = run_c(data, q)
    np.testing.assert_array_equal(logits, portable_logits)
    np.testing.assert_array_equal(classes, portable_classes)


def test_logit_ties_give_the_first_index():
    model, q, _ = _case((16, 8, 4), levels=1, seed=0, samples=400)
    classes, logits = BatchRuntime(write_bitstream(model)).predict(q)
    tied = (logits == logits.max(axis=1, keepdims=True)).sum(axis=1) > 1
    assert tied.any()
    np.testing.assert_array_equal(classes, _first_argmax(logits))


def test_bad_input_messages():
    model, q, _ = _case((20, 6, 3), levels=255, seed=1)
    runtime = BatchRuntime(write_bitstream(model))
    with pytest.raises(ValueError, match="Expected `q` with 20 pixels per sample, but got shape"):
        runtime.predict(q[:, :19])
    with pytest.raises(ValueError, match=r"integer pixels in \[0, 255\]"):
        runtime.predict(q.astype(np.int64) + 300)
    with pytest.raises(ValueError, match="`batch` to be a positive int, but got 0"):
        runtime.predict(q, batch=0)
    with pytest.raises(ValueError, match="bet_model_init returned 4 \\(bad magic\\)"):
        BatchRuntime(b"XXXX" + write_bitstream(model)[4:])
    with pytest.raises(TypeError, match="`bitstream` to be bytes"):
        BatchRuntime("model.bet")


DRIVER = Path(__file__).resolve().parent / "c" / "batch_agree.c"
#: (compiler, flags, runner prefix) per target; aarch64 runs NEON code under qemu-user
TARGETS = {
    "x86-64-native": ("cc", ("-O2", "-march=native"), ()),
    "aarch64-neon": ("aarch64-linux-gnu-gcc", ("-O2", "-static"), ("qemu-aarch64",)),
}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_batch_path_equals_bet_predict_on_other_targets(target, tmp_path):
    cc, flags, runner = TARGETS[target]
    missing = [tool for tool in (cc, *runner) if shutil.which(tool) is None]
    if missing:
        message = f"needs {' and '.join(missing)} (Debian: gcc-aarch64-linux-gnu, qemu-user)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # CI installs them: a skip there would hide the NEON path
        pytest.skip(message)
    source_dir = runtime_dir()
    binary = tmp_path / "batch_agree"
    command = [cc, "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", *flags]
    command += [f"-I{source_dir}", "-o", str(binary), str(DRIVER)]
    command += [str(source_dir / "bet_runtime.c"), str(source_dir / "bet_batch.c")]
    subprocess.run(command, check=True, capture_output=True, text=True)
    for sizes, levels in [((784, 70, 65, 10), 255), ((130, 64, 128, 129, 7), 16), ((1, 5, 2), 3)]:
        model, q, _ = _case(sizes, levels, seed=len(sizes))
        (tmp_path / "model.bet").write_bytes(write_bitstream(model))
        (tmp_path / "pixels.u8").write_bytes(q.tobytes())
        for batch in (1, 4, 1000):
            args = [*runner, str(binary), str(tmp_path / "model.bet"), str(tmp_path / "pixels.u8")]
            result = subprocess.run([*args, str(batch)], check=True, capture_output=True, text=True)
            samples, mismatches, simd = result.stdout.split()
            assert (int(samples), int(mismatches)) == (len(q), 0), (sizes, batch, simd)
            if target == "aarch64-neon":
                assert simd == "neon"


def test_convolutional_models_are_refused_with_a_pointer_to_the_portable_path():
    from lightning_bet.deploy.fold import to_deploy
    from lightning_bet.models import build_model

    net = build_model("cnn", (1, 8, 8), 10, hidden=(), channels=(4, 8)).eval()
    with pytest.raises(ValueError, match="bet_batch_init returned 11 .* use run_c for this model"):
        BatchRuntime(write_bitstream(to_deploy(net, 16)))
