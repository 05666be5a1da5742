"""`study run experiments/<file>.toml`: published LeNet studies as files anyone can re-run.

An experiment file names a kind and its fields; unknown keys and invalid values are rejected
with one line naming the key::

    kind = "sweep"                  # sweep | data-fraction | tune | ensemble | tune-ensemble
    description = "..."             # the question, and the budget when the budget is part of it
    seeds = 5                       # repeats of every grid point (seed 0, 1, ..., 4)
    curve = "train_loss"            # per-epoch metric to plot, one line per grid point
    [fixed]                         # TrialConfig fields shared by every run
    epochs = 50
    patience = 5                    # stop once validation accuracy has not improved for 5 epochs
    [sweep]                         # TrialConfig field -> values; the grid is their product
    optimizer = ["sgd", "adam"]

Sweeps (``kind = "sweep"``):

* ``[sweep]`` is one grid. ``[[sweep]]`` tables, repeated, are several grids whose union is run
  (a point in two grids runs once); each field takes its own values per grid, e.g. a learning-rate
  range per optimizer::

      [[sweep]]
      optimizer = "sgd"             # a single value may be written without the list
      lr = [1e-3, 1e-2, 1e-1, 1.0]
      [[sweep]]
      optimizer = "adadelta"
      lr = [1e-3, 1e-2, 1e-1, 1.0, 10.0]

  The table's condition columns are every field any grid sweeps, each read from the config as it
  ran (a field a grid leaves alone shows its fixed or default value).
* No ``[sweep]`` at all: one condition, ``seeds`` runs of ``[fixed]`` (e.g. a published recipe),
  named by a ``condition`` column holding the experiment's name.
* ``select = "lr"``: for every combination of the other swept fields (e.g. each optimizer) keep
  the value of this field with the highest mean validation accuracy over its ok seeds (failed runs
  left out; the first in grid order wins a tie), then compare those selected points on test
  error. Test error never takes part in the choice. Writes ``selection`` (every point with its
  validation mean, the chosen one marked) and ``selected`` tables.
* ``compare_at = { lr = 1e-3 }``: also compare every condition at this value of a swept field
  (the value must be in the grid): the ``compare_at`` table, e.g. all optimizers at one lr.
* ``reference = { test_acc = 0.9766, source = "...", note = "..." }``: a published number the
  report prints next to ours; ``note`` says what differs between their setup and this one.

Data-fraction (``kind = "data-fraction"``): ``fractions`` of the training split, each run
``seeds`` times under a budget, named in the ``budget`` column:

* ``equal_epochs``: every fraction trains for ``[fixed] epochs`` (and ``patience``) epochs;
* ``equal_steps`` (run besides it when ``equal_steps = true``, the default): every fraction
  takes about as many optimizer steps as the full split does in ``epochs`` epochs: its epochs
  (and patience) are multiplied by 1/fraction and rounded to the nearest whole epoch (at least
  1), so the steps match up to that rounding and each epoch's last partial batch.

At fraction 1 both budgets are the same runs, trained once and counted in both views. The
summary compares the fractions within each budget.

Tune (``kind = "tune"``): ``trials``, ``[space]`` and ``[fixed]`` as in a space file, and ASHA's
``grace_period`` (epochs every trial trains before it may be stopped, default 3, clipped to the
epochs) and ``reduction_factor`` (only the top 1/F at each rung continue, default 3), as
``study tune --grace-period/--reduction-factor``; ``seeds_per_trial`` (default 1) trains each
trial's config on that many seeds as one pack and scores it by their mean, as
``study tune --seeds-per-trial``.

Tune, then ensemble (``kind = "tune-ensemble"``): the tune keys (``trials``, ``grace_period``,
``reduction_factor``, ``seeds_per_trial``, ``[space]``, ``[fixed]``) and the ensemble keys
(``members``, ``repeats``, ``resample``, ``resnet``, ``resnet_precision``, ``resnet_epochs``) in
one file. The study runs
first (OUT/NAME/tune); its best completed trial by validation accuracy (``tune/best.json``) is
the config of every ensemble member (OUT/NAME/ensemble), as ``study ensemble --from OUT/NAME``
would. ``--resume`` skips a study that already ended and reuses the members already trained.
Published numbers to place the results among, in the report's table::

    anchor_source = "zalandoresearch/fashion-mnist README, benchmark table"
    [[anchor]]
    model = "2 conv + max pooling"
    test_acc = [0.876, 0.916]       # a fraction, or [low, high] for a published range
    parameters = "< 100K"           # optional, as published
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lenet_core.config import FIELD_NAMES, TrialConfig, from_dict
from lenet_core.errors import ConfigError, StudyError
from study.common.context import RunContext
from study.stages.sweep.plan import Planned, SweepPlan
from study.stages.tune.space import GRACE_PERIOD, REDUCTION_FACTOR

KINDS = ("sweep", "data-fraction", "tune", "ensemble", "tune-ensemble")
CURVES = ("train_loss", "val_loss", "val_acc", "train_acc", "test_error", "test_acc")
KEYS = {
    "sweep": {
        "kind",
        "description",
        "seeds",
        "curve",
        "fixed",
        "sweep",
        "select",
        "compare_at",
        "reference",
    },
    "data-fraction": {"kind", "description", "seeds", "fixed", "fractions", "equal_steps"},
    "tune": {
        "kind",
        "description",
        "trials",
        "grace_period",
        "reduction_factor",
        "seeds_per_trial",
        "fixed",
        "space",
    },
    "ensemble": {
        "kind",
        "description",
        "members",
        "repeats",
        "resample",
        "resnet",
        "resnet_precision",
        "resnet_epochs",
        "fixed",
    },
}
KEYS["tune-ensemble"] = KEYS["tune"] | KEYS["ensemble"] | {"anchor", "anchor_source"}
ANCHOR_KEYS = {"model", "test_acc", "parameters"}
TUNED = ("tune", "tune-ensemble")  # kinds with a search space
ENSEMBLED = ("ensemble", "tune-ensemble")  # kinds that train an ensemble
REFERENCE_KEYS = {"test_acc": float, "source": str, "note": str}
# --smoke: 1 epoch (whatever equal_steps would scale it to), 1 seed, 2 trials or members, and at
# most 2 values of every swept list (its first and last, or the compare_at value and the first).
SMOKE = {"epochs": 1, "seeds": 1, "trials": 2, "members": 2, "values": 2}
EQUAL_STEPS, EQUAL_EPOCHS = "equal_steps", "equal_epochs"
CONDITION = "condition"  # the column naming the one condition of a sweep without [sweep]


@dataclass(frozen=True)
class Experiment:
    name: str
    kind: str
    description: str = ""
    seeds: int = 1
    curve: str = "train_loss"
    fixed: dict[str, Any] = field(default_factory=dict)
    sweep: list[dict[str, list[Any]]] = field(default_factory=list)  # the grids, their union is run
    select: str = ""  # "": no selection by validation
    compare_at: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    fractions: list[float] = field(default_factory=list)
    equal_steps: bool = True
    trials: int = 20
    grace_period: int = GRACE_PERIOD  # ASHA: epochs before a trial may be stopped (clipped to epochs)
    reduction_factor: float = REDUCTION_FACTOR  # ASHA: the top 1/F at a rung continue
    seeds_per_trial: int = 1  # each trial's config trains on this many seeds as one pack
    space: dict[str, Any] = field(default_factory=dict)
    members: int = 5
    repeats: int = 1
    resample: str = "bootstrap"
    resnet: str = "resnet18"
    resnet_precision: str = ""  # "": the members' precision
    resnet_epochs: int = 0  # 0: the members' epochs
    anchor: list[dict[str, Any]] = field(default_factory=list)  # published rows for the report
    anchor_source: str = ""
    epoch_cap: int = 0  # not a file key: --smoke's bound on every run's epochs; 0 = none

    def smoke(self) -> Experiment:
        """The same experiment cut to the minimum: 1 epoch (equal_steps included), 1 seed, 2 trials
        or members, at most 2 values of each swept list and 2 fractions."""
        return replace(
            self,
            # a swept epochs list is capped by epoch_cap instead: fixing it too would refuse the file
            fixed=self.fixed if self._sweeps("epochs") else {**self.fixed, "epochs": SMOKE["epochs"]},
            seeds=SMOKE["seeds"],
            seeds_per_trial=SMOKE["seeds"],
            sweep=[{k: self._smoke_values(k, v) for k, v in grid.items()} for grid in self.sweep],
            fractions=_fewest(self.fractions, keep=None),
            trials=min(self.trials, SMOKE["trials"]),
            members=min(self.members, SMOKE["members"]),
            repeats=1,
            resnet_epochs=min(self.resnet_epochs, SMOKE["epochs"]) if self.resnet_epochs else 0,
            epoch_cap=SMOKE["epochs"],
        )

    def _sweeps(self, key: str) -> bool:
        return any(key in grid for grid in self.sweep)

    def _smoke_values(self, key: str, values: list[Any]) -> list[Any]:
        # the compare_at value stays, or its view would be empty
        return _fewest(values, keep=self.compare_at.get(key))

    def with_overrides(self, overrides: dict[str, Any]) -> Experiment:
        """Flags (e.g. --dataset, --data-dir) override the file's fixed fields."""
        experiment = replace(self, fixed={**self.fixed, **overrides})
        experiment.check()
        return experiment

    def check(self) -> None:
        """Refuse a field both fixed and swept, and any value that makes no valid config."""
        where = f"{self.name}.toml"
        for grid in self.sweep:
            for swept in grid:
                if swept in self.fixed:
                    raise ConfigError(f"{where}: {swept!r} is both fixed and swept")
        if self.kind == "data-fraction" and "train_fraction" in self.fixed:
            raise ConfigError(f"{where}: 'train_fraction' is both fixed and swept (by fractions)")
        base = self.base_config()
        self.configs()  # building every run's TrialConfig validates every swept value
        if self.kind in ENSEMBLED:
            try:
                self.ensemble_plan().specs([base], base)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from exc

    def ensemble_plan(self) -> Any:
        from study.stages.ensemble.run import EnsemblePlan

        return EnsemblePlan(
            members=self.members,
            repeats=self.repeats,
            resample=self.resample,
            resnet=self.resnet,
            resnet_precision=self.resnet_precision or None,
            resnet_epochs=self.resnet_epochs or None,
        )

    def base_config(self) -> TrialConfig:
        return from_dict(self.fixed, source=f"{self.name}.toml [fixed]")

    def budgets(self) -> list[str]:
        """The data-fraction budgets run: equal steps (the default) and always equal epochs."""
        return [EQUAL_STEPS, EQUAL_EPOCHS] if self.equal_steps else [EQUAL_EPOCHS]

    def fraction_epochs(self, fraction: float, budget: str) -> tuple[int, int]:
        """(epochs, patience) of one fraction under one budget, before --smoke's cap."""
        base = self.base_config()
        if budget == EQUAL_EPOCHS:
            return base.epochs, base.patience
        # 1/fraction as many epochs of a fraction-sized split: about as many steps as the full one
        return max(1, round(base.epochs / fraction)), round(base.patience / fraction)

    def grid_points(self) -> list[dict[str, Any]]:
        """The sweep's points: the union of its grids' products, first occurrence first."""
        points: list[dict[str, Any]] = []
        for grid in self.sweep or [{}]:
            names = list(grid)
            for values in itertools.product(*(grid[n] for n in names)):
                point = dict(zip(names, values, strict=True))
                if point not in points:
                    points.append(point)
        return points

    def planned(self) -> list[Planned]:
        """Every row of the runs table, grid (or budget x fraction) x seed, in a stable order."""
        if self.kind == "data-fraction":
            return [
                Planned({"budget": budget, "train_fraction": fraction}, config)
                for budget in self.budgets()
                for fraction in self.fractions
                for config in self._seeded(self._fraction_values(fraction, budget))
            ]
        if self.kind != "sweep":
            return []
        swept = self.swept_fields()
        return [
            Planned(
                {CONDITION: self.name} if swept == [CONDITION] else {k: getattr(c, k) for k in swept},
                c,
            )
            for point in self.grid_points()
            for c in self._seeded(point)
        ]

    def _fraction_values(self, fraction: float, budget: str) -> dict[str, Any]:
        epochs, patience = self.fraction_epochs(fraction, budget)
        return {"train_fraction": fraction, "epochs": epochs, "patience": patience}

    def _seeded(self, values: dict[str, Any]) -> list[TrialConfig]:
        merged = {**self.fixed, **values}
        if self.epoch_cap:
            epochs = merged.get("epochs", TrialConfig.epochs)
            merged["epochs"] = min(epochs, self.epoch_cap) if isinstance(epochs, int) else epochs
        return [from_dict({**merged, "seed": seed}, source=f"{self.name}.toml") for seed in range(self.seeds)]

    def configs(self) -> list[TrialConfig]:
        """Every distinct run to train, in table order (rows with the same config share one run)."""
        return list(dict.fromkeys(p.config for p in self.planned()))

    def swept_fields(self) -> list[str]:
        """The condition columns of the runs and summary tables."""
        if self.kind == "data-fraction":
            return ["budget", "train_fraction"]
        if self.kind != "sweep":
            return []
        names = list(dict.fromkeys(k for grid in self.sweep for k in grid))
        return names or [CONDITION]

    def within(self) -> list[str]:
        """Columns the summary compares within (each budget's fractions apart), else none."""
        return ["budget"] if self.kind == "data-fraction" else []

    def sweep_plan(self) -> SweepPlan:
        """What the sweep stage trains and how it cuts its tables (kinds sweep, data-fraction)."""
        return SweepPlan(
            name=self.name,
            kind=self.kind,
            planned=tuple(self.planned()),
            swept=tuple(self.swept_fields()),
            within=tuple(self.within()),
            description=self.description,
            curve=self.curve,
            select=self.select,
            compare_at=dict(self.compare_at),
            reference=dict(self.reference),
            file=self.as_file(),
        )

    def as_file(self) -> dict[str, Any]:
        """The experiment as run (every key, defaults filled in), for run.json and the report."""
        return {k: v for k, v in vars(self).items() if k != "name"}


def _fewest(values: list[Any], *, keep: Any) -> list[Any]:
    """At most SMOKE["values"] of ``values``, in file order: ``keep`` if listed, the first, the last."""
    chosen = [v for v in values if keep is not None and v == keep][:1]
    for value in (values[:1] + values[-1:]) if values else []:
        if value not in chosen and len(chosen) < SMOKE["values"]:
            chosen.append(value)
    return [v for v in values if v in chosen]


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
    if "sweep" in values:
        values["sweep"] = _parse_grids(values["sweep"], where)
    _check_types(values, where)
    experiment = Experiment(name=name, kind=kind, **values)
    if kind == "sweep":
        _check_sweep(experiment, where)
    if kind == "data-fraction" and (
        not experiment.fractions
        or not all(isinstance(f, int | float) and not isinstance(f, bool) for f in experiment.fractions)
        or not all(0 < f <= 1 for f in experiment.fractions)
    ):
        raise ConfigError(f"{where}: fractions must be a non-empty list of numbers in (0, 1]")
    _check_anchor(experiment, where)
    if kind in TUNED:
        from study.stages.tune.space import parse_space

        parse_space({"space": experiment.space, "fixed": experiment.fixed}, source=where)
    experiment.check()
    return experiment


def _parse_grids(raw: Any, where: str) -> list[dict[str, list[Any]]]:
    """``[sweep]`` (one table) or ``[[sweep]]`` (several) as a list of grids, every value a list."""
    tables = [raw] if isinstance(raw, dict) else raw
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{where}: sweep must be a [sweep] table or [[sweep]] tables, got {raw!r}")
    grids = []
    for table in tables:
        if not table:
            raise ConfigError(f"{where}: a [sweep] table must name at least one field")
        grid = {}
        for key, choices in table.items():
            if key not in FIELD_NAMES or key == "seed":
                raise ConfigError(f"{where}: [sweep] unknown key {key!r}; sweep TrialConfig fields")
            choices = choices if isinstance(choices, list) else [choices]  # one value, no brackets
            if not choices:
                raise ConfigError(f"{where}: [sweep] {key} must be a non-empty list")
            grid[key] = choices
        grids.append(grid)
    return grids


def _check_sweep(experiment: Experiment, where: str) -> None:
    if experiment.curve not in CURVES:
        raise ConfigError(f"{where}: curve must be one of {', '.join(CURVES)}")
    swept = [k for grid in experiment.sweep for k in grid]
    if experiment.select:
        if experiment.select not in swept:
            raise ConfigError(f"{where}: select {experiment.select!r} must be a swept field")
        if set(swept) == {experiment.select}:
            raise ConfigError(
                f"{where}: select {experiment.select!r} needs another swept field to select it for"
            )
    for key, value in experiment.compare_at.items():
        if key not in swept:
            raise ConfigError(f"{where}: compare_at {key!r} must be a swept field")
        if not any(value in grid.get(key, []) for grid in experiment.sweep):
            raise ConfigError(f"{where}: compare_at {key} = {value!r} is not among the swept values")
    _check_reference(experiment.reference, where)


def _check_reference(reference: dict[str, Any], where: str) -> None:
    if not reference:
        return
    unknown = sorted(set(reference) - set(REFERENCE_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: reference unknown key {unknown[0]!r}; valid keys: {', '.join(REFERENCE_KEYS)}"
        )
    for key in ("test_acc", "source"):
        if key not in reference:
            raise ConfigError(f"{where}: reference needs {key}")
    for key, kind in REFERENCE_KEYS.items():
        value = reference.get(key, "")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"{where}: reference {key} must be {kind.__name__}, got {value!r}")
    if not 0 < reference["test_acc"] <= 1:
        raise ConfigError(
            f"{where}: reference test_acc is a fraction in (0, 1] (0.9766 for 97.66%), "
            f"got {reference['test_acc']}"
        )


def _check_anchor(experiment: Experiment, where: str) -> None:
    """Every [[anchor]] row names a model and a published accuracy (a fraction or [low, high])."""
    if experiment.anchor and not experiment.anchor_source:
        raise ConfigError(f"{where}: [[anchor]] rows need anchor_source, where the numbers come from")
    for row in experiment.anchor:
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: anchor must be [[anchor]] tables, got {row!r}")
        unknown = sorted(set(row) - ANCHOR_KEYS)
        if unknown:
            raise ConfigError(
                f"{where}: anchor unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(ANCHOR_KEYS))}"
            )
        if not isinstance(row.get("model"), str) or not row["model"]:
            raise ConfigError(f"{where}: every anchor needs model, a name")
        if not isinstance(row.get("parameters", ""), str):
            raise ConfigError(f'{where}: anchor parameters is text as published (e.g. "< 100K")')
        accs = row.get("test_acc")
        accs = accs if isinstance(accs, list) else [accs]
        numbers = all(isinstance(a, int | float) and not isinstance(a, bool) for a in accs)
        if not (numbers and len(accs) in (1, 2) and all(0 < a <= 1 for a in accs) and accs == sorted(accs)):
            raise ConfigError(
                f"{where}: anchor {row['model']!r} test_acc must be a fraction in (0, 1] or "
                f"[low, high] (0.925 for 92.5%), got {row.get('test_acc')!r}"
            )


def _check_types(values: dict[str, Any], where: str) -> None:
    expected = {
        "description": str,
        "seeds": int,
        "curve": str,
        "fixed": dict,
        "sweep": list,
        "select": str,
        "compare_at": dict,
        "reference": dict,
        "fractions": list,
        "equal_steps": bool,
        "trials": int,
        "grace_period": int,
        "reduction_factor": float,
        "seeds_per_trial": int,
        "space": dict,
        "members": int,
        "repeats": int,
        "resample": str,
        "resnet": str,
        "resnet_precision": str,
        "resnet_epochs": int,
        "anchor": list,
        "anchor_source": str,
    }
    for key, value in values.items():
        kind = expected[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = values[key] = float(value)  # TOML's 3 for 3.0
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ConfigError(f"{where}: {key} must be {kind.__name__}, got {value!r}")
        if kind is int and value < 1:
            raise ConfigError(f"{where}: {key} must be >= 1, got {value}")
        if key == "reduction_factor" and not (math.isfinite(value) and value > 1):
            raise ConfigError(
                f"{where}: reduction_factor must be > 1 (the top 1/F of a rung continue), got {value}"
            )


def execute(experiment: Experiment, *, context: RunContext) -> Path:
    """Run an experiment of any kind through its stage; each stage writes its tables, figures and
    ``run.json``, and the experiment's own ``run.json`` (with the file as run) goes in OUT/NAME."""
    from study.common.files import provenance
    from study.common.results import write_run_info

    if experiment.kind in ("sweep", "data-fraction"):
        from study.stages.sweep.run import run_sweep

        run_sweep(experiment.sweep_plan(), context=context)  # its run.json is the experiment's
        return context.root
    stage = {"tune": _run_tune, "ensemble": _run_ensemble, "tune-ensemble": _run_tune_then_ensemble}
    stage[experiment.kind](experiment, context)
    write_run_info(
        context.root,
        provenance(
            context.data,
            kind=experiment.kind,
            experiment=experiment.name,
            description=experiment.description,
            file=experiment.as_file(),
        ),
    )
    return context.root


def _run_tune(experiment: Experiment, context: RunContext) -> None:
    from study.stages.tune.run import TuneSettings, run_study
    from study.stages.tune.space import parse_space, split_base_and_space

    space = parse_space({"space": experiment.space, "fixed": {}}, source=f"{experiment.name}.toml")
    base, space = split_base_and_space(space, {}, experiment.fixed)
    settings = TuneSettings(
        trials=experiment.trials,
        grace_period=experiment.grace_period,
        reduction_factor=experiment.reduction_factor,
        seeds_per_trial=experiment.seeds_per_trial,
    )
    run_study(base=base, space=space, settings=settings, context=context)


def _run_tune_then_ensemble(experiment: Experiment, context: RunContext) -> None:
    """The study, then an ensemble of its best config: ``study tune`` + ``study ensemble --from``."""
    from study.stages.ensemble.run import run_ensemble
    from study.stages.tune.results import TuneResults
    from study.stages.tune.run import STAGE, study_state

    tune_folder = context.root / STAGE
    state = study_state(tune_folder) if context.resume else "absent"
    if state == "ended":
        context.progress(f"tune: the study in {tune_folder} has ended; its best config is reused")
    else:
        _run_tune(experiment, context.but(resume=state == "started"))
    best = TuneResults.read(tune_folder).best_config
    if best is None:
        raise StudyError(f"{tune_folder}: no trial completed, so there is no tuned config to ensemble")
    config = best.replace(device="auto", threads=0)  # members run where Ray places them
    run_ensemble([config], base=config, plan=experiment.ensemble_plan(), context=context)


def _run_ensemble(experiment: Experiment, context: RunContext) -> None:
    from study.stages.ensemble.run import run_ensemble

    base = experiment.base_config()
    run_ensemble([base], base=base, plan=experiment.ensemble_plan(), context=context)
