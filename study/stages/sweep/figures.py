"""Figures of sweep and data-fraction experiments: means over ok seeds with bands, failed runs
(diverged, collapsed) drawn apart and never averaged in, legends outside the data."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import transforms
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

from study.common.files import save_figure
from study.stages.sweep.tables import FAILED_STATUSES, SELECTION_MEAN, SELECTION_STD, label_of

LOG_METRICS = {"train_loss", "val_loss"}
TITLES = {
    "train_loss": "training loss",
    "val_loss": "validation loss",
    "val_acc": "validation accuracy",
    "train_acc": "training accuracy",
    "test_error": "test error",
    "test_acc": "test accuracy",
}
# Up to 20 distinct colours, then the line style changes: every series stays distinguishable.
COLOURS = plt.get_cmap("tab20").colors[::2] + plt.get_cmap("tab20").colors[1::2]
LINESTYLES = ("-", "--", "-.", ":")
MAX_LINES = 8  # series in one curves panel before it is split into one panel per value of a field
MAX_PANELS = 6
BAND = "mean over seeds ± std"
LOG_BAND = "geometric mean over seeds, ± 1 std of the log"  # losses, on log axes
THIN = "thin: after some seeds stopped early"


def series_styles() -> itertools.cycle:
    return itertools.cycle(
        [(c, ls) for ls in LINESTYLES for c in COLOURS[:10]] + [(c, "-") for c in COLOURS[10:]]
    )


def _grid_points(
    runs: pd.DataFrame, epochs: pd.DataFrame, swept: list[str]
) -> list[tuple[str, pd.DataFrame]]:
    """(label, per-epoch rows of that grid point's runs, with the run's final status)."""
    # the run's final status counts; a swept field (e.g. lr) names the point, not the epoch's value
    per_epoch = epochs.drop(columns=["status", "seed", *swept], errors="ignore")
    merged = per_epoch.merge(runs[["run", "seed", *swept, "status"]], on="run")
    points = []
    for key, part in merged.groupby(swept, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        points.append((label_of(dict(zip(swept, key, strict=True)), swept), part))
    return points


def _ok_limits(values: pd.Series, metric: str) -> tuple[float, float] | None:
    """Axis limits from ok runs only, so a diverged run cannot stretch the axis to 1e10."""
    finite = values[np.isfinite(values)]
    if finite.empty:
        return None
    low, high = float(finite.min()), float(finite.max())
    if metric in LOG_METRICS:
        return low / 1.5, high * 1.5
    pad = 0.05 * (high - low or 1.0)
    return low - pad, high + pad


def _seed_band(ok: pd.DataFrame, metric: str) -> tuple[pd.Series, pd.Series, pd.Series, pd.Series]:
    """Per epoch: (centre, band low, band high, seeds). Mean ± 1 std; on a log axis (losses) the
    geometric mean and ± 1 std of the log, so the band stays positive and symmetric as drawn."""
    values = ok[["epoch", metric]].copy()
    log = metric in LOG_METRICS
    if log:
        values[metric] = np.log(values[metric].where(values[metric] > 0))
    stats = values.groupby("epoch")[metric].agg(["mean", "std", "count"])
    spread = stats["std"].fillna(0.0)
    centre, low, high = stats["mean"], stats["mean"] - spread, stats["mean"] + spread
    if log:
        centre, low, high = np.exp(centre), np.exp(low), np.exp(high)
    return centre, low, high, stats["count"]


def _plot_metric(
    ax: plt.Axes, points: list[tuple[str, pd.DataFrame]], metric: str, *, legend: bool
) -> list[OffScaleNote]:
    """One panel: every grid point's seed mean and band, failed runs dotted with their ends marked.
    Returns the panel's off-scale notes (see ``_mark_failed_ends``) for the caller to place."""
    styles = series_styles()
    ok_values = []
    failed_ends = []  # (legend entry, point label, colour, [(last epoch, last value) per failed run])
    for label, part in points:
        colour, linestyle = next(styles)
        ok = part[~part["status"].isin(FAILED_STATUSES)]
        failed = part[part["status"].isin(FAILED_STATUSES)]
        if len(ok):
            n = int(ok["seed"].nunique())
            centre, low, high, count = _seed_band(ok, metric)
            # Runs that stopped early leave later epochs to fewer seeds: those are drawn thin and
            # without a band, so a mean over the survivors does not read as one over all n.
            full = count.index[count == n]
            last_full = int(full.max()) if len(full) else int(count.index.min())
            head, tail = centre.loc[:last_full], centre.loc[last_full:]
            ax.plot(
                head.index,
                head,
                color=colour,
                linestyle=linestyle,
                marker="o",
                markersize=3,
                label=f"{label} (n={n})" if legend else None,
            )
            if len(tail) > 1:
                ax.plot(tail.index, tail, color=colour, linestyle=linestyle, linewidth=0.8, alpha=0.7)
            if n > 1:  # a band only where there are seeds to spread
                ax.fill_between(
                    head.index,
                    low.loc[:last_full],
                    high.loc[:last_full],
                    color=colour,
                    alpha=0.12,
                    linewidth=0,
                )
            ok_values.append(ok[metric])
        if len(failed):
            statuses = failed.drop_duplicates("run")["status"].value_counts()
            counted = ", ".join(f"{count} {status}" for status, count in statuses.items())
            ends = []
            for _, run in failed.groupby("run"):
                ax.plot(run["epoch"], run[metric], color=colour, linestyle=":", linewidth=0.8)
                ends.append((run["epoch"].iloc[-1], run[metric].iloc[-1]))
            failed_ends.append((f"{label}: {counted}", label, colour, ends))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    if metric in LOG_METRICS:
        ax.set_yscale("log")
    limits = _ok_limits(pd.concat(ok_values), metric) if ok_values else None
    if limits is not None:
        ax.set_ylim(*limits)  # failed runs beyond it are clipped; their ends are marked at the edge
    return _mark_failed_ends(ax, failed_ends, metric, limits, legend=legend)


OFF_SCALE = "off scale"  # the note's first words, in every panel where a failed run's end is beyond
# One edge's note: its header ("off scale (▲ above the axis, ...)") and an entry per grid point
# ("lr=10 (2 diverged, ended at 1e+10)"); the caller lays it out beside the panel or as a footnote.
OffScaleNote = tuple[str, list[str]]


def _mark_failed_ends(
    ax: plt.Axes,
    failed_ends: list[tuple[str, str, str, list[tuple[float, float]]]],
    metric: str,
    limits: tuple[float, float] | None,
    *,
    legend: bool,
) -> list[OffScaleNote]:
    """An x where each failed run ended. An end beyond the ok runs' y range (a diverged loss of
    1e10) or without a finite value is drawn on the top or bottom edge as a triangle pointing out
    of the axes; the returned notes (one per edge used) name those points, so nothing in the
    legend is off-axis once the caller shows them."""
    low, high = limits if limits is not None else (-np.inf, np.inf)
    worse_up = "acc" not in metric  # a failed run's missing value: a loss above, an accuracy below
    at_edge: dict[tuple[float, bool], int] = {}  # (epoch, top) -> markers already there
    beyond: dict[bool, list[str]] = {True: [], False: []}
    for entry, label, colour, ends in failed_ends:
        inside = [(x, y) for x, y in ends if np.isfinite(y) and low <= y <= high]
        outside = [(x, y) for x, y in ends if not (np.isfinite(y) and low <= y <= high)]
        name = entry if legend else None
        if inside:
            xs, ys = zip(*inside, strict=True)
            ax.scatter(xs, ys, marker="x", s=50, color=colour, label=name)
            name = None  # one legend entry per grid point
        for top in (True, False):
            edge = [x for x, y in outside if (y > high if np.isfinite(y) else worse_up) == top]
            if not edge:
                continue
            values = np.array([y for x, y in outside if x in edge and np.isfinite(y)])
            where = ""
            if len(values):
                lo, hi = values.min(), values.max()
                where = f", ended at {lo:.2g}" + (f" to {hi:.2g}" if hi > lo * 1.05 or hi < lo * 0.95 else "")
            beyond[top].append(entry.replace(f"{label}: ", f"{label} (") + where + ")")
            for x in dict.fromkeys(edge):  # runs ending at one epoch share a marker
                shift = at_edge.get((x, top), 0)
                at_edge[(x, top)] = shift + 1
                # grid points ending at one epoch on one edge: stacked into the axes from the edge
                step = -9 * shift if top else 9 * shift
                place = transforms.offset_copy(ax.get_xaxis_transform(), ax.figure, y=step, units="points")
                ax.scatter(
                    [x],
                    [1.0 if top else 0.0],
                    marker="^" if top else "v",
                    s=60,
                    color=colour,
                    edgecolors="black",
                    linewidths=0.5,
                    transform=place,
                    clip_on=False,
                    zorder=4,
                    label=name,
                )
                name = None
    return [
        (f"{OFF_SCALE} ({'▲ above' if top else '▼ below'} the axis, marked on its edge)", entries)
        for top, entries in beyond.items()
        if entries
    ]


def _note_beside(ax: plt.Axes, notes: list[OffScaleNote]) -> None:
    """A one-column figure's off-scale notes right of its panel, under the legend, a line per
    grid point: a note inside would cover the curves near the edge, and the legend's column has
    room for it."""
    for i, (header, entries) in enumerate(notes):
        ax.text(
            1.02,
            0.2 * i,
            f"{header}:\n" + "\n".join(entries),
            transform=ax.transAxes,
            ha="left",
            va="bottom",
            fontsize="x-small",
            bbox={"facecolor": "white", "edgecolor": "lightgrey", "alpha": 0.85},
        )


def _footnote(fig: plt.Figure, notes: list[tuple[str, OffScaleNote]]) -> None:
    """A grid's off-scale notes as one footnote under it, a line per note after its panel's title:
    beside a panel of a grid they would push the columns apart and shrink every panel."""
    if notes:
        text = "\n".join(f"{panel}: {header}: " + "; ".join(entries) for panel, (header, entries) in notes)
        fig.text(0.01, 0.005, text, ha="left", va="bottom", fontsize="x-small", color="dimgrey")


def _stopped_early(runs: pd.DataFrame) -> bool:
    """Whether some ok run stopped before its budget, so a mean curve thins where it did (failed
    runs are never in the means)."""
    if "stopped_early" not in runs:
        return False
    ok = ~runs["status"].isin(FAILED_STATUSES) if "status" in runs else True
    return bool((runs["stopped_early"].fillna(False).astype(bool) & ok).any())


def facet_field(runs: pd.DataFrame, swept: list[str]) -> str | None:
    """The swept field whose values each get their own panel when one panel would hold more than
    MAX_LINES lines: the one leaving the fewest lines per panel, with at most MAX_PANELS panels."""
    sizes = {field: int(runs[field].nunique(dropna=False)) for field in swept}
    lines = int(np.prod(list(sizes.values()))) if sizes else 0
    candidates = [field for field in swept if 1 < sizes[field] <= MAX_PANELS]
    if lines <= MAX_LINES or len(swept) < 2 or not candidates:
        return None
    return min(candidates, key=lambda field: lines / sizes[field])


def curves(
    runs: pd.DataFrame, epochs: pd.DataFrame, swept: list[str], metric: str, path: Path, *, title: str
) -> None:
    """Per-epoch ``metric``, one line per grid point: mean over its ok seeds, band ± 1 std when
    there are several; failed runs dotted and marked x where they ended, never averaged in. A grid
    too large for one panel gets one panel per value of a swept field, each with its own y range."""
    facet = facet_field(runs, swept)
    values = list(dict.fromkeys(runs[facet])) if facet else [None]
    fig, axes = plt.subplots(
        len(values), 1, figsize=(8.5, 4.8 if facet is None else 3.4 * len(values)), sharex=True
    )
    axes = np.atleast_1d(axes)
    log = metric in LOG_METRICS
    band = LOG_BAND if log else BAND
    for ax, value in zip(axes, values, strict=True):
        part = runs if facet is None else runs[runs[facet] == value]
        shown = swept if facet is None else [field for field in swept if field != facet]
        notes = _plot_metric(ax, _grid_points(part, epochs, shown), metric, legend=True)
        _note_beside(ax, notes)
        ax.set(ylabel=TITLES.get(metric, metric) + (" (log)" if log else ""))
        if facet is not None:
            ax.set_title(label_of({facet: value}, [facet]), fontsize="medium")
        ax.legend(
            fontsize="small",
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            title=(f"{band}\n{THIN}" if _stopped_early(runs) else band) if ax is axes[0] else None,
        )
    axes[-1].set_xlabel("epoch")
    fig.suptitle(title, fontsize="large")
    _layout_below_suptitle(fig, lines=1)
    save_figure(fig, path)


def _layout_below_suptitle(fig: plt.Figure, *, lines: int = 2, footnote_lines: int = 0) -> None:
    """tight_layout leaves the suptitle and a footnote out: keep the suptitle's lines (about 0.25
    inch each) and the footnote's (x-small, about 0.15 inch each) clear."""
    height = fig.get_size_inches()[1]
    bottom = (0.15 * footnote_lines + 0.05) / height if footnote_lines else 0.0
    fig.tight_layout(rect=(0.0, bottom, 1.0, 1.0 - (0.25 * lines + 0.1) / height))


LEARNING_METRICS = ("train_loss", "val_loss", "train_acc", "val_acc")


def learning_curves(
    runs: pd.DataFrame, epochs: pd.DataFrame, swept: list[str], path: Path, *, title: str
) -> None:
    """Training against validation loss and accuracy per epoch for every grid point, seed bands:
    a 2x2 figure, or for a grid too large for one panel a row of the four per value of the
    field ``facet_field`` picks, each row with its own legend."""
    facet = facet_field(runs, swept)
    note = f"training vs validation: {BAND} (losses: {LOG_BAND})" + (
        f"; {THIN}" if _stopped_early(runs) else ""
    )
    notes: list[tuple[str, OffScaleNote]] = []  # (panel title, one of its off-scale notes)
    if facet is None:
        points = _grid_points(runs, epochs, swept)
        fig, axes = plt.subplots(2, 2, figsize=(13, 8), sharex=True)
        for ax, metric in zip(axes.flat, LEARNING_METRICS, strict=True):
            notes += [(TITLES[metric], n) for n in _plot_metric(ax, points, metric, legend=ax is axes[0, 0])]
            ax.set(title=TITLES[metric], xlabel="epoch", ylabel=TITLES[metric])
        fig.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 0.93))
    else:
        values = list(dict.fromkeys(runs[facet]))
        shown = [field for field in swept if field != facet]
        # each row its own epochs: equal-steps budgets run 16x the epochs of equal-epochs ones
        fig, axes = plt.subplots(len(values), 4, figsize=(20, 3.2 * len(values)), sharex="row", squeeze=False)
        for row, value in zip(axes, values, strict=True):
            points = _grid_points(runs[runs[facet] == value], epochs, shown)
            for ax, metric in zip(row, LEARNING_METRICS, strict=True):
                panel = f"{TITLES[metric]}, {label_of({facet: value}, [facet])}"
                notes += [(panel, n) for n in _plot_metric(ax, points, metric, legend=ax is row[-1])]
                ax.set_title(panel, fontsize="medium")
            row[-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
        for ax in axes[-1]:
            ax.set_xlabel("epoch")
    fig.suptitle(f"{title}\n{note}", fontsize="medium")
    _footnote(fig, notes)
    _layout_below_suptitle(fig, footnote_lines=len(notes))
    save_figure(fig, path)


# The verdicts of study.common.stats.compare_conditions against the reference (chosen on validation).
VERDICT_COLOURS = {
    "reference": "tab:green",
    "no significant difference": "tab:blue",
    "worse": "tab:grey",
    "better": "tab:purple",
    "n/a": "tab:olive",
    "failed": "tab:red",
}


def error_bars(summary: pd.DataFrame, swept: list[str], path: Path, *, title: str) -> None:
    """Test error per grid point: mean of ok runs with its 95% t-interval (only where n > 1),
    coloured by the verdict against the reference point, chosen on validation (paired over seeds,
    Holm-corrected)."""
    ordered = summary.sort_values("test_error_mean", na_position="last")
    labels = [
        f"{label_of(row, swept)}  (n={int(row['n'])}"
        + (f", {int(row['failed'])} failed)" if row["failed"] else ")")
        for _, row in ordered.iterrows()
    ]
    means = ordered["test_error_mean"].fillna(0.0)
    has_interval = ordered["n"] > 1
    low = np.where(has_interval, means - ordered["ci95_low"], 0.0)
    high = np.where(has_interval, ordered["ci95_high"] - means, 0.0)
    colours = [VERDICT_COLOURS.get(v, "tab:grey") for v in ordered["verdict"]]
    fig, ax = plt.subplots(figsize=(8.5, 0.38 * len(labels) + 1.8))
    ax.barh(labels, means, xerr=np.vstack([low, high]), color=colours, capsize=3)
    for i, (_, row) in enumerate(ordered.iterrows()):
        if row["n"] == 0:
            ax.text(0, i, "  every run failed", va="center", color="tab:red", fontsize="small")
    ax.invert_yaxis()
    ax.set(title=title, xlabel="test error (mean of ok runs, 95% t-interval where n > 1)")
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=c)
        for v, c in VERDICT_COLOURS.items()
        if v in set(ordered["verdict"])
    ]
    ax.legend(
        handles,
        [v for v in VERDICT_COLOURS if v in set(ordered["verdict"])],
        title="vs the reference (Holm)",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize="small",
    )
    save_figure(fig, path)


BUDGET_TITLES = {"equal_steps": "equal steps", "equal_epochs": "equal epochs"}


def fraction_plot(runs: pd.DataFrame, path: Path, *, title: str) -> None:
    """Training and test error against the number of training examples, log-log (ok runs), one
    pair of lines per budget (equal epochs, equal steps) when the runs carry a ``budget`` column."""
    ok = runs[~runs["status"].isin(FAILED_STATUSES)]
    budgets = list(dict.fromkeys(ok["budget"])) if "budget" in ok.columns else [None]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    floor = 1e-4  # a perfect training fit would vanish from a log axis
    floored = False
    sizes: set[int] = set()
    for colour, budget in zip(COLOURS, budgets, strict=False):
        part = ok if budget is None else ok[ok["budget"] == budget]
        grouped = part.groupby("train_images")[["train_error", "test_error"]].mean()
        sizes |= {int(n) for n in grouped.index}
        name = "" if budget is None else f"{BUDGET_TITLES.get(budget, budget)}: "
        ax.plot(
            grouped.index,
            grouped["train_error"].clip(lower=floor),
            color=colour,
            marker="o",
            linestyle=":",
            label=f"{name}training error (running, last epoch)",
        )
        at_floor = grouped["train_error"] < floor
        if at_floor.any():  # hollow: below the floor (no training errors), not a measured 0.01%
            ax.scatter(
                grouped.index[at_floor],
                [floor] * int(at_floor.sum()),
                s=60,
                color="white",
                edgecolors=colour,
                zorder=3,
            )
            floored = True
        ax.plot(
            grouped.index,
            grouped["test_error"].clip(lower=floor),
            color=colour,
            marker="s",
            label=f"{name}test error (best validation epoch)",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = sorted(sizes)
    ax.set_xticks(ticks, [f"{n:,}" for n in ticks], rotation=30, ha="right")
    ax.minorticks_off()
    # 1-2-5 ticks labelled as percentages: errors often span less than a decade
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{100 * value:g}%"))
    ax.set(title=title, xlabel="training examples (log)", ylabel="error (log, mean of ok seeds)")
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize="small",
        title=f"hollow: no training errors, drawn at {100 * floor:g}%" if floored else None,
        title_fontsize="small",
    )
    save_figure(fig, path)


def selection_plot(selection: pd.DataFrame, groups: list[str], field: str, path: Path, *, title: str) -> None:
    """Mean validation accuracy (ok seeds, ± 1 std) against ``field`` for each group, the value
    chosen for it ringed: what the selection saw, on the scale it chose on."""
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    styles = series_styles()
    parts = selection.groupby(groups, sort=False, dropna=False) if groups else [((), selection)]
    failed_at: dict[Any, int] = {}  # value -> how many groups' x marks already sit there
    for key, part in parts:
        key = key if isinstance(key, tuple) else (key,)
        colour, linestyle = next(styles)
        label = label_of(dict(zip(groups, key, strict=True)), groups) if groups else "all"
        ax.errorbar(
            part[field],
            part[SELECTION_MEAN],
            yerr=part[SELECTION_STD].fillna(0.0),
            color=colour,
            linestyle=linestyle,
            marker="o",
            markersize=4,
            capsize=2,
            label=label,
        )
        chosen = part[part["selected"]]
        ax.scatter(chosen[field], chosen[SELECTION_MEAN], s=160, facecolors="none", edgecolors=colour)
        failed = part[part["n"] == 0]  # no ok seed: an x on the bottom edge, so the grid shows whole
        # groups failing at one value are stacked upwards, or the last one drawn would hide the rest
        heights = []
        for value in failed[field]:
            heights.append(0.03 + 0.05 * failed_at.get(value, 0))  # axes fraction
            failed_at[value] = failed_at.get(value, 0) + 1
        ax.scatter(
            failed[field],
            heights,
            marker="x",
            s=50,
            color=colour,
            transform=ax.get_xaxis_transform(),
            clip_on=False,
        )
    values = pd.to_numeric(selection[field], errors="coerce")
    if values.notna().all() and (values > 0).all() and values.max() / values.min() >= 10:
        ax.set_xscale("log")  # learning rates and the like span decades
    finite = selection[SELECTION_MEAN][np.isfinite(selection[SELECTION_MEAN])]
    if len(finite):
        ax.set_ylim(max(0.0, float(finite.min()) - 0.05), min(1.0, float(finite.max()) + 0.02))
    ax.set(
        title=title,
        xlabel=field,
        ylabel="validation accuracy (mean of ok seeds ± std)",
    )
    ax.legend(
        fontsize="small",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        title="ringed: chosen by validation\nx at the bottom: every run failed",
    )
    save_figure(fig, path)
