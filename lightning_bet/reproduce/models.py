"""The model set of ``lightning-bet reproduce``: which networks are trained, and how (METHOD §8).

One :class:`ModelSpec` per trained network. The default set per training seed:

- ``plain``: the recipe as it is (cross-entropy, no faults): the baseline of C1-C3 and ``λ = 0``
  of C5;
- ``hirtzlin`` and ``straight_through`` flip training (``BitFlipTraining``) at each training
  error rate (default 0.05, 0.15, 0.3), trained for ``flip_epochs`` (flip training converges more
  slowly than plain training);
- ``margin``: the margin regularizer (``MarginRegularization``) at each ``λ`` (default 0.3, 1, 3);
- ``mhl``: the modified hinge loss.

The sweep seed is *not* part of a spec: every model is swept on the same fault maps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lightning_bet.resources import recipe_path

__all__ = [
    "DATASETS",
    "METHODS",
    "DatasetConfig",
    "ModelSpec",
    "build_model_set",
]

#: Training methods, in report order.
METHODS = ("plain", "hirtzlin", "straight_through", "margin", "mhl")


@dataclass(frozen=True)
class DatasetConfig:
    """What ``reproduce`` trains on one dataset.

    Attributes:
        name: ``"digits"``, ``"mnist"`` or ``"fashion_mnist"``.
        recipe: the LightningCLI recipe of the plain model.
        overrides: extra LightningCLI arguments applied to every model of this dataset.
        epochs: epochs of plain, margin and MHL models (the recipe's own schedule).
        flip_epochs: epochs of flip-trained models.
        lr_step_size: the recipe's StepLR period at ``epochs``; scaled with the epochs so that
            every model sees the same learning-rate schedule shape.
        needs_data_dir: the dataset is read from files (``--data-dir``).
        seconds_per_epoch: rough time of one plain epoch (for the expected runtime in the
            report). Digits: measured, one thread of a shared 2-core CPU (0.17 s, Lightning
            overhead included). MNIST/FashionMNIST: *assumed* 2 s on one GPU (215 steps of 256
            samples; not measured, no GPU was available); one training step of the FCNN
            784-2048-2048-10 measured 0.54 s on one thread of the shared 2-core CPU, i.e. about
            115 s per epoch there.
        flip_seconds_per_p: extra seconds of a flip-training epoch per unit of the training
            error rate (drawing the fault maps costs time proportional to the flips, on the CPU
            even when the model trains on a GPU). Digits: measured (1.9 s). MNIST/FashionMNIST:
            50 s, from sampling the maps of the FCNN's 5.8M weights measured at 24/55/138 ms
            per step at p = 0.05/0.15/0.3 on one contended CPU thread (about half that assumed
            on an idle machine), times 215 steps.

    """

    name: str
    recipe: Path
    overrides: tuple[str, ...]
    epochs: int
    flip_epochs: int
    lr_step_size: int
    needs_data_dir: bool
    seconds_per_epoch: float
    flip_seconds_per_p: float


DATASETS: dict[str, DatasetConfig] = {
    "digits": DatasetConfig(
        "digits", recipe_path("digits_fcnn"), (), 60, 120, 20, False, 0.17, 1.9
    ),
    "mnist": DatasetConfig(
        "mnist",
        recipe_path("fashion_fcnn"),
        ("--data.class_path", "lightning_bet.data.idx.MNISTDataModule"),
        100,
        200,
        25,
        True,
        2.0,
        50.0,
    ),
    "fashion_mnist": DatasetConfig(
        "fashion_mnist", recipe_path("fashion_fcnn"), (), 100, 200, 25, True, 2.0, 50.0
    ),
}


def _fmt(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class ModelSpec:
    """One network of the model set.

    Attributes:
        method: one of :data:`METHODS`.
        seed: training seed (``seed_everything`` and the flip-map seed); the pairing unit.
        epochs: training epochs.
        p_train: training error rate of flip training (``None`` otherwise).
        lam: ``λ`` of the margin regularizer (``None`` otherwise).
        delta: target normalized margin of the regularizer.
        setting: the method's setting as text (``"p=0.05"``, ``"λ=1"`` or ``""``).

    """

    method: str
    seed: int
    epochs: int
    p_train: float | None = None
    lam: float | None = None
    delta: float = 1.0
    setting: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"Expected `method` to be one of {list(METHODS)}, but got {self.method!r}"
            )
        flip = self.method in ("hirtzlin", "straight_through")
        if flip != (self.p_train is not None) or (self.method == "margin") != (
            self.lam is not None
        ):
            raise ValueError(
                f"Expected `p_train` exactly for flip training and `lam` exactly for `margin`, but "
                f"got method={self.method!r}, p_train={self.p_train!r}, lam={self.lam!r}"
            )
        setting = ""
        if self.p_train is not None:
            setting = f"p={_fmt(self.p_train)}"
        elif self.lam is not None:
            setting = f"λ={_fmt(self.lam)}"
        object.__setattr__(self, "setting", setting)

    @property
    def group(self) -> str:
        """Method and setting, e.g. ``"hirtzlin p=0.05"`` (the models of a group differ by seed)."""
        return f"{self.method} {self.setting}".strip()

    @property
    def name(self) -> str:
        """File-system name, e.g. ``"hirtzlin-p0.05-s1"``."""
        parts = [self.method]
        if self.p_train is not None:
            parts.append(f"p{_fmt(self.p_train)}")
        if self.lam is not None:
            parts.append(f"lam{_fmt(self.lam)}")
        parts.append(f"s{self.seed}")
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (``setting``, ``group`` and ``name`` included)."""
        return {**asdict(self), "group": self.group, "name": self.name}


def _check_rates(name: str, values: Sequence[float], high: float, valid: str) -> tuple[float, ...]:
    values = tuple(values)
    for v in values:
        if (
            isinstance(v, bool)
            or not isinstance(v, int | float)
            or not math.isfinite(v)
            or not 0 < v <= high
        ):
            raise ValueError(f"Expected `{name}` to hold {valid}, but got {list(values)!r}")
    return values


def build_model_set(
    seeds: int = 3,
    methods: Sequence[str] = METHODS,
    train_rates: Sequence[float] = (0.05, 0.15, 0.3),
    lambdas: Sequence[float] = (0.3, 1.0, 3.0),
    epochs: int = 60,
    flip_epochs: int = 120,
    delta: float = 1.0,
) -> list[ModelSpec]:
    """The model set: every method x setting x training seed ``0 .. seeds - 1``.

    Args:
        seeds: number of training seeds, >= 1.
        methods: subset of :data:`METHODS`.
        train_rates: training error rates of both flip-training variants, each in (0, 0.5].
        lambdas: ``λ`` values of the margin regularizer, each > 0 (``λ = 0`` is ``plain``).
        epochs: epochs of plain, margin and MHL models.
        flip_epochs: epochs of flip-trained models.
        delta: target normalized margin of the regularizer.

    Returns:
        Specs ordered by method, then setting, then seed.

    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"Expected `seeds` to be an int >= 1, but got {seeds!r}")
    for name, value in (("epochs", epochs), ("flip_epochs", flip_epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Expected `{name}` to be an int >= 1, but got {value!r}")
    methods = tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(
            f"Expected `methods` to be a non-empty subset of {list(METHODS)}, but got "
            f"{list(methods)!r}"
        )
    train_rates = _check_rates("train_rates", train_rates, 0.5, "floats in (0, 0.5]")
    lambdas = _check_rates("lambdas", lambdas, math.inf, "finite floats > 0")
    specs: list[ModelSpec] = []
    for method in METHODS:
        if method not in methods:
            continue
        for seed in range(seeds):
            if method in ("plain", "mhl"):
                specs.append(ModelSpec(method, seed, epochs))
            elif method == "margin":
                specs.extend(
                    ModelSpec(method, seed, epochs, lam=lam, delta=delta) for lam in lambdas
                )
            else:
                specs.extend(ModelSpec(method, seed, flip_epochs, p_train=p) for p in train_rates)
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(specs, key=lambda s: (order[s.method], s.p_train or 0.0, s.lam or 0.0, s.seed))
