"""lightning-bet: bit error tolerant binarized neural networks for PyTorch Lightning.

Public names are imported lazily, so ``import lightning_bet`` stays light (no matplotlib, no
TFLite runtime, no compiled kernels until they are used).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # binary building blocks
    "sign": "lightning_bet.functional.binarize",
    "binarize_weight": "lightning_bet.functional.binarize",
    "binarize_activation": "lightning_bet.functional.binarize",
    "BinaryLinear": "lightning_bet.layers",
    "BinaryConv2d": "lightning_bet.layers",
    "Sign": "lightning_bet.layers",
    "clip_latent_weights_": "lightning_bet.layers",
    # models and training
    "BNN": "lightning_bet.models",
    "BinaryBlock": "lightning_bet.models",
    "OutputLayer": "lightning_bet.models",
    "build_model": "lightning_bet.models",
    "BNNClassifier": "lightning_bet.module",
    # data
    "DigitsDataModule": "lightning_bet.data.digits",
    "MNISTDataModule": "lightning_bet.data.idx",
    "FashionMNISTDataModule": "lightning_bet.data.idx",
    "CIFAR10DataModule": "lightning_bet.data.cifar",
    "ArrayDataModule": "lightning_bet.data.arrays",
    "IdxFilesDataModule": "lightning_bet.data.idx",
    # faults and training for bit error tolerance
    "FaultModel": "lightning_bet.functional.faults",
    "sample_fault_indices": "lightning_bet.functional.faults",
    "BitFlipTraining": "lightning_bet.callbacks.bitflip",
    "MarginRegularization": "lightning_bet.callbacks.margin_regularization",
    "LatentClipping": "lightning_bet.callbacks.latent_clipping",
    "modified_hinge_loss": "lightning_bet.functional.losses",
    "margin_cross_entropy": "lightning_bet.functional.losses",
    # measuring bit error tolerance
    "BitErrorTolerance": "lightning_bet.metrics",
    "BetLogging": "lightning_bet.callbacks.bet_logging",
    "SweepCallback": "lightning_bet.callbacks.sweep",
    "SweepResult": "lightning_bet.sweeps",
    "sweep": "lightning_bet.sweeps",
    "bet_area": "lightning_bet.sweeps",
    "predicted_sweep": "lightning_bet.sweeps",
    "summary": "lightning_bet.model_summary",
    "BitSummaryCallback": "lightning_bet.model_summary",
    # edge export
    "DeployModel": "lightning_bet.deploy.model",
    "DeployLayer": "lightning_bet.deploy.model",
    "DeployConv": "lightning_bet.deploy.model",
    "DeployModule": "lightning_bet.deploy.fold",
    "to_deploy": "lightning_bet.deploy.fold",
    "deploy_forward": "lightning_bet.deploy.fold",
    "BitstreamError": "lightning_bet.deploy.bitstream",
    "write_bitstream": "lightning_bet.deploy.bitstream",
    "read_bitstream": "lightning_bet.deploy.bitstream",
    "run_bitstream": "lightning_bet.deploy.interpreter",
    "emulate": "lightning_bet.deploy.emulate",
    "write_c_package": "lightning_bet.deploy.c_header",
    "run_c": "lightning_bet.deploy.c_runner",
    "write_tflite": "lightning_bet.deploy.tflite_export",
    "run_tflite": "lightning_bet.deploy.tflite_export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_bet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
