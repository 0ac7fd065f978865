"""``BitFlipTraining``: weight-sign-flip training for bit error tolerance (METHOD §3).

Every training micro-batch draws a fresh fault map ``M`` for the selected binary layers from the
shared fault core (:func:`~lightning_bet.functional.faults.sample_fault_indices`); the forward
pass computes ``We = M ⊙ sign(W)``. The backward pass depends on ``variant``:

- ``"straight_through"`` (Buschjäger et al., arXiv:2002.00909): ``dL/dWb = dL/dWe``;
- ``"hirtzlin"`` (Hirtzlin et al., arXiv:1904.03652): ``dL/dWb = M ⊙ dL/dWe`` (the update of a
  flipped weight is negated).

Both then apply the weight STE ``1{|W| <= 1}``. For the same seed both variants run the identical
forward pass; their gradients differ exactly on the flipped positions.

How (all O(number of flips), no dense mask, the latent weights are never modified): before the
forward pass the callback hands each selected layer its fault map (``layer.sign_flips``, a
:class:`~lightning_bet.functional.flips.SignFlips`); the layer's forward pass then uses
:func:`~lightning_bet.functional.flips.binarize_weight_flipped`, which negates ``sign(W)`` at the
fault positions and, for ``"hirtzlin"``, negates this micro-batch's gradient there *before* it is
accumulated into ``.grad`` (so gradient accumulation and DDP's all-reduce see the per-rank,
per-micro-batch chain rule). The maps are cleared after the backward pass, at the end of the
batch, on exceptions and before validation/test/predict; a checkpoint never holds them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from lightning_bet._validation import check_probability, is_probability
from lightning_bet.functional.faults import FaultModel, make_generator, sample_fault_indices
from lightning_bet.functional.flips import SignFlips, scale_fault_model
from lightning_bet.layers import BinaryConv2d, BinaryLinear, binary_layers

__all__ = ["VARIANTS", "BitFlipTraining"]

VARIANTS = ("straight_through", "hirtzlin")

#: Strategies that shard parameters: a rank does not hold whole weight tensors to flip.
_SHARDED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


def _as_relative_fault(fault: FaultModel | dict[str, float | None] | None) -> FaultModel:
    if fault is None:
        return FaultModel(p=1.0)
    if isinstance(fault, dict):
        try:
            fault = FaultModel.from_dict(fault)
        except (TypeError, ValueError) as error:
            raise ValueError(f"Invalid `fault` {fault!r}: {error}") from error
    if not isinstance(fault, FaultModel):
        raise TypeError(
            f"Expected `fault` to be a FaultModel, a dict of its arguments or None, but got "
            f"{fault!r}"
        )
    if fault.is_null:
        raise ValueError(
            f"Expected `fault` to have at least one non-zero rate or stuck-at fraction, but got "
            f"{fault.to_dict()}"
        )
    return fault


def _describe(item: Any) -> str:
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], nn.Module):
        return f"({type(item[0]).__name__}, {item[1]!r})"
    return repr(item)


class BitFlipTraining(Callback):
    """Train with random weight sign flips so that the network tolerates RRAM bit errors.

    Args:
        p: training error rate in [0, 1], or a schedule ``epoch -> rate`` (resolved at every
            training batch with ``trainer.current_epoch``; an invalid value raises there).
        variant: ``"straight_through"`` or ``"hirtzlin"`` (see the module docstring).
        fault: the *relative* fault model, scaled by ``p`` at every batch: ``None`` means
            symmetric flips with probability ``p`` (``FaultModel(p=1.0)``);
            ``{"p01": 1.0, "p10": 0.25}`` means a stored ``+1`` reads ``-1`` with probability
            ``p`` and a stored ``-1`` reads ``+1`` with ``p/4``; ``{"p": 1.0, "stuck_at_1": 0.1}``
            adds a fraction ``0.1 p`` of cells stuck at bit 1 (re-drawn every batch). A
            :class:`~lightning_bet.functional.faults.FaultModel` or a dict of its arguments.
            For anything else (e.g. absolute stuck-at fractions), override :meth:`fault_model`.
        parameters_to_flip: which weights to flip, in the style of Lightning's ``ModelPruning``:
            ``(module, "weight")`` pairs of binary layers or qualified module names of binary
            layers (``"net.blocks.0.layer"``); ``None`` selects every binary layer.
        include_first: keep the model's first binary layer in the selection.
        include_last: keep the model's last binary layer (the output layer) in the selection.
        seed: seed of the fault maps. Micro-batch ``k`` on rank ``r`` uses
            ``make_generator(seed, "bitflip", r, k)`` (a CPU generator, so maps do not depend on
            the device), which makes the maps reproducible and resumable.
        log_rate: log the requested rate ``flip/p``, the realized flip rate ``flip/rate`` and
            the number of flipped bits ``flip/flipped_bits`` (all selected layers together) of
            a training step as ``*_step`` (at the logger's steps, every
            ``trainer.log_every_n_steps`` optimizer steps) and their means over the epoch as
            ``*_epoch``. The values are known on the host when a map is drawn; they are summed
            in Python and handed to Lightning as CPU scalars only when written, so a step pays
            neither a ``self.log`` call nor a copy to or a wait for the accelerator.
        prefetch: for symmetric fault models, draw the next micro-batch's fault map in a
            background thread while the current forward and backward run (the maps are the same
            as without; a map drawn for another step, rank or fault model is discarded).
            ``None`` (default): only when the weights live on an accelerator, where the CPU is
            otherwise idle during the step; on a CPU the thread competes with the step itself.

    Example:
        >>> import lightning as L
        >>> from lightning_bet.callbacks import BitFlipTraining
        >>> trainer = L.Trainer(callbacks=[BitFlipTraining(p=0.05, variant="straight_through")])

    """

    def __init__(
        self,
        p: float | Callable[[int], float] = 0.01,
        variant: Literal["straight_through", "hirtzlin"] = "straight_through",
        fault: FaultModel | dict[str, float | None] | None = None,
        parameters_to_flip: Sequence[str | tuple[nn.Module, str]] | None = None,
        include_first: bool = True,
        include_last: bool = True,
        seed: int = 0,
        log_rate: bool = True,
        prefetch: bool | None = None,
    ) -> None:
        if not callable(p):
            check_probability("p", p)
        if variant not in VARIANTS:
            raise ValueError(
                f"Expected `variant` to be one of {list(VARIANTS)}, but got {variant!r}"
            )
        self._relative = _as_relative_fault(fault)
        if parameters_to_flip is not None:
            if isinstance(parameters_to_flip, str | tuple) or not isinstance(
                parameters_to_flip, Sequence
            ):
                raise TypeError(
                    "Expected `parameters_to_flip` to be a list of (module, 'weight') pairs or "
                    f"module names, or None, but got {parameters_to_flip!r}"
                )
            for item in parameters_to_flip:
                if isinstance(item, str):
                    continue
                if not (isinstance(item, tuple) and len(item) == 2):
                    raise TypeError(
                        "Expected `parameters_to_flip` entries to be (module, 'weight') pairs or "
                        f"module names, but got {_describe(item)}"
                    )
                self._check_binary(item[0], item[1])
            if not parameters_to_flip:
                raise ValueError(
                    "Expected `parameters_to_flip` to select at least one binary layer (or None "
                    "for all), but got []"
                )
        for name, value in (
            ("include_first", include_first),
            ("include_last", include_last),
            ("log_rate", log_rate),
        ):
            if not isinstance(value, bool):
                raise TypeError(f"Expected `{name}` to be a bool, but got {value!r}")
        if prefetch is not None and not isinstance(prefetch, bool):
            raise TypeError(f"Expected `prefetch` to be a bool or None, but got {prefetch!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"Expected `seed` to be an int, but got {seed!r}")
        self.p = p
        self.variant = variant
        self.parameters_to_flip = parameters_to_flip
        self.include_first = include_first
        self.include_last = include_last
        self.seed = seed
        self.log_rate = log_rate
        #: micro-batches drawn so far (the position in the fault-map stream; in ``state_dict``).
        self.micro_step = 0
        self._targets: list[tuple[str, BinaryLinear | BinaryConv2d]] = []
        self._flipped: list[BinaryLinear | BinaryConv2d] = []
        self.last_indices: list[Tensor] = []
        #: the requested rate, realized flip rate and flipped bits of the last :meth:`flip`.
        self.last_p = 0.0
        self.last_rate = 0.0
        self.last_flips = 0
        #: sums of (p, rate, flipped bits) and the number of micro-batches this epoch
        self._epoch_sums = [0.0, 0.0, 0]
        self._epoch_steps = 0
        #: draw the next symmetric fault map in a background thread (None: on accelerators).
        self.prefetch = prefetch
        self._executor: ThreadPoolExecutor | None = None
        self._pending: tuple[tuple[int, int, FaultModel], Future[list[Tensor]]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # threads do not pickle (``ddp_spawn``, deepcopy); a copy starts without a prefetch
        state = self.__dict__.copy()
        state["_executor"] = None
        state["_pending"] = None
        return state

    @property
    def state_key(self) -> str:  # noqa: D102
        return self._generate_state_key(variant=self.variant, seed=self.seed)

    # ----------------------------------------------------------------------------- policy

    def rate(self, epoch: int) -> float:
        """The training error rate ``p`` at ``epoch`` (validated)."""
        if not callable(self.p):
            return float(self.p)
        value = self.p(epoch)
        if not is_probability(value):
            raise ValueError(
                f"Expected the `p` schedule to return a float in [0, 1], but got {value!r} at "
                f"epoch {epoch}"
            )
        return float(value)

    def fault_model(self, epoch: int) -> FaultModel:
        """The fault model of ``epoch``: the relative ``fault`` scaled by :meth:`rate`.

        Override this one method for other policies (e.g. absolute stuck-at fractions).
        """
        p = self.rate(epoch)
        try:
            return scale_fault_model(self._relative, p)
        except ValueError as error:
            raise ValueError(
                f"Invalid fault model at `p`={p!r} with `fault`={self._relative.to_dict()}: {error}"
            ) from error

    # ----------------------------------------------------------------------------- selection

    @staticmethod
    def _check_binary(module: Any, name: Any) -> None:
        if not isinstance(module, BinaryLinear | BinaryConv2d) or name != "weight":
            raise ValueError(
                "Expected `parameters_to_flip` to select the 'weight' of binary layers "
                "(BinaryLinear, BinaryConv2d), but got "
                f"({type(module).__name__}, {name!r})"
            )

    def _select(self, pl_module: nn.Module) -> list[tuple[str, BinaryLinear | BinaryConv2d]]:
        layers = list(binary_layers(pl_module))
        if not layers:
            raise ValueError(
                "Expected the model to contain binary layers to flip, but "
                f"{type(pl_module).__name__} has none"
            )
        if self.parameters_to_flip is None:
            chosen = [module for _, module in layers]
        else:
            chosen = []
            for item in self.parameters_to_flip:
                if isinstance(item, str):
                    try:
                        module = pl_module.get_submodule(item)
                    except AttributeError as error:
                        raise ValueError(
                            "Expected `parameters_to_flip` entries to name modules of the "
                            f"model, but got {item!r}"
                        ) from error
                    self._check_binary(module, "weight")
                else:
                    module = item[0]
                if not any(module is m for _, m in layers):
                    raise ValueError(
                        "Expected `parameters_to_flip` to select layers of the trained model, but "
                        f"got {_describe(item)}, which is not part of it"
                    )
                if not any(module is m for m in chosen):
                    chosen.append(module)
        if not self.include_first:
            chosen = [m for m in chosen if m is not layers[0][1]]
        if not self.include_last:
            chosen = [m for m in chosen if m is not layers[-1][1]]
        if not chosen:
            raise ValueError(
                "Expected a non-empty selection of binary layers to flip, but "
                f"`parameters_to_flip`={self.parameters_to_flip!r} with "
                f"`include_first`={self.include_first} and `include_last`={self.include_last} "
                "selects none"
            )
        names = {id(module): name for name, module in pl_module.named_modules()}
        return [(names[id(m)], m) for m in chosen]

    # ----------------------------------------------------------------------------- flipping

    def flip(self, epoch: int, rank: int = 0) -> float:
        """Draw this micro-batch's fault map and hand it to the selected layers.

        Their forward passes negate ``sign(W)`` at the fault positions until :meth:`restore`
        (call it after the backward pass). Returns the realized flip rate.
        """
        self.restore()
        model = self.fault_model(epoch)
        key = (rank, self.micro_step, model)
        self.micro_step += 1
        self.last_indices = []
        try:
            indices = self._take_prefetched(key)
            if indices is None:
                indices = _sample_all(self._targets, model, self.seed, rank, key[1])
            if self._prefetch_enabled() and model.is_symmetric:
                # the next map depends only on (seed, rank, step, model, sizes): draw it in the
                # background while this micro-batch's forward and backward run
                self._prefetch((rank, self.micro_step, model))
            flips, bits = self._flip_all(indices)
        except BaseException:
            self.restore()
            raise
        self.last_p = self.rate(epoch)
        self.last_flips = flips
        self.last_rate = flips / bits if bits else 0.0
        return self.last_rate

    def _prefetch_enabled(self) -> bool:
        if self.prefetch is not None:
            return self.prefetch
        return bool(self._targets) and self._targets[0][1].weight.device.type != "cpu"

    def _take_prefetched(self, key: tuple[int, int, FaultModel]) -> list[Tensor] | None:
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        pending_key, future = pending
        if pending_key != key:
            future.cancel()
            return None
        return future.result()

    def _prefetch(self, key: tuple[int, int, FaultModel]) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="bitflip-prefetch")
        rank, step, model = key
        future = self._executor.submit(_sample_all, self._targets, model, self.seed, rank, step)
        self._pending = (key, future)

    def wait_for_prefetch(self) -> None:
        """Block until the background draw of the next fault map (if any) has finished.

        Benchmarks call it at the end of a step so that the step's time holds all of its work.
        """
        if self._pending is not None:
            self._pending[1].result()

    def _flip_all(self, indices: list[Tensor]) -> tuple[int, int]:
        flips = bits = 0
        negate_gradient = self.variant == "hirtzlin"
        for (_, layer), index in zip(self._targets, indices, strict=True):
            self.last_indices.append(index)
            bits += layer.weight.numel()
            flips += index.numel()
            if index.numel() == 0:
                continue
            layer.sign_flips = SignFlips(index, negate_gradient)
            self._flipped.append(layer)
        return flips, bits

    def restore(self) -> None:
        """Clear the fault maps: the forward pass uses the clean weights again. Idempotent."""
        flipped, self._flipped = self._flipped, []
        for layer in flipped:
            layer.sign_flips = None

    @property
    def is_flipped(self) -> bool:
        """True between :meth:`flip` and :meth:`restore` (while some layer holds a fault map)."""
        return bool(self._flipped)

    # ----------------------------------------------------------------------------- hooks

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:  # noqa: D102
        strategy = trainer.strategy
        sharded = [c.__name__ for c in type(strategy).__mro__ if c.__name__ in _SHARDED_STRATEGIES]
        if sharded:
            raise ValueError(
                f"{type(self).__name__} needs whole weight tensors on every rank, but the "
                f"strategy {type(strategy).__name__} shards parameters; use a single device or "
                "DDP"
            )
        self._targets = self._select(pl_module)
        self._pending = None  # drawn for the previous targets

    def on_train_batch_start(  # noqa: D102
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        rate = self.flip(trainer.current_epoch, trainer.global_rank)
        if not self.log_rate:
            return
        values = (self.last_p, rate, self.last_flips)
        self._epoch_sums = [a + b for a, b in zip(self._epoch_sums, values, strict=True)]
        self._epoch_steps += 1
        every = trainer.log_every_n_steps
        if every and (trainer.global_step + 1) % every == 0:  # the step the logger writes
            self._log(pl_module, "step", values)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self._epoch_sums = [0.0, 0.0, 0]
        self._epoch_steps = 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        if self.log_rate and self._epoch_steps:
            means = [total / self._epoch_steps for total in self._epoch_sums]
            self._log(pl_module, "epoch", means)

    @staticmethod
    def _log(pl_module: L.LightningModule, when: str, values: Sequence[float]) -> None:
        # CPU tensors: Lightning keeps them on the CPU (a Python number is copied to the
        # module's device)
        names = ("flip/p", "flip/rate", "flip/flipped_bits")
        pl_module.log_dict(
            {
                f"{name}_{when}": torch.tensor(float(v))
                for name, v in zip(names, values, strict=True)
            },
            on_step=when == "step",
            on_epoch=when == "epoch",
            batch_size=1,
        )

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self.restore()

    def on_train_batch_end(  # noqa: D102
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.restore()  # no backward happened (e.g. training_step returned None)

    def on_exception(  # noqa: D102
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.restore()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self.restore()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self.restore()

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self.restore()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self.restore()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:  # noqa: D102
        self.restore()
        self._pending = None
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"micro_step": self.micro_step, "seed": self.seed, "variant": self.variant}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        self.micro_step = int(state_dict["micro_step"])


def _sample_all(
    targets: list[tuple[str, BinaryLinear | BinaryConv2d]],
    model: FaultModel,
    seed: int,
    rank: int,
    step: int,
) -> list[Tensor]:
    """The fault indices of every target of micro-batch ``step`` on ``rank`` (one generator)."""
    generator = make_generator(seed, "bitflip", rank, step)
    # on each layer's device already: sample_fault_indices puts them where the weights are
    return [sample_fault_indices(layer.weight.detach(), model, generator) for _, layer in targets]
