"""Search spaces: the default one, TOML files that replace it, and their Optuna form.

A space file has two tables, nothing else::

    [space]                       # each key a TrialConfig field
    optimizer = { choices = ["sgd", "adam"] }
    lr = { low = 1e-4, high = 1.0, log = true }
    batch_size = { choices = [32, 64] }

    [fixed]                       # optional: TrialConfig fields held fixed for every trial
    epochs = 3
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lenet_core.config import FIELD_NAMES, OPTIMIZERS, TrialConfig, field_types, from_dict
from lenet_core.errors import ConfigError
from study.common.placement import without_placement

# The scientific questions of the study: which optimizer, learning rate, activation, pooling
# and batch size make LeNet-5 best, under which lr schedule and regularization (weight decay,
# label smoothing, small translations). weight_decay's log range starts at a tiny 1e-6, which
# stands for "none" (a log range cannot hold 0; see study.stages.tune.run.default_point).
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "optimizer": {"choices": [o for o in OPTIMIZERS if o != "adamw"]},
    "lr": {"low": 1e-4, "high": 1.0, "log": True},
    "activation": {"choices": ["relu", "tanh", "sigmoid"]},
    "pooling": {"choices": ["max", "avg"]},
    "batch_size": {"choices": [32, 64, 128, 256, 512]},
    "lr_schedule": {"choices": ["constant", "step", "cosine", "onecycle"]},
    "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
    "label_smoothing": {"low": 0.0, "high": 0.15},
    # no flip (a mirrored digit is no digit); no crop: it draws the same translations as shift
    "augment": {"choices": ["none", "shift"]},
}
# ASHA's budget rule (study.stages.tune.run.TuneSettings, `study tune --grace-period/--reduction-factor`,
# the grace_period/reduction_factor keys of tune experiment files): every trial trains at least
# GRACE_PERIOD epochs (clipped to the epoch cap) before it can be stopped, and at each rung (grace,
# grace*F, grace*F^2, ... epochs) only the top 1/F by the selection metric continue. One epoch was
# too few for LeNet: it stopped 24 of 40 Fashion-MNIST trials while slow starters (small lr,
# cosine, warm-up) still climbed. Hyperband's F = 3 keeps a third at each rung.
GRACE_PERIOD = 3
REDUCTION_FACTOR = 3.0
SPEC_KEYS = {"choices", "low", "high", "log"}
# Set by the study itself, per trial: not searchable.
RESERVED = ("dataset", "data_dir", "seed", "device", "threads", "epochs")


@dataclass(frozen=True)
class SearchSpace:
    params: dict[str, dict[str, Any]]  # field -> {"choices": [...]} or {"low", "high", "log"}
    fixed: dict[str, Any]  # fields held fixed for every trial

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.params, "fixed": self.fixed}

    def optuna_distributions(self) -> dict[str, Any]:
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        types_ = field_types()
        dists: dict[str, Any] = {}
        for name, spec in self.params.items():
            if "choices" in spec:
                dists[name] = CategoricalDistribution(spec["choices"])
            elif types_[name] is int:
                dists[name] = IntDistribution(int(spec["low"]), int(spec["high"]), log=spec["log"])
            else:
                dists[name] = FloatDistribution(spec["low"], spec["high"], log=spec["log"])
        return dists


def default_space() -> SearchSpace:
    return parse_space({"space": DEFAULT_SPACE}, source="default space")


def load_space(path: Path) -> SearchSpace:
    from study.common.files import read_toml

    raw = read_toml(path, what="space file")
    if "kind" in raw:  # a tune experiment file: its [space] and [fixed] are a space file
        if raw["kind"] != "tune":
            raise ConfigError(f"{path}: an experiment of kind {raw['kind']!r} holds no search space")
        raw = {k: v for k, v in raw.items() if k in ("space", "fixed")}
    return parse_space(raw, source=str(path))


def parse_space(raw: dict[str, Any], *, source: str) -> SearchSpace:
    """Validate a space: known fields only, non-empty choices, low < high, valid values."""
    unknown = sorted(set(raw) - {"space", "fixed"})
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}; a space file has [space] and [fixed]")
    params_raw, fixed = raw.get("space", {}), raw.get("fixed", {})
    if not isinstance(params_raw, dict) or not params_raw:
        raise ConfigError(f"{source}: [space] must name at least one field to search")
    if not isinstance(fixed, dict):
        raise ConfigError(f"{source}: [fixed] must be a table")
    for key in [*params_raw, *fixed]:
        if key not in FIELD_NAMES:
            raise ConfigError(f"{source}: unknown key {key!r}; valid keys: {', '.join(FIELD_NAMES)}")
    for key in params_raw:
        if key in RESERVED:
            raise ConfigError(f"{source}: {key!r} is set by the study and cannot be searched")
    params = {name: _parse_param(name, spec, source) for name, spec in params_raw.items()}
    from_dict({**fixed}, source=f"{source} [fixed]")  # types and ranges of the fixed fields
    for name, spec in params.items():  # every searched value must make a valid config
        for value in spec.get("choices", [spec.get("low"), spec.get("high")]):
            try:
                from_dict({**fixed, name: value}, source=f"{source} [space]")
            except ConfigError as exc:
                raise ConfigError(f"{source}: {name} value {value!r} is invalid ({exc})") from exc
    return SearchSpace(params=params, fixed=dict(fixed))


def _parse_param(name: str, spec: Any, source: str) -> dict[str, Any]:
    where = f"{source}: {name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a table like {{ choices = [...] }} or {{ low = , high = }}")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; use choices, or low/high/log")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"}:
            raise ConfigError(f"{where}: give either choices or low/high, not both")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list")
        return {"choices": list(choices)}
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a range needs both low and high")
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    kind = field_types()[name]
    if kind not in (int, float) or not all(isinstance(v, int | float) for v in (low, high)):
        raise ConfigError(f"{where}: a low/high range needs a numeric field and numeric bounds")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false")
    if not low < high:
        raise ConfigError(f"{where}: range reversed or empty (low {low} >= high {high})")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
    return {"low": kind(low), "high": kind(high), "log": log}


def split_base_and_space(
    space: SearchSpace, file_values: dict[str, Any], flags: dict[str, Any]
) -> tuple[TrialConfig, SearchSpace]:
    """The config every trial starts from, and the space left to search.

    A flag fixes a searched field (and removes it from the search). A --config file only fills
    the fields that are not searched (its own optimizer, lr, ... would otherwise end the search),
    and its device and threads give way to the resources Ray grants each trial.
    """
    params = {k: v for k, v in space.params.items() if k not in flags}
    if not params:
        raise ConfigError("every searched field is fixed by a flag; nothing left to search")
    from_file = {k: v for k, v in without_placement(file_values).items() if k not in space.params}
    base = from_dict({**space.fixed, **from_file, **flags}, source="study config")
    searched = SearchSpace(params=params, fixed=space.fixed)
    for name, spec in params.items():  # every corner of the space must make a valid config
        for value in spec.get("choices", [spec.get("low"), spec.get("high")]):
            sampled_config(base, {name: value})
    return base, searched


def sampled_config(base: TrialConfig, params: dict[str, Any]) -> TrialConfig:
    """The TrialConfig of one sampled point: the study's base config with the sampled values."""
    return base.replace(**params)
