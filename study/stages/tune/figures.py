"""`study tune` figures for a writeup. Every figure has a title, axis labels and a legend."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on study machines
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from lenet_core.status import Status
from study.common.files import save_figure
from study.common.selection import SELECTION_METRIC
from study.stages.tune.optuna_store import quiet_optuna
from study.stages.tune.tables import completed, ranked

STATUS_MARKERS = {
    Status.COMPLETED: "o",
    Status.PRUNED: "x",
    Status.DIVERGED: "v",
    Status.COLLAPSED: "^",
    Status.ERRORED: "s",
    Status.UNFINISHED: "d",
}


def optimization_history(trials: pd.DataFrame, path: Path) -> None:
    ordered = trials.sort_values("trial")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for status, marker in STATUS_MARKERS.items():
        part = ordered[ordered["status"] == status]
        if len(part):
            ax.scatter(part["trial"], part[SELECTION_METRIC], marker=marker, label=status)
    scored = ordered[SELECTION_METRIC].where(ordered["status"] == Status.COMPLETED)
    running = scored.fillna(-np.inf).cummax().replace(-np.inf, np.nan)
    ax.plot(ordered["trial"], running, color="black", linewidth=1.5, label="best completed so far")
    ax.set(title="Optimization history", xlabel="trial number", ylabel="best validation accuracy")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    save_figure(fig, path)


def accuracy_vs_lr(trials: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    markers = "osD^v<>P*"
    for i, (optimizer, part) in enumerate(trials.groupby("optimizer")):
        ax.scatter(part["lr"], part[SELECTION_METRIC], label=str(optimizer), alpha=0.8, marker=markers[i % 9])
    ax.set_xscale("log")
    ax.set(
        title="Validation accuracy against learning rate",
        xlabel="learning rate (log)",
        ylabel="best validation accuracy (all trials)",
    )
    ax.legend(title="optimizer", loc="center left", bbox_to_anchor=(1.01, 0.5))
    save_figure(fig, path)


def param_importance(trials: pd.DataFrame, distributions: dict, path: Path) -> dict[str, float]:
    """Optuna's fANOVA importance of each searched parameter, over completed trials only."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator

    scored = completed(trials)
    study = optuna.create_study(direction="maximize")
    for row in scored.itertuples(index=False):
        params = {name: _plain(getattr(row, name)) for name in distributions}
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=distributions, value=float(getattr(row, SELECTION_METRIC))
            )
        )
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    importances: dict[str, float] = {}
    if len(scored) >= 2 and scored[SELECTION_METRIC].nunique() > 1:
        importances = optuna.importance.get_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=0)
        )
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], label="fANOVA importance")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "too few scored trials for importance", ha="center", va="center")
    ax.set(
        title=f"Hyperparameter importance (fANOVA, {len(scored)} completed trials)",
        xlabel="importance (share of variance)",
        ylabel="hyperparameter",
    )
    save_figure(fig, path)
    return importances


def _plain(value: object) -> object:
    return value.item() if hasattr(value, "item") else value


def learning_curves(trials: pd.DataFrame, epochs: pd.DataFrame, path: Path, top: int = 5) -> None:
    best = ranked(trials).head(top)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for row in best.itertuples(index=False):
        curve = epochs[epochs["trial_id"] == row.trial_id].sort_values("epoch")
        label = f"#{row.trial} {getattr(row, 'optimizer', '')} lr={getattr(row, 'lr', math.nan):.2g}"
        ax.plot(curve["epoch"], curve["val_acc"], marker="o", label=label)
    # a small study may have fewer completed trials than ``top``, or none: say how many are drawn
    if len(best) >= top:
        shown = f"of the top {top} completed trials"
    elif len(best):
        shown = f"of all {len(best)} completed trials"
    else:
        shown = "(none completed)"
    ax.set(title=f"Learning curves {shown}", xlabel="epoch", ylabel="validation accuracy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole, as in the sweep figures
    if len(best):
        ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:  # e.g. a time budget spent before any trial ran all its epochs
        ax.text(0.5, 0.5, "no trial completed", ha="center", va="center", transform=ax.transAxes)
    save_figure(fig, path)


def write_tune_figures(folder: Path, trials: pd.DataFrame, epochs: pd.DataFrame, distributions: dict) -> None:
    optimization_history(trials, folder / "optimization_history.png")
    if "lr" in trials and "optimizer" in trials:
        accuracy_vs_lr(trials, folder / "val_acc_vs_lr.png")
    with quiet_optuna():
        param_importance(trials, distributions, folder / "param_importance.png")
    learning_curves(trials, epochs, folder / "learning_curves_top5.png")
