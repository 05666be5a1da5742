"""Sweeps and data-fraction experiments: every grid point x seed as a Ray task, then tables and figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lenet_core.config import TrialConfig
from lenet_core.data import ImageData
from lenet_core.train import train_trial
from study.common.files import read_json, write_json, write_table
from study.common.placement import without_placement
from study.sweep.tables import summarize

if TYPE_CHECKING:  # the experiment file format; imported for type hints only
    from study.experiments import Experiment


def run_one(config: TrialConfig, data: ImageData) -> dict[str, Any]:
    """One sweep run in a Ray task, placed on what Ray granted: summary and history, no weights."""
    from study.common.placement import place

    placed, placement = place(config)
    result = train_trial(placed, data)
    return {"summary": {**result.summary(), **placement.as_columns()}, "history": result.history}


def run_sweep(
    experiment: Experiment, *, data: ImageData, cluster: Any, folder: Path, say: Any = print
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every run of a sweep or data-fraction experiment through Ray: (runs, epochs) tables."""
    from study.common.cluster import map_on_ray, ray_session

    configs = experiment.configs()
    swept = experiment.swept_fields()
    runs: list[dict[str, Any]] = []
    curves: list[pd.DataFrame] = []
    saved = {i: output for i, c in enumerate(configs) if (output := load_run(folder, i, c)) is not None}
    with ray_session(cluster) as session:
        plan = session.plan
        say(
            f"Ray dashboard: {session.dashboard_url or 'not available'}; {len(configs)} runs "
            f"({len(saved)} read back from {folder / RUNS_FOLDER}), {plan.concurrent} at a time -> {folder}"
        )

        def keep(config: TrialConfig, output: dict[str, Any]) -> str:
            summary = output["summary"]
            run_id = configs.index(config)  # grid order, whatever order the runs finish in
            if run_id not in saved:
                save_run(folder, run_id, output)
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
                    "node_ip": summary["node_ip"],
                    "config": json.dumps(summary["config"]),  # as it ran, JSON as in every table
                }
            )
            curve = pd.DataFrame(output["history"])
            curve.insert(0, "run", run_id)
            curves.append(curve)
            return f"run {run_id} test acc {summary['test_acc']:.4f}"

        for run_id, output in saved.items():
            keep(configs[run_id], output)
        todo = [c for i, c in enumerate(configs) if i not in saved]
        map_on_ray(
            run_one,
            todo,
            data=data,
            plan=plan,
            label="runs",
            name=lambda c: f"run {configs.index(c)} ({c})",
            on_result=keep,
            already_done=len(saved),
        )
    table = pd.DataFrame(runs).sort_values("run").reset_index(drop=True)
    epochs = pd.concat(curves, ignore_index=True).sort_values(["run", "epoch"], ignore_index=True)
    epochs["test_error"] = 1 - epochs["test_acc"]
    return table, epochs


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
    from study.sweep import figures as figs

    swept = experiment.swept_fields()
    title = experiment.description or experiment.name
    if experiment.kind == "data-fraction":
        figs.fraction_plot(runs, folder / "error_vs_training_examples.png", title=title)
    else:
        figs.curves(
            runs, epochs, swept, experiment.curve, folder / f"{experiment.curve}_per_epoch.png", title=title
        )
    figs.learning_curves(runs, epochs, swept, folder / "learning_curves.png", title=title)
    figs.error_bars(summary, swept, folder / "test_error.png", title=f"Test error: {title}")


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
    """Run every grid point x seed, then write runs, epochs, summary and figures to OUT/NAME/.

    Each run is saved under ``runs/`` as it finishes; with ``resume`` the runs already there (same
    config) are read back instead of trained again.
    """
    from study.common.files import run_folder

    with run_folder(out, name, ".", resume=resume, overwrite=overwrite) as folder:
        runs, epochs = run_sweep(experiment, data=data, cluster=cluster, folder=folder, say=say)
        write_table(runs, folder / "runs")
        write_table(epochs, folder / "epochs", csv=False)
        summary = summarize(runs, experiment.swept_fields())
        write_table(summary, folder / "summary", markdown=True)
        write_sweep_figures(experiment, runs, epochs, summary, folder)
