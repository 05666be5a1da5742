"""Sweeps and data-fraction experiments: every grid point x seed as a Ray task, then tables and figures."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lenet_core.config import TrialConfig
from lenet_core.data import ImageData
from lenet_core.train import train_trial
from study.common.files import read_json, write_json, write_table
from study.common.placement import without_placement
from study.sweep.tables import (
    at_name,
    compare_at_view,
    label_of,
    rows_at,
    select_by_validation,
    selected_view,
    summarize,
)

if TYPE_CHECKING:  # the experiment file format; imported for type hints only
    from study.experiments import Experiment, Planned


def run_one(config: TrialConfig, data: ImageData) -> dict[str, Any]:
    """One sweep run in a Ray task, placed on what Ray granted: summary and history, no weights."""
    from study.common.placement import place

    placed, placement = place(config)
    result = train_trial(placed, data)
    return {"summary": {**result.summary(), **placement.as_columns()}, "history": result.history}


def run_sweep(
    experiment: Experiment,
    *,
    data: ImageData,
    cluster: Any,
    folder: Path,
    then: Callable[[pd.DataFrame, pd.DataFrame], None],
    say: Any = print,
) -> None:
    """Every run of a sweep or data-fraction experiment through Ray, then ``then(runs, epochs)``
    (the files), which starts as Ray shuts down (``ray_session_then``).

    ``runs`` has one row per planned (condition, seed); rows whose configs are equal (a
    data-fraction's fraction 1 under both budgets) share one trained run and its ``run`` id.
    """
    from study.common.cluster import ray_session_then
    from study.common.executor import map_on_ray

    planned = experiment.planned()
    configs = experiment.configs()
    run_ids = {c: i for i, c in enumerate(configs)}  # grid order, whatever order the runs finish in
    outputs = {i: output for i, c in enumerate(configs) if (output := load_run(folder, i, c)) is not None}
    saved = set(outputs)
    with ray_session_then(cluster) as (session, start):
        plan = session.plan
        say(
            f"{session.dashboard_text}; {len(configs)} runs "
            f"({len(saved)} read back from {folder / RUNS_FOLDER}), {plan.concurrent} at a time -> {folder}"
        )

        def keep(config: TrialConfig, output: dict[str, Any]) -> str:
            run_id = run_ids[config]
            save_run(folder, run_id, output)  # at once, so a resume can skip it
            outputs[run_id] = output
            return f"run {run_id} test acc {output['summary']['test_acc']:.4f}"

        map_on_ray(
            run_one,
            [c for i, c in enumerate(configs) if i not in saved],
            data=data,
            plan=plan,
            label="runs",
            name=lambda c: f"run {run_ids[c]} ({c})",
            on_result=keep,
            already_done=len(saved),
        )
        written = start(lambda: then(*_tables(planned, run_ids, outputs, data)))
    written.result()


def _tables(
    planned: list[Planned],
    run_ids: dict[TrialConfig, int],
    outputs: dict[int, dict[str, Any]],
    data: ImageData,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, epochs): a row per planned (condition, seed), and every run's per-epoch history."""
    images = {run_id: _train_images(config, data) for config, run_id in run_ids.items()}
    rows = [
        _row(p, run_ids[p.config], outputs[run_ids[p.config]], images[run_ids[p.config]]) for p in planned
    ]
    table = pd.DataFrame(rows)
    curves = []
    for run_id, output in sorted(outputs.items()):
        curve = pd.DataFrame(output["history"])
        curve.insert(0, "run", run_id)
        curves.append(curve)
    epochs = pd.concat(curves, ignore_index=True).sort_values(["run", "epoch"], ignore_index=True)
    epochs["test_error"] = 1 - epochs["test_acc"]
    return table, epochs


def _row(planned: Planned, run_id: int, output: dict[str, Any], train_images: int) -> dict[str, Any]:
    """One row of the runs table: the condition's columns, the seed, what the run did and measured."""
    summary, last = output["summary"], output["history"][-1]
    config = planned.config
    return {
        "run": run_id,
        **planned.labels,
        "seed": config.seed,
        "status": summary["status"],
        "epochs": config.epochs,  # the most it could run (equal_steps scales it per fraction)
        "epochs_run": summary["epochs_run"],
        "best_epoch": summary["best_epoch"],
        "stopped_early": summary["stopped_early"],
        "final_train_loss": last["train_loss"],
        "val_acc": summary["val_acc"],  # of the kept (best validation) epoch: what selection uses
        "test_acc": summary["test_acc"],
        "test_error": 1 - summary["test_acc"],
        "train_error": 1 - last["train_acc"],
        "train_images": train_images,
        "parameters": summary["parameters"],
        "seconds": summary["seconds"],
        "images_per_s": summary["images_per_s"],
        "data_checksum": summary["data_checksum"],
        "node_ip": summary["node_ip"],
        "node_id": summary.get("node_id"),  # runs saved before it was recorded have none
        "config": json.dumps(summary["config"]),  # as it ran, JSON as in every table
    }


RUNS_FOLDER = "runs"


def _run_path(folder: Path, run_id: int) -> Path:
    return folder / RUNS_FOLDER / f"run_{run_id:04d}.json"


def save_run(folder: Path, run_id: int, output: dict[str, Any]) -> None:
    """One finished run (summary and history), written as it finishes so a resume can skip it."""
    write_json(_run_path(folder, run_id), output)


def load_run(folder: Path, run_id: int, config: TrialConfig) -> dict[str, Any] | None:
    """A saved run of exactly this config (where it ran aside), else None."""
    path = _run_path(folder, run_id)
    if not path.is_file():
        return None
    output = read_json(path, what="saved run")
    same = without_placement(output["summary"]["config"]) == without_placement(config.to_dict())
    return output if same else None


def _train_images(config: TrialConfig, data: ImageData) -> int:
    from lenet_core.train import trial_split

    return len(trial_split(data, config)[0])


def write_sweep_figures(
    experiment: Experiment, runs: pd.DataFrame, epochs: pd.DataFrame, summary: pd.DataFrame, folder: Path
) -> None:
    """Per-epoch curves (of the selected points, with ``select``), training against validation,
    test error per point, and the data-fraction plot."""
    from study.sweep import figures as figs

    swept = experiment.swept_fields()
    title = experiment.description or experiment.name
    shown = runs
    if experiment.select:  # every grid point is too many lines; the chosen ones answer the question
        selection = select_by_validation(runs, swept=swept, field=experiment.select)
        shown = rows_at(runs, selection[selection["selected"]], swept)
        title = f"{title} (each at its {experiment.select} chosen by validation)"
    if experiment.kind == "data-fraction":
        figs.fraction_plot(runs, folder / "error_vs_training_examples.png", title=title)
    elif len(shown):
        figs.curves(
            shown, epochs, swept, experiment.curve, folder / f"{experiment.curve}_per_epoch.png", title=title
        )
    if len(shown):
        figs.learning_curves(shown, epochs, swept, folder / "learning_curves.png", title=title)
    figs.error_bars(summary, swept, folder / "test_error.png", title=f"Test error: {experiment.name}")


def write_views(experiment: Experiment, runs: pd.DataFrame, folder: Path) -> None:
    """The ``select`` and ``compare_at`` views of a sweep: tables and a figure each."""
    from study.sweep import figures as figs

    swept = experiment.swept_fields()
    if experiment.select:
        field = experiment.select
        selection, selected = selected_view(runs, swept=swept, field=field)
        write_table(selection, folder / "selection", markdown=True)
        write_table(selected, folder / "selected", markdown=True)
        groups = [s for s in swept if s != field]
        figs.selection_plot(
            selection,
            groups,
            field,
            folder / f"val_acc_vs_{field}.png",
            title=f"Choosing {field} by validation",
        )
        figs.error_bars(
            selected,
            swept,
            folder / "selected_test_error.png",
            title=f"Test error, each at its {field} chosen by validation",
        )
    if experiment.compare_at:
        at = experiment.compare_at
        table = compare_at_view(runs, swept=swept, at=at)
        write_table(table, folder / "compare_at", markdown=True)
        figs.error_bars(
            table,
            swept,
            folder / f"test_error_at_{at_name(at)}.png",
            title=f"Test error at {label_of(at, list(at))}",
        )


def run_sweep_experiment(
    experiment: Experiment,
    *,
    data: ImageData,
    cluster: Any,
    out: Path,
    name: str,
    resume: bool = False,
    overwrite: bool = False,
    say: Any = print,
) -> None:
    """Run every grid point x seed, then write runs, epochs, summary, the select and compare_at
    views and figures to OUT/NAME/.

    Each run is saved under ``runs/`` as it finishes; with ``resume`` the runs already there (same
    config) are read back instead of trained again.
    """
    from study.common.files import run_folder

    with run_folder(out, name, ".", resume=resume, overwrite=overwrite) as folder:

        def write(runs: pd.DataFrame, epochs: pd.DataFrame) -> None:
            write_table(runs, folder / "runs")
            write_table(epochs, folder / "epochs", csv=False)
            summary = summarize(runs, experiment.swept_fields(), within=experiment.within())
            write_table(summary, folder / "summary", markdown=True)
            write_views(experiment, runs, folder)
            write_sweep_figures(experiment, runs, epochs, summary, folder)

        run_sweep(experiment, data=data, cluster=cluster, folder=folder, then=write, say=say)
