"""Figures and summary tables for a writeup. Every figure has a title, axis labels and a legend."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on study machines
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from study.common.files import save_figure, write_text

GROUP_BY = ("optimizer", "activation", "pooling", "batch_size")


# ------------------------------------------------------------------ tune


def tune_summary_markdown(trials: pd.DataFrame, params: list[str]) -> str:
    """Top 10 trials, and mean / best validation accuracy by each searched categorical."""
    cols = ["trial", *params, "status", "epochs_run", "final_val_acc", "best_val_acc", "test_acc"]
    top = trials.sort_values("final_val_acc", ascending=False).head(10)[cols]
    parts = [
        "# Tune summary",
        "",
        f"{len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items()),
        "",
        "## Top 10 trials by validation accuracy",
        "",
        top.to_markdown(index=False, floatfmt=".4g"),
        "",
    ]
    for name in [g for g in GROUP_BY if g in params]:
        grouped = group_table(trials, name)
        parts += [f"## Validation accuracy by {name}", "", grouped.to_markdown(floatfmt=".4g"), ""]
    return "\n".join(parts)


def group_table(trials: pd.DataFrame, name: str) -> pd.DataFrame:
    scored = trials[trials["final_val_acc"].notna()]
    table = scored.groupby(name)["final_val_acc"].agg(trials="count", mean_val_acc="mean", best_val_acc="max")
    return table.sort_values("mean_val_acc", ascending=False)


def optimization_history(trials: pd.DataFrame, path: Path) -> None:
    ordered = trials.sort_values("trial")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for status, marker in (("completed", "o"), ("pruned", "x"), ("diverged", "v"), ("errored", "s")):
        part = ordered[ordered["status"] == status]
        if len(part):
            ax.scatter(part["trial"], part["final_val_acc"], marker=marker, label=status)
    running = ordered["final_val_acc"].fillna(-np.inf).cummax().replace(-np.inf, np.nan)
    ax.plot(ordered["trial"], running, color="black", linewidth=1.5, label="best so far")
    ax.set(title="Optimization history", xlabel="trial number", ylabel="validation accuracy")
    ax.legend()
    save_figure(fig, path)


def accuracy_vs_lr(trials: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for optimizer, part in trials.groupby("optimizer"):
        ax.scatter(part["lr"], part["final_val_acc"], label=str(optimizer), alpha=0.8)
    ax.set_xscale("log")
    ax.set(
        title="Validation accuracy against learning rate",
        xlabel="learning rate (log)",
        ylabel="validation accuracy",
    )
    ax.legend(title="optimizer")
    save_figure(fig, path)


def param_importance(trials: pd.DataFrame, distributions: dict, path: Path) -> dict[str, float]:
    """Optuna's fANOVA importance of each searched parameter for final validation accuracy."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator

    scored = trials[trials["final_val_acc"].notna()]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for row in scored.itertuples(index=False):
        params = {name: _plain(getattr(row, name)) for name in distributions}
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=distributions, value=float(row.final_val_acc)
            )
        )
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    importances: dict[str, float] = {}
    if len(scored) >= 2 and scored["final_val_acc"].nunique() > 1:
        importances = optuna.importance.get_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=0)
        )
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], label="fANOVA importance")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "too few scored trials for importance", ha="center", va="center")
    ax.set(
        title="Hyperparameter importance (fANOVA)",
        xlabel="importance (share of variance)",
        ylabel="hyperparameter",
    )
    save_figure(fig, path)
    return importances


def _plain(value: object) -> object:
    return value.item() if hasattr(value, "item") else value


def learning_curves(trials: pd.DataFrame, epochs: pd.DataFrame, path: Path, top: int = 5) -> None:
    best = trials.sort_values("final_val_acc", ascending=False).head(top)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for row in best.itertuples(index=False):
        curve = epochs[epochs["trial_id"] == row.trial_id].sort_values("epoch")
        label = f"#{row.trial} {getattr(row, 'optimizer', '')} lr={getattr(row, 'lr', math.nan):.2g}"
        ax.plot(curve["epoch"], curve["val_acc"], marker="o", label=label)
    ax.set(title=f"Learning curves of the top {top} trials", xlabel="epoch", ylabel="validation accuracy")
    ax.legend(fontsize="small")
    save_figure(fig, path)


def write_tune_report(folder: Path, trials: pd.DataFrame, epochs: pd.DataFrame, distributions: dict) -> None:
    params = list(distributions)
    write_text(folder / "summary.md", tune_summary_markdown(trials, params))
    optimization_history(trials, folder / "optimization_history.png")
    if "lr" in trials and "optimizer" in trials:
        accuracy_vs_lr(trials, folder / "val_acc_vs_lr.png")
    param_importance(trials, distributions, folder / "param_importance.png")
    learning_curves(trials, epochs, folder / "learning_curves_top5.png")
