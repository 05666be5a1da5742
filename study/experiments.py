"""`study run experiments/<file>.toml`: published LeNet studies as files anyone can re-run.

An experiment file names a kind and its fields; unknown keys and invalid values are rejected
with one line naming the key::

    kind = "sweep"                  # sweep | data-fraction | tune | ensemble
    description = "..."
    seeds = 3                       # repeats of every grid point (seed 0, 1, 2)
    curve = "train_loss"            # per-epoch metric to plot, one line per grid point
    [fixed]                         # TrialConfig fields shared by every run
    epochs = 10
    [sweep]                         # TrialConfig field -> values; the grid is their product
    optimizer = ["sgd", "adam"]
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lenet_core.config import FIELD_NAMES, TrialConfig, from_dict
from lenet_core.data import ImageData
from lenet_core.errors import ConfigError

KINDS = ("sweep", "data-fraction", "tune", "ensemble")
CURVES = ("train_loss", "val_loss", "val_acc", "train_acc", "test_error", "test_acc")
KEYS = {
    "sweep": {"kind", "description", "seeds", "curve", "fixed", "sweep"},
    "data-fraction": {"kind", "description", "seeds", "fixed", "fractions"},
    "tune": {"kind", "description", "trials", "fixed", "space"},
    "ensemble": {
        "kind",
        "description",
        "members",
        "repeats",
        "resample",
        "resnet",
        "resnet_precision",
        "fixed",
    },
}
SMOKE = {"epochs": 1, "seeds": 1, "trials": 2, "members": 2}


@dataclass(frozen=True)
class Experiment:
    name: str
    kind: str
    description: str = ""
    seeds: int = 1
    curve: str = "train_loss"
    fixed: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    fractions: list[float] = field(default_factory=list)
    trials: int = 20
    space: dict[str, Any] = field(default_factory=dict)
    members: int = 5
    repeats: int = 1
    resample: str = "bootstrap"
    resnet: str = "resnet18"
    resnet_precision: str = ""  # "": the members' precision

    def smoke(self) -> Experiment:
        """The same experiment cut to the minimum: 1 epoch, 1 seed, 2 trials or members."""
        return replace(
            self,
            fixed={**self.fixed, "epochs": SMOKE["epochs"]},
            seeds=SMOKE["seeds"],
            trials=min(self.trials, SMOKE["trials"]),
            members=min(self.members, SMOKE["members"]),
            repeats=1,
        )

    def with_overrides(self, overrides: dict[str, Any]) -> Experiment:
        """Flags (e.g. --dataset, --data-dir) override the file's fixed fields."""
        experiment = replace(self, fixed={**self.fixed, **overrides})
        experiment.check()
        return experiment

    def check(self) -> None:
        """Refuse a field both fixed and swept, and any value that makes no valid config."""
        where = f"{self.name}.toml"
        for swept in self.sweep:
            if swept in self.fixed:
                raise ConfigError(f"{where}: {swept!r} is both fixed and swept")
        base = self.base_config()
        self.configs()  # building every run's TrialConfig validates every swept value
        if self.kind == "ensemble":
            try:
                self.ensemble_plan().specs([base], base)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from exc

    def ensemble_plan(self) -> Any:
        from study.ensemble.run import EnsemblePlan

        return EnsemblePlan(
            members=self.members,
            repeats=self.repeats,
            resample=self.resample,
            resnet=self.resnet,
            resnet_precision=self.resnet_precision or None,
        )

    def base_config(self) -> TrialConfig:
        return from_dict(self.fixed, source=f"{self.name}.toml [fixed]")

    def configs(self) -> list[TrialConfig]:
        """Every run: the grid (or fractions) times the seeds, in a stable order."""
        if self.kind == "data-fraction":
            points = [{"train_fraction": f} for f in self.fractions]
        elif self.kind == "sweep":
            names = list(self.sweep)
            points = [
                dict(zip(names, values, strict=True))
                for values in itertools.product(*(self.sweep[n] for n in names))
            ]
        else:
            return []
        return [
            from_dict({**self.fixed, **point, "seed": seed}, source=f"{self.name}.toml")
            for point in points
            for seed in range(self.seeds)
        ]

    def swept_fields(self) -> list[str]:
        return ["train_fraction"] if self.kind == "data-fraction" else list(self.sweep)


def load_experiment(path: Path) -> Experiment:
    from study.common.files import read_toml

    raw = read_toml(path, what="experiment file")
    return parse_experiment(raw, name=path.stem)


def parse_experiment(raw: dict[str, Any], *, name: str) -> Experiment:
    where = f"{name}.toml"
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    unknown = sorted(set(raw) - KEYS[kind])
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} for kind {kind!r}; "
            f"valid keys: {', '.join(sorted(KEYS[kind]))}"
        )
    values = {k: v for k, v in raw.items() if k != "kind"}
    _check_types(values, where)
    experiment = Experiment(name=name, kind=kind, **values)
    if kind == "sweep":
        if not experiment.sweep:
            raise ConfigError(f"{where}: [sweep] must name at least one field")
        for key, choices in experiment.sweep.items():
            if key not in FIELD_NAMES or key == "seed":
                raise ConfigError(f"{where}: [sweep] unknown key {key!r}; sweep TrialConfig fields")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{where}: [sweep] {key} must be a non-empty list")
        if experiment.curve not in CURVES:
            raise ConfigError(f"{where}: curve must be one of {', '.join(CURVES)}")
    if kind == "data-fraction" and (
        not experiment.fractions or not all(0 < f <= 1 for f in experiment.fractions)
    ):
        raise ConfigError(f"{where}: fractions must be a non-empty list of numbers in (0, 1]")
    if kind == "tune":
        from study.tune.space import parse_space

        parse_space({"space": experiment.space, "fixed": experiment.fixed}, source=where)
    experiment.check()
    return experiment


def _check_types(values: dict[str, Any], where: str) -> None:
    expected = {
        "description": str,
        "seeds": int,
        "curve": str,
        "fixed": dict,
        "sweep": dict,
        "fractions": list,
        "trials": int,
        "space": dict,
        "members": int,
        "repeats": int,
        "resample": str,
        "resnet": str,
        "resnet_precision": str,
    }
    for key, value in values.items():
        kind = expected[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be {kind.__name__}, got {value!r}")
        if kind is int and value < 1:
            raise ConfigError(f"{where}: {key} must be >= 1, got {value}")


def execute(
    experiment: Experiment,
    *,
    data: ImageData,
    cluster: Any,
    out: Path,
    name: str,
    resume: bool = False,
    overwrite: bool = False,
    say: Any = print,
) -> Path:
    """Run an experiment of any kind through its stage; write its tables, figures and ``run.json``."""
    from study.common.files import write_provenance

    stage = {"tune": _run_tune, "ensemble": _run_ensemble}.get(experiment.kind, _run_sweep)
    stage(
        experiment,
        data=data,
        cluster=cluster,
        out=out,
        name=name,
        resume=resume,
        overwrite=overwrite,
        say=say,
    )
    root = out / name
    write_provenance(
        root,
        data=data,
        extra={
            "kind": experiment.kind,
            "experiment": experiment.name,
            "description": experiment.description,
            "file": {k: v for k, v in vars(experiment).items() if k != "name"},
        },
    )
    return root


def _run_tune(experiment: Experiment, *, data: ImageData, **run: Any) -> None:
    from study.tune.run import TuneSettings, run_study
    from study.tune.space import parse_space, split_base_and_space

    space = parse_space({"space": experiment.space, "fixed": {}}, source=f"{experiment.name}.toml")
    base, space = split_base_and_space(space, {}, experiment.fixed)
    run_study(base=base, space=space, settings=TuneSettings(trials=experiment.trials), data=data, **run)


def _run_ensemble(experiment: Experiment, *, data: ImageData, **run: Any) -> None:
    from study.ensemble.run import run_ensemble

    base = experiment.base_config()
    run_ensemble([base], base=base, plan=experiment.ensemble_plan(), data=data, **run)


def _run_sweep(experiment: Experiment, *, data: ImageData, **run: Any) -> None:
    from study.sweep.run import run_sweep_experiment

    run_sweep_experiment(experiment, data=data, **run)
