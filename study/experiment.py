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

import numpy as np
import pandas as pd

from lenet_core.config import FIELD_NAMES, TrialConfig, from_dict
from lenet_core.data import ImageData
from lenet_core.errors import ConfigError
from lenet_core.train import train_trial

KINDS = ("sweep", "data-fraction", "tune", "ensemble")
CURVES = ("train_loss", "val_loss", "val_acc", "train_acc", "test_error", "test_acc")
KEYS = {
    "sweep": {"kind", "description", "seeds", "curve", "fixed", "sweep"},
    "data-fraction": {"kind", "description", "seeds", "fixed", "fractions"},
    "tune": {"kind", "description", "trials", "fixed", "space"},
    "ensemble": {"kind", "description", "members", "resnet", "fixed"},
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
    resnet: str = "resnet18"

    def smoke(self) -> Experiment:
        """The same experiment cut to the minimum: 1 epoch, 1 seed, 2 trials or members."""
        return replace(
            self,
            fixed={**self.fixed, "epochs": SMOKE["epochs"]},
            seeds=SMOKE["seeds"],
            trials=min(self.trials, SMOKE["trials"]),
            members=min(self.members, SMOKE["members"]),
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
        self.base_config()
        self.configs()  # building every run's TrialConfig validates every swept value

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
    from study.output import read_toml

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
        from study.space import parse_space

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
        "resnet": str,
    }
    for key, value in values.items():
        kind = expected[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be {kind.__name__}, got {value!r}")
        if kind is int and value < 1:
            raise ConfigError(f"{where}: {key} must be >= 1, got {value}")


# ------------------------------------------------------------------ running sweeps


def run_one(config: TrialConfig, data: ImageData) -> dict[str, Any]:
    """One sweep run in a Ray task: its summary and per-epoch history, no weights."""
    result = train_trial(config, data)
    return {"summary": result.summary(), "history": result.history}


def run_sweep(
    experiment: Experiment, *, data: ImageData, cluster: Any, folder: Path, say: Any = print
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every run of a sweep or data-fraction experiment through Ray: (runs, epochs) tables."""
    from study.raycluster import map_on_ray, ray_session

    configs = experiment.configs()
    swept = experiment.swept_fields()
    runs: list[dict[str, Any]] = []
    curves: list[pd.DataFrame] = []
    with ray_session(cluster) as session:
        plan = session.plan
        placed = [c.replace(threads=plan.cpus_per_trial) for c in configs]
        say(
            f"Ray dashboard: {session.dashboard_url or 'not available'}; {len(placed)} runs, "
            f"{plan.concurrent} at a time -> {folder}"
        )

        def keep(config: TrialConfig, output: dict[str, Any]) -> str:
            summary = output["summary"]
            run_id = placed.index(config)  # grid order, whatever order the runs finish in
            runs.append(
                {
                    "run": run_id,
                    **{k: getattr(config, k) for k in swept},
                    "seed": config.seed,
                    "status": summary["status"],
                    "epochs_run": summary["epochs_run"],
                    "final_train_loss": output["history"][-1]["train_loss"],
                    "val_acc": summary["val_acc"],
                    "test_acc": summary["test_acc"],
                    "test_error": 1 - summary["test_acc"],
                    "train_error": 1 - output["history"][-1]["train_acc"],
                    "train_images": _train_images(config, data),
                    "seconds": summary["seconds"],
                    "images_per_s": summary["images_per_s"],
                    "data_checksum": summary["data_checksum"],
                    "config": summary["config"],
                }
            )
            curve = pd.DataFrame(output["history"])
            curve.insert(0, "run", run_id)
            curves.append(curve)
            return f"run {run_id} test acc {summary['test_acc']:.4f}"

        map_on_ray(
            run_one, placed, data=data, plan=plan, label="runs", name=lambda c: f"run {c}", on_result=keep
        )
    table = pd.DataFrame(runs).sort_values("run").reset_index(drop=True)
    table["config"] = table["config"].map(lambda c: str(c))
    epochs = pd.concat(curves, ignore_index=True).sort_values(["run", "epoch"], ignore_index=True)
    epochs["test_error"] = 1 - epochs["test_acc"]
    return table, epochs


def _train_images(config: TrialConfig, data: ImageData) -> int:
    from lenet_core.train import trial_split

    return len(trial_split(data, config)[0])


def summarize(runs: pd.DataFrame, swept: list[str]) -> pd.DataFrame:
    """Mean and standard deviation over seeds for every grid point."""
    metrics = ["test_error", "val_acc", "final_train_loss", "seconds"]
    grouped = runs.groupby(swept, dropna=False, sort=False)
    table = grouped[metrics].agg(["mean", "std"])
    table.columns = [f"{m}_{s}" for m, s in table.columns]
    table["runs"] = grouped.size()
    table["diverged"] = grouped["status"].agg(lambda s: int((s == "diverged").sum()))
    return table.reset_index()


def label_of(row: Any, swept: list[str]) -> str:
    return ", ".join(f"{k}={_fmt(getattr(row, k) if hasattr(row, k) else row[k])}" for k in swept)


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{value:g}"
    return str(value)


def execute(
    experiment: Experiment,
    *,
    data: ImageData,
    cluster: Any,
    out: Path,
    name: str,
    say: Any = print,
) -> Path:
    """Run an experiment of any kind; write its tables, figures and ``run.json``."""
    from study.output import prepare_run_dir, write_provenance, write_table

    root = out / name
    if experiment.kind == "tune":
        _run_tune(experiment, data=data, cluster=cluster, out=out, name=name, say=say)
    elif experiment.kind == "ensemble":
        from study.ensemble import run_ensemble

        base = experiment.base_config()
        run_ensemble(
            [base],
            base=base,
            members=experiment.members,
            resnet=experiment.resnet,
            data=data,
            cluster=cluster,
            out=out,
            name=name,
            say=say,
        )
    else:
        folder = prepare_run_dir(out, name, ".")
        runs, epochs = run_sweep(experiment, data=data, cluster=cluster, folder=folder, say=say)
        swept = experiment.swept_fields()
        write_table(runs, folder / "runs")
        write_table(epochs, folder / "epochs", csv=False)
        summary = summarize(runs, swept)
        write_table(summary, folder / "summary", markdown=True)
        write_sweep_figures(experiment, runs, epochs, summary, folder)
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


def _run_tune(
    experiment: Experiment, *, data: ImageData, cluster: Any, out: Path, name: str, say: Any
) -> None:
    from study.space import parse_space
    from study.tune import StudyInterrupted, TuneSettings, run_study, split_base_and_space

    space = parse_space({"space": experiment.space, "fixed": {}}, source=f"{experiment.name}.toml")
    base, space = split_base_and_space(space, {}, experiment.fixed, seed=0, cluster=cluster)
    try:
        run_study(
            base=base,
            space=space,
            settings=TuneSettings(trials=experiment.trials, seed=0),
            cluster=cluster,
            data=data,
            out=out,
            name=name,
            resume=False,
            say=say,
        )
    except StudyInterrupted as exc:
        raise ConfigError(f"the tune experiment stopped early: {exc}") from exc


def write_sweep_figures(
    experiment: Experiment, runs: pd.DataFrame, epochs: pd.DataFrame, summary: pd.DataFrame, folder: Path
) -> None:
    from study import experiment_figures as figs

    swept = experiment.swept_fields()
    title = experiment.description or experiment.name
    if experiment.kind == "data-fraction":
        figs.fraction_plot(runs, folder / "error_vs_training_examples.png", title=title)
    else:
        figs.curves(
            runs, epochs, swept, experiment.curve, folder / f"{experiment.curve}_per_epoch.png", title=title
        )
    figs.error_bars(summary, swept, folder / "test_error.png", title=f"Test error: {title}")
