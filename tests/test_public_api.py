import subprocess
import sys

import lightning_bet

FOUNDATION = [
    "sign",
    "binarize_weight",
    "binarize_activation",
    "BinaryLinear",
    "BinaryConv2d",
    "clip_latent_weights_",
    "BNN",
    "build_model",
    "BNNClassifier",
    "DigitsDataModule",
    "MNISTDataModule",
    "FashionMNISTDataModule",
    "CIFAR10DataModule",
]


def test_every_exported_name_imports():
    for name in lightning_bet.__all__:
        assert getattr(lightning_bet, name) is not None, name
    assert set(FOUNDATION) <= set(lightning_bet.__all__)


def test_import_stays_light():
    code = (
        "import sys, lightning_bet; "
        "mods = ('matplotlib', 'tflite_runtime', 'lightning', 'sklearn'); "
        "heavy = [m for m in mods if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_public_name_is_shadowed_by_a_submodule():
    """Importing a submodule binds it on the package: no public name may be a submodule's."""
    code = (
        "import importlib, inspect, pkgutil, lightning_bet; "
        "names = [m.name for m in pkgutil.walk_packages(lightning_bet.__path__, 'lightning_bet.') "
        "if not m.name.endswith('__main__')]; "
        "[importlib.import_module(n) for n in names]; "
        "from lightning_bet import sweep; "
        "assert callable(sweep) and not inspect.ismodule(sweep), sweep; "
        "print([n for n in lightning_bet.__all__ if inspect.ismodule(getattr(lightning_bet, n))])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
