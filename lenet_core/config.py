"""``TrialConfig``: the one frozen, typed description of a training run.

It travels unchanged from the CLI, an experiment file or a ``best.json`` to
``train_trial``; every result carries it so any trial can be replayed outside Ray.
Field metadata holds the help text the CLI shows for the matching flag; errors name the fields
themselves ("lr must be > 0"), as a Python caller spells them.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from lenet_core.errors import ConfigError
from lenet_core.names import (
    ACTIVATION_NAMES,
    AUGMENTATIONS,
    DATASETS,
    DEVICES,
    LENET_VARIANTS,
    MODEL_NAMES,
    OPTIMIZERS,
    POOLING_NAMES,
)

# Choices of the schedule and precision fields (torch-free, like names.py).
LR_SCHEDULES = ("constant", "step", "cosine", "onecycle")
PRECISIONS = ("fp32", "bf16", "fp16")
# The optimizers whose PyTorch constructors take a momentum argument.
MOMENTUM_OPTIMIZERS = ("sgd", "rmsprop")


def _opt(help_text: str, choices: tuple[str, ...] | None = None) -> dict[str, Any]:
    return {"help": help_text, "choices": choices}


@dataclass(frozen=True)
class TrialConfig:
    # --- data
    dataset: str = field(default="mnist", metadata=_opt("Dataset name.", DATASETS))
    data_dir: str | None = field(
        default=None,
        metadata=_opt(
            "Folder with the IDX files: a torchvision root (DIR/MNIST/raw) or the files "
            "themselves, .gz or not. Never written to. Default: cache, then download."
        ),
    )
    val_fraction: float = field(
        default=0.1, metadata=_opt("Fraction of train held out (stratified) for validation.")
    )
    split_seed: int = field(
        default=0,
        metadata=_opt(
            "Seed for the train/validation split and the --train-fraction subset, and for nothing "
            "else: every --seed of a study shares one validation set unless this changes."
        ),
    )
    train_fraction: float = field(
        default=1.0, metadata=_opt("Use this stratified fraction of the training split (e.g. 0.25).")
    )
    augment: str = field(default="none", metadata=_opt("Batched augmentation.", AUGMENTATIONS))
    # --- model
    model: str = field(default="lenet5", metadata=_opt("Model name.", MODEL_NAMES))
    variant: str | None = field(
        default=None, metadata=_opt("LeNet-5 variant (default modern).", tuple(LENET_VARIANTS))
    )
    activation: str | None = field(
        default=None, metadata=_opt("Activation; default: the variant's.", ACTIVATION_NAMES)
    )
    pooling: str | None = field(
        default=None, metadata=_opt("Pooling; default: the variant's.", POOLING_NAMES)
    )
    # --- optimization
    optimizer: str = field(default="adam", metadata=_opt("Optimizer.", OPTIMIZERS))
    lr: float = field(
        default=1e-3,
        metadata=_opt(
            "Learning rate (> 0): the peak of a schedule. constant, step and cosine start at it once "
            "any warm-up is over; onecycle rises to it and anneals from it."
        ),
    )
    lr_schedule: str = field(
        default="constant",
        metadata=_opt(
            "Learning-rate schedule over the run's budget (--epochs), stepped once per epoch, so "
            "each epoch trains at one lr (the lr column of the history). After --warmup-epochs W, "
            "with t = epoch - W - 1 and T = epochs - W: step trains at lr * lr_gamma**(t // "
            "lr_step_size); cosine at lr * (1 + cos(pi t / T)) / 2, annealed over the epochs to the "
            "cap (its 0 falls one epoch after it); onecycle is torch's OneCycleLR over epochs + 1 "
            "steps (from lr/25 up to lr at 30% of them, then cosine down towards lr/2.5e5, which "
            "also falls one epoch after the cap; momentum not cycled; no warm-up: it has its own).",
            LR_SCHEDULES,
        ),
    )
    lr_gamma: float = field(
        default=0.1,
        metadata=_opt(
            "Factor applied to the lr at each decay of --lr-schedule step, in (0, 1]; 0.1, the usual "
            "step decay, leaves the last third of the default schedule at 1% of lr."
        ),
    )
    lr_step_size: int | None = field(
        default=None,
        metadata=_opt(
            "Epochs between two decays of --lr-schedule step (>= 1). Default: a third of the "
            "scheduled epochs, ceil((epochs - warmup_epochs) / 3), so the lr decays twice in any run "
            "of 5 or more scheduled epochs (and of 3), whatever the budget."
        ),
    )
    warmup_epochs: int = field(
        default=0,
        metadata=_opt(
            "Linear warm-up before the schedule: epoch e <= W trains at lr * e / (W + 1); "
            "0 = none; must be < --epochs; not with onecycle."
        ),
    )
    batch_size: int = field(default=32, metadata=_opt("Training batch size (images per step)."))
    epochs: int = field(
        default=10, metadata=_opt("Passes over the training split (the most, with --patience).")
    )
    patience: int = field(
        default=0,
        metadata=_opt(
            "Stop after this many epochs without a better validation accuracy; 0 = never. Either "
            "way the best validation epoch's weights are the ones tested and kept."
        ),
    )
    weight_decay: float | None = field(
        default=None,
        metadata=_opt("L2 weight decay (>= 0). Default: the optimizer's PyTorch default (0; adamw 0.01)."),
    )
    momentum: float | None = field(
        default=None,
        metadata=_opt("Momentum for sgd and rmsprop only, in [0, 1). Default: PyTorch's (0)."),
    )
    label_smoothing: float = field(
        default=0.0,
        metadata=_opt(
            "Label smoothing of the training loss, in [0, 1): targets put 1 - s + s/10 on the class "
            "and s/10 on each other. Validation and test losses stay plain cross-entropy."
        ),
    )
    test_every_epoch: bool = field(
        default=False,
        metadata=_opt(
            "Also evaluate the test split after every epoch (for test-error curves; never used to select)."
        ),
    )
    # --- run
    seed: int = field(
        default=0,
        metadata=_opt("Seed for initialisation, batch order and augmentation (the split: --split-seed)."),
    )
    device: str = field(default="auto", metadata=_opt("Training device; auto = cuda if present.", DEVICES))
    precision: str = field(
        default="fp32",
        metadata=_opt(
            "Arithmetic of forward pass and loss: bf16 autocast (CPU or CUDA), fp16 autocast with "
            "gradient scaling (CUDA only); weights, loss sums and metrics stay fp32.",
            PRECISIONS,
        ),
    )
    threads: int = field(default=0, metadata=_opt("torch CPU threads; 0 = torch's default."))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices and value is not None and value not in choices:
                raise ConfigError(f"unknown {f.name} {value!r}; choose one of: {', '.join(choices)}")
        _check_range("lr", self.lr, low=0.0, low_open=True)
        _check_range("batch_size", self.batch_size, low=1)
        _check_range("epochs", self.epochs, low=1)
        _check_range("lr_gamma", self.lr_gamma, low=0.0, high=1.0, low_open=True)
        if self.lr_step_size is not None:
            _check_range("lr_step_size", self.lr_step_size, low=1)
        _check_range("warmup_epochs", self.warmup_epochs, low=0)
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(
                f"warmup_epochs must be < epochs ({self.epochs}), got {self.warmup_epochs}: "
                "the run would never reach its lr"
            )
        if self.warmup_epochs and self.lr_schedule == "onecycle":
            raise ConfigError(
                "warmup_epochs does not combine with lr_schedule 'onecycle', which warms up itself"
            )
        _check_range("label_smoothing", self.label_smoothing, low=0.0, high=1.0, high_open=True)
        _check_range("patience", self.patience, low=0)
        if self.weight_decay is not None:
            _check_range("weight_decay", self.weight_decay, low=0.0)
        if self.momentum is not None:
            _check_range("momentum", self.momentum, low=0.0, high=1.0, high_open=True)
            if self.optimizer not in MOMENTUM_OPTIMIZERS:
                raise ConfigError(
                    f"momentum applies to {' and '.join(MOMENTUM_OPTIMIZERS)} only, not {self.optimizer}"
                )
        _check_range("val_fraction", self.val_fraction, low=0.0, high=0.9)
        _check_range("train_fraction", self.train_fraction, low=0.0, high=1.0, low_open=True)
        _check_range("threads", self.threads, low=0)
        _check_range("seed", self.seed, low=0)
        _check_range("split_seed", self.split_seed, low=0)
        if self.patience and self.val_fraction == 0:
            raise ConfigError("patience needs a validation split (val_fraction > 0)")
        if self.model == "lenet5":
            # Resolve the variant's defaults so every record states what actually ran.
            variant = self.variant or "modern"
            object.__setattr__(self, "variant", variant)
            for key in ("activation", "pooling"):
                if getattr(self, key) is None:
                    object.__setattr__(self, key, LENET_VARIANTS[variant][key])
        else:
            for key in ("variant", "activation", "pooling"):
                if getattr(self, key) is not None:
                    raise ConfigError(f"{key} applies to lenet5 only, not {self.model}")

    # ------------------------------------------------------------------ conversions
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrialConfig:
        return from_dict({**self.to_dict(), **changes})

    def scheduled_epochs(self) -> int:
        """The epochs the lr schedule spans: those after the warm-up."""
        return self.epochs - self.warmup_epochs

    def step_size(self) -> int:
        """Epochs between two decays of the step schedule: ``lr_step_size``, else a third of the
        scheduled epochs (rounded up), so the lr decays twice per run whatever the budget."""
        if self.lr_step_size is not None:
            return self.lr_step_size
        return max(1, math.ceil(self.scheduled_epochs() / 3))

    def ignored_fields(self) -> tuple[str, ...]:
        """Fields whose value changes nothing under this config: the step schedule's gamma and
        step size under any other schedule (reports leave them out; a search may clip them)."""
        return STEP_ONLY_FIELDS if self.lr_schedule != "step" else ()

    def model_options(self) -> dict[str, Any]:
        return {"variant": self.variant, "activation": self.activation, "pooling": self.pooling}


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(TrialConfig))
STEP_ONLY_FIELDS = ("lr_gamma", "lr_step_size")  # fields only the step lr schedule reads


def field_types() -> dict[str, type]:
    """The plain type of each field (``str | None`` -> str), for parsing and the CLI."""
    hints = typing.get_type_hints(TrialConfig)
    plain: dict[str, type] = {}
    for name in FIELD_NAMES:
        hint = hints[name]
        if isinstance(hint, types.UnionType):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        plain[name] = hint
    return plain


def from_dict(values: dict[str, Any], *, source: str = "config") -> TrialConfig:
    """Build a config from plain values, rejecting unknown keys and wrong types by name."""
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}; valid keys: {', '.join(FIELD_NAMES)}")
    types_ = field_types()
    checked = {key: _coerce(key, value, types_[key], source) for key, value in values.items()}
    return TrialConfig(**checked)


def _coerce(key: str, value: Any, kind: type, source: str) -> Any:
    if value is None:
        return None
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is bool and isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    raise ConfigError(f"{source}: {key} must be {kind.__name__}, got {value!r}")


def _check_range(
    name: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    # The field's name, not a CLI flag: this is a library error (the CLI's help names the flags).
    bad = isinstance(value, float) and not math.isfinite(value)
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if bad:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        where = (
            f"in {lo}, {hi}"
            if low is not None and high is not None
            else (f"{'>' if low_open else '>='} {low:g}" if low is not None else f"<= {high:g}")
        )
        raise ConfigError(f"{name} must be {where}, got {value}")
