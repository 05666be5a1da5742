"""Figures of sweep and data-fraction experiments; means over seeds, diverging runs shown."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from study.common.files import save_figure
from study.sweep.tables import label_of

LOG_METRICS = {"train_loss", "val_loss"}
TITLES = {
    "train_loss": "training loss",
    "val_loss": "validation loss",
    "val_acc": "validation accuracy",
    "train_acc": "training accuracy",
    "test_error": "test error",
    "test_acc": "test accuracy",
}


def curves(
    runs: pd.DataFrame, epochs: pd.DataFrame, swept: list[str], metric: str, path: Path, *, title: str
) -> None:
    """Per-epoch ``metric``, one line per grid point (mean over seeds); diverged runs marked."""
    per_epoch = epochs.drop(columns=["status"], errors="ignore")  # the run's final status counts
    merged = per_epoch.merge(runs[["run", *swept, "status"]], on="run")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, part in merged.groupby(swept, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        label = label_of(dict(zip(swept, key, strict=True)), swept)
        mean = part.groupby("epoch")[metric].mean()
        diverged = (part["status"] == "diverged").any()
        finite = mean[np.isfinite(mean)]
        (line,) = ax.plot(
            finite.index,
            finite.values,
            marker="o",
            markersize=3,
            label=label + (" (diverged)" if diverged else ""),
        )
        if diverged and len(finite):
            ax.scatter([finite.index[-1]], [finite.values[-1]], marker="x", s=80, color=line.get_color())
        elif diverged:
            ax.scatter([1], [np.nan], marker="x", color=line.get_color())
    if metric in LOG_METRICS:
        ax.set_yscale("log")
    ax.set(
        title=title,
        xlabel="epoch",
        ylabel=TITLES.get(metric, metric) + (" (log)" if metric in LOG_METRICS else ""),
    )
    ax.legend(fontsize="small", loc="best")
    save_figure(fig, path)


def error_bars(summary: pd.DataFrame, swept: list[str], path: Path, *, title: str) -> None:
    """Test error mean and standard deviation over seeds for every grid point."""
    ordered = summary.sort_values("test_error_mean")
    labels = [label_of(row, swept) for _, row in ordered.iterrows()]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1.6))
    ax.barh(
        labels,
        ordered["test_error_mean"],
        xerr=ordered["test_error_std"].fillna(0),
        color="tab:blue",
        label="mean test error, ± 1 std over seeds",
    )
    ax.invert_yaxis()
    ax.set(title=title, xlabel="test error", ylabel="configuration")
    ax.legend(loc="lower right", fontsize="small")
    save_figure(fig, path)


def fraction_plot(runs: pd.DataFrame, path: Path, *, title: str) -> None:
    """Training and test error against the number of training examples, log-log."""
    grouped = runs.groupby("train_images")[["train_error", "test_error"]].mean()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    floor = 1e-4  # a perfect training fit would vanish from a log axis
    ax.plot(
        grouped.index,
        grouped["train_error"].clip(lower=floor),
        marker="o",
        label="training error (running, last epoch)",
    )
    ax.plot(grouped.index, grouped["test_error"].clip(lower=floor), marker="s", label="test error")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(title=title, xlabel="training examples (log)", ylabel="error (log)")
    ax.legend()
    save_figure(fig, path)
