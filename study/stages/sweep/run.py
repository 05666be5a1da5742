"""Sweeps and data-fraction experiments: every grid point x seed through the shared executor,
then the tables and figures of ``SweepResults``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lenet_core.config import TrialConfig
from lenet_core.data import ImageData
from lenet_core.train import TrialResult, train_trial
from study.common.context import RunContext
from study.common.executor import UnreadableOutput, run_units
from study.common.files import provenance, read_json, write_json
from study.common.placement import without_placement
from study.common.results import CONFIG_COLUMN, expand_configs
from study.common.selection import SELECTION_METRIC
from study.stages.sweep.plan import Planned, SweepPlan
from study.stages.sweep.results import RUNS_FOLDER, SweepResults, build_views
from study.stages.sweep.tables import summarize

STAGE = "."  # a sweep's tables sit in OUT/NAME itself


@dataclass(frozen=True)
class SweepRun:
    """One distinct run of a sweep: its id (grid order) and the config it trains."""

    run_id: int
    config: TrialConfig

    @property
    def name(self) -> str:
        return f"run_{self.run_id:04d}"


@dataclass
class RunOutput:
    summary: dict[str, Any]  # TrialResult.summary() and where it ran
    history: list[dict[str, Any]]


def train_run(run: SweepRun, data: ImageData) -> RunOutput:
    """One sweep run (in a Ray worker, placed): summary and history, no weights."""
    return run_output(train_trial(run.config, data))


def train_runs(runs: list[SweepRun], data: ImageData) -> list[RunOutput]:
    """Sweep runs of one shape (a condition's seeds, and any other runs sharing its
    ``lenet_core.packed.pack_key``) as one pack, in a Ray worker, placed."""
    from lenet_core.packed import train_packed

    return [run_output(result) for result in train_packed([run.config for run in runs], data)]


def run_output(result: TrialResult) -> RunOutput:
    """What a sweep keeps of a trained run, alone or packed: summary and history, no weights."""
    return RunOutput(summary=result.summary(), history=result.history)


@dataclass(frozen=True)
class RunStore:
    """Each finished run as ``runs/run_NNNN.json``, so a resume can skip it."""

    folder: Path

    def path(self, run: SweepRun) -> Path:
        return self.folder / RUNS_FOLDER / f"{run.name}.json"

    def load(self, run: SweepRun) -> RunOutput | None:
        path = self.path(run)
        if not path.is_file():
            return None
        try:
            saved = read_json(path, what="saved run")
            same = without_placement(saved["summary"]["config"]) == without_placement(run.config.to_dict())
        except Exception as exc:  # a damaged file: named, and the run trains again
            raise UnreadableOutput(f"{path}: {exc}") from exc
        return RunOutput(summary=saved["summary"], history=saved["history"]) if same else None

    def save(self, run: SweepRun, output: RunOutput) -> None:
        write_json(self.path(run), {"summary": output.summary, "history": output.history})

    def note(self, run: SweepRun, output: RunOutput) -> str:
        return f"run {run.run_id} test acc {output.summary['test_acc']:.4f}"


def run_sweep(plan: SweepPlan, *, context: RunContext) -> SweepResults:
    """Run every grid point x seed (``--resume`` reads finished runs back from ``runs/``; runs of
    one shape train as packs of up to ``context.pack``, one Ray task each), then
    write runs, epochs, summary (the reference chosen by validation, every other point tested
    against it on test error), the select and compare_at views, the ANOVA of a factorial grid and
    figures to OUT/NAME/."""
    runs = [SweepRun(i, config) for i, config in enumerate(plan.configs())]
    with context.stage_folder(STAGE) as folder:

        def tables(outputs: dict[str, RunOutput]) -> SweepResults:
            results = sweep_results(plan, runs, outputs, context.data)
            results = dataclasses.replace(results, folder=folder, run={**results.run, "pack": context.pack})
            results.write(folder)
            return results

        return run_units(
            runs,
            work=train_run,
            work_pack=train_runs,  # runs sharing a pack_key (a condition's seeds) train as packs
            pack=context.pack,
            store=RunStore(folder),
            context=context,
            label="runs",
            then=tables,
        )


def sweep_results(
    plan: SweepPlan, runs: list[SweepRun], outputs: dict[str, RunOutput], data: ImageData
) -> SweepResults:
    """(runs, epochs, summary, views): a row per planned (condition, seed), every run's history;
    the views are those the plan asks for, and ``anova`` when the grid is factorial.

    Rows whose configs are equal (a data-fraction's fraction 1 under both budgets) share one
    trained run and its ``run`` id.
    """
    by_config = {run.config: run for run in runs}
    images = {run.run_id: _train_images(run.config, data) for run in runs}
    rows = [
        _row(p, by_config[p.config].run_id, outputs[by_config[p.config].name], images) for p in plan.planned
    ]
    table = pd.DataFrame(rows)
    curves = []
    for run in runs:
        curve = pd.DataFrame(outputs[run.name].history)
        curve.insert(0, "run", run.run_id)
        curves.append(curve)
    epochs = pd.concat(curves, ignore_index=True).sort_values(["run", "epoch"], ignore_index=True)
    epochs["test_error"] = 1 - epochs["test_acc"]
    summary = summarize(table, list(plan.swept), within=list(plan.within))
    run_info = provenance(
        data, kind=plan.kind, experiment=plan.name, description=plan.description, file=plan.file
    )
    return SweepResults(
        runs=expand_configs(table),
        epochs=epochs,
        summary=summary,
        views=build_views(table, plan),
        run=run_info,
    )


def _row(planned: Planned, run_id: int, output: RunOutput, images: dict[int, int]) -> dict[str, Any]:
    """One row of the runs table: the condition's columns, the seed, what the run did and measured."""
    summary, last = output.summary, output.history[-1]
    config = planned.config
    return {
        "run": run_id,
        **planned.labels,
        "seed": config.seed,
        "status": str(summary["status"]),
        "epochs": config.epochs,  # the most it could run (equal_steps scales it per fraction)
        "epochs_run": summary["epochs_run"],
        "best_epoch": summary["best_epoch"],
        "stopped_early": summary["stopped_early"],
        "final_train_loss": last["train_loss"],
        SELECTION_METRIC: summary[SELECTION_METRIC],  # what selection uses; test never does
        "test_acc": summary["test_acc"],
        "test_error": 1 - summary["test_acc"],
        "train_error": 1 - last["train_acc"],
        "train_images": images[run_id],
        "parameters": summary["parameters"],
        "seconds": summary["seconds"],
        "images_per_s": summary["images_per_s"],
        "data_checksum": summary["data_checksum"],
        "node_ip": summary.get("node_ip", ""),
        "node_id": summary.get("node_id", ""),
        # runs trained together in its task (1: alone); its seconds are its share of the pack's
        "pack_size": summary.get("pack_size", 1),
        CONFIG_COLUMN: json.dumps(summary["config"]),  # as it ran, JSON as in every table
    }


def _train_images(config: TrialConfig, data: ImageData) -> int:
    from lenet_core.train import trial_split

    return len(trial_split(data, config)[0])
