"""`study tune` figures for a writeup. Every figure has a title, axis labels and a legend.

A pruned trial's accuracy is the best of the few epochs it ran before ASHA stopped it, not of
the full budget: every figure that draws trials tells completed, pruned (with the epochs it ran),
collapsed, diverged, errored and unfinished trials apart, and says pruned points are partial.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on study machines
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from lenet_core.status import Status
from study.common.files import save_figure
from study.common.selection import SELECTION_METRIC
from study.stages.tune.optuna_store import quiet_optuna
from study.stages.tune.tables import completed, ranked

# Importance from fewer completed trials than this depends on the method more than on the data
# (the fashion study's 8: fANOVA ranked patience first at 0.34, Optuna's default evaluator lr at
# 0.90): below it no bars are drawn, only the count.
MIN_IMPORTANCE_TRIALS = 10
# Statuses whose accuracy comes from part of the epoch budget: hollow markers, one shape per
# number of epochs run. "stopped" is a scheduler's early stop, as pruned.
PARTIAL = {
    Status.PRUNED: "pruned",
    Status.STOPPED: "pruned",
    Status.UNFINISHED: "unfinished",
    Status.RUNNING: "unfinished",
}
PARTIAL_MARKERS = ("s", "D", "p", "h", "8", "H")  # one per epochs-run value, in order
PARTIAL_NOTE = "hollow: partial budget\n(best of the epochs it ran, not of all)"
# Filled markers: a full run, and the ways a run fails (never averaged in, never ranked).
FULL_STYLES = {
    Status.COMPLETED: ("o", "tab:blue"),
    Status.COLLAPSED: ("v", "tab:purple"),
    Status.DIVERGED: ("X", "tab:red"),
    Status.ERRORED: ("*", "tab:grey"),
}
NO_VALUE_Y = 0.02  # where a trial without an accuracy (diverged, errored) is drawn, in axes height


@dataclass(frozen=True)
class Group:
    """Trials drawn alike: their rows, legend label, marker, colour and whether it is hollow."""

    rows: pd.DataFrame
    label: str
    marker: str
    colour: str
    hollow: bool


def max_epochs(trials: pd.DataFrame) -> int | None:
    """The epoch budget of the study (the largest of its trials' configs), or None if unknown."""
    budgets = []
    for raw in trials.get("config", pd.Series(dtype=object)).dropna():
        try:
            budgets.append(int(json.loads(raw)["epochs"]))
        except (TypeError, ValueError, KeyError):
            continue
    return max(budgets) if budgets else None


def _epochs_text(values: pd.Series, budget: int | None) -> str:
    low, high = int(values.min()), int(values.max())
    span = f"{low}" if low == high else f"{low}-{high}"
    of = f" of {budget}" if budget else ""
    return f"{span}{of} epoch{'' if high == 1 and not budget else 's'}"


def status_groups(trials: pd.DataFrame) -> list[Group]:
    """Completed first, then each partial status by the epochs it ran (few to many), then the
    failed ones; a group's label says how many trials it holds and the epochs they ran."""
    budget = max_epochs(trials)
    epochs_run = trials["epochs_run"] if "epochs_run" in trials else pd.Series(np.nan, index=trials.index)
    groups = []
    done = trials[trials["status"] == Status.COMPLETED]
    if len(done):
        marker, colour = FULL_STYLES[Status.COMPLETED]
        ran = (
            f", {_epochs_text(epochs_run[done.index], budget)}"
            if epochs_run[done.index].notna().any()
            else ""
        )
        groups.append(Group(done, f"completed ({len(done)}{ran})", marker, colour, hollow=False))
    partial = trials[trials["status"].isin(list(PARTIAL))]
    runs = sorted(int(e) for e in epochs_run[partial.index].dropna().unique())
    shapes = {e: PARTIAL_MARKERS[min(i, len(PARTIAL_MARKERS) - 1)] for i, e in enumerate(runs)}
    shades = plt.get_cmap("Oranges")(np.linspace(0.45, 0.95, max(len(runs), 1)))
    for name in dict.fromkeys(PARTIAL.values()):
        rows = partial[partial["status"].map(lambda s: PARTIAL.get(Status(s))) == name]
        known = epochs_run[rows.index]
        for i, e in enumerate(runs):
            part = rows[known == e]
            if len(part):
                of = f" of {budget}" if budget else ""
                colour = matplotlib.colors.to_hex(shades[i]) if name == "pruned" else "tab:olive"
                label = f"{name} after {e}{of} epoch{'s' if e != 1 or budget else ''} ({len(part)})"
                groups.append(Group(part, label, shapes[e], colour, hollow=True))
        if known.isna().any():
            part = rows[known.isna()]
            groups.append(Group(part, f"{name} ({len(part)})", PARTIAL_MARKERS[0], "tab:olive", hollow=True))
    for status in (Status.COLLAPSED, Status.DIVERGED, Status.ERRORED):
        part = trials[trials["status"] == status]
        if len(part):
            marker, colour = FULL_STYLES[status]
            missing = part[SELECTION_METRIC].isna().sum()
            note = f"; {missing} without accuracy, at the bottom" if missing else ""
            groups.append(Group(part, f"{status} ({len(part)}{note})", marker, colour, hollow=False))
    return groups


def _scatter(
    ax: plt.Axes, x: pd.Series, y: pd.Series, *, marker: str, colour: str, hollow: bool, **kw
) -> None:
    """Points with an accuracy where they are; those without one (diverged, errored) on the bottom
    edge of the axes, so no trial is left out of the figure."""
    style = {"marker": marker, "s": 40 if hollow else 36, "linewidths": 1.2}
    if hollow:
        style |= {"facecolors": "none", "edgecolors": colour}
    else:
        style |= {"color": colour}
    known = y.notna()
    if known.any():
        ax.scatter(x[known], y[known], **style, **kw)
        kw.pop("label", None)
    if (~known).any():
        # drawn in axes height, so the x range must be told of them (log x: lr spans decades)
        ax.update_datalim(np.column_stack([x[~known], np.zeros(int((~known).sum()))]), updatey=False)
        ax.scatter(
            x[~known],
            np.full(int((~known).sum()), NO_VALUE_Y),
            transform=ax.get_xaxis_transform(),
            clip_on=False,
            **style,
            **kw,
        )


def optimization_history(trials: pd.DataFrame, path: Path) -> None:
    ordered = trials.sort_values("trial")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for group in status_groups(ordered):
        _scatter(
            ax,
            group.rows["trial"],
            group.rows[SELECTION_METRIC],
            marker=group.marker,
            colour=group.colour,
            hollow=group.hollow,
            label=group.label,
            zorder=3,
        )
    scored = ordered[SELECTION_METRIC].where(ordered["status"] == Status.COMPLETED)
    running = scored.fillna(-np.inf).cummax().replace(-np.inf, np.nan)
    ax.plot(ordered["trial"], running, color="black", linewidth=1.5, label="best completed so far")
    ax.set(
        title="Optimization history (pruned points: partial budget)",
        xlabel="trial number",
        ylabel="best validation accuracy\n(of the epochs each trial ran)",
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are whole
    ax.legend(
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        fontsize="small",
        title=PARTIAL_NOTE,
        title_fontsize="small",
    )
    save_figure(fig, path)


def accuracy_vs_lr(trials: pd.DataFrame, path: Path) -> None:
    """Colour: optimizer; marker: how the trial ended (hollow = partial budget, by epochs run)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colours = dict(
        zip(sorted(trials["optimizer"].astype(str).unique()), plt.get_cmap("tab10").colors, strict=False)
    )
    groups = status_groups(trials)
    for group in groups:
        for optimizer, part in group.rows.groupby(group.rows["optimizer"].astype(str)):
            _scatter(
                ax,
                part["lr"],
                part[SELECTION_METRIC],
                marker=group.marker,
                colour=colours[optimizer],
                hollow=group.hollow,
                alpha=0.85,
                zorder=3,
            )
    ax.set_xscale("log")
    ax.set(
        title="Validation accuracy against learning rate (pruned points: partial budget)",
        xlabel="learning rate (log)",
        ylabel="best validation accuracy\n(of the epochs each trial ran)",
    )
    by_optimizer = [Line2D([], [], marker="o", linestyle="", color=c, label=o) for o, c in colours.items()]
    by_status = [
        Line2D(
            [],
            [],
            marker=g.marker,
            linestyle="",
            color="black",
            markerfacecolor="none" if g.hollow else "black",
            label=g.label,
        )
        for g in groups
    ]
    first = ax.legend(handles=by_optimizer, title="optimizer", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.add_artist(first)
    ax.legend(
        handles=by_status,
        title=PARTIAL_NOTE,
        title_fontsize="small",
        fontsize="small",
        loc="lower left",
        bbox_to_anchor=(1.01, 0.0),
    )
    save_figure(fig, path)


def importances(trials: pd.DataFrame, distributions: dict) -> dict[str, float]:
    """Optuna's own importance (``optuna.importance.get_param_importances`` with its default
    evaluator) over the completed trials, as optuna.db holds them: value = the selection metric.
    Empty when the completed trials are too few or all score the same."""
    import optuna

    scored = completed(trials)
    if len(scored) < MIN_IMPORTANCE_TRIALS or scored[SELECTION_METRIC].nunique() < 2:
        return {}
    with quiet_optuna():
        study = optuna.create_study(direction="maximize")
        for row in scored.itertuples(index=False):
            params = {name: _plain(getattr(row, name)) for name in distributions}
            value = float(getattr(row, SELECTION_METRIC))
            study.add_trial(
                optuna.trial.create_trial(params=params, distributions=distributions, value=value)
            )
        found = optuna.importance.get_param_importances(study)
    return {name: float(value) for name, value in found.items()}


def param_importance(trials: pd.DataFrame, distributions: dict, path: Path) -> dict[str, float]:
    """A bar per searched parameter (Optuna's default evaluator, completed trials only), or, with
    fewer than MIN_IMPORTANCE_TRIALS completed trials, no bars and a line saying so."""
    import optuna

    n = len(completed(trials))
    found = importances(trials, distributions)
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    if found:
        names = list(found)[::-1]
        ax.barh(names, [found[name] for name in names], label=f"importance (optuna {optuna.__version__})")
        ax.legend(loc="lower right")
    else:
        why = (
            f"too few completed trials ({n} < {MIN_IMPORTANCE_TRIALS}) for importance"
            if n < MIN_IMPORTANCE_TRIALS
            else "every completed trial scored the same: no importance"
        )
        ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
        ax.set(xticks=[], yticks=[])
    ax.set(
        title=f"Hyperparameter importance (Optuna's default evaluator)\nfrom {n} completed trials",
        xlabel="importance (normalised: sums to 1)",
        ylabel="hyperparameter",
    )
    save_figure(fig, path)
    return found


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
