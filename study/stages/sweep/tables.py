"""Sweep tables: one row per grid point over its seeds, with the statistics every comparison
needs (``study.common.stats``: a reference point chosen by validation, every other point tested
against it on test error), the label that names a grid point, the views of a sweep with
``select`` (each group's value of a field chosen by validation) and ``compare_at``, and the
factorial ANOVA of a grid that is a full product of its fields."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from lenet_core.status import failed_names
from study.common.selection import SELECTION_METRIC
from study.common.stats import compare_conditions, factorial_anova

FAILED_STATUSES = failed_names()
# The selection view's columns: the mean and spread over ok seeds of the selection metric.
SELECTION_MEAN, SELECTION_STD = f"{SELECTION_METRIC}_mean", f"{SELECTION_METRIC}_std"

# Means of ok runs only (failed runs are counted in "failed", never averaged in); the selection
# metric's mean (SELECTION_MEAN) comes with compare_conditions, which chooses the reference by it.
EXTRA_MEANS = {
    "final_train_loss": "final_train_loss_mean",
    "epochs_run": "epochs_run_mean",
    "seconds": "seconds_mean",
    "parameters": "parameters",  # one model per condition: the mean is its count
}


def ok_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that count: not failed (diverged, collapsed) and with a finite test error."""
    errors = pd.to_numeric(runs["test_error"], errors="coerce")
    return runs[~runs["status"].isin(FAILED_STATUSES) & np.isfinite(errors)]


def summarize(runs: pd.DataFrame, swept: list[str], *, within: list[str] | None = None) -> pd.DataFrame:
    """Per grid point: n ok runs, failed runs, test error mean, std and 95% t-interval, the mean
    validation accuracy (``best_val_acc_mean``), ``reference`` (True on the point with the highest
    validation mean: test error never chooses it), and the paired test against the reference over
    matching seeds (Holm-corrected), with a verdict (reference, better, worse, no significant
    difference, n/a, failed).

    With ``within`` (e.g. ["budget"]) each group of those columns is compared apart, with its own
    reference and Holm family, and the groups are stacked in first-seen order.
    """
    if not within:
        return _compare(runs, swept)
    parts = [_compare(part, swept) for _, part in runs.groupby(within, sort=False, dropna=False)]
    table = pd.concat(parts, ignore_index=True)
    table.attrs = {**parts[0].attrs, "within": list(within)}
    return table


def _compare(runs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    table = compare_conditions(
        runs,
        by=by,
        metric="test_error",
        pair_on="seed",
        select_on=SELECTION_METRIC,
        failed_statuses=FAILED_STATUSES,
    )
    table = table.rename(columns={"mean": "test_error_mean", "std": "test_error_std"})
    ok = ok_runs(runs)
    extra = {k: v for k, v in EXTRA_MEANS.items() if k in runs.columns}  # old runs lack some
    means = ok.groupby(by, dropna=False, sort=False)[list(extra)].mean().rename(columns=extra)
    merged = table.merge(means.reset_index(), on=by, how="left")
    if "parameters" in merged.columns:  # a count, blank where every run failed
        merged["parameters"] = merged["parameters"].round().astype("Int64")
    merged.attrs = table.attrs
    return merged


def select_by_validation(runs: pd.DataFrame, *, swept: list[str], field: str) -> pd.DataFrame:
    """Every grid point with the mean validation accuracy of its ok runs, and ``selected`` True
    on the one value of ``field`` per group of the other swept fields with the highest mean.

    Failed runs (and runs without a finite validation accuracy) are left out of the means; a
    point with no ok run cannot be selected; the first in grid order wins a tie. Test error is
    shown beside it for the reader and plays no part in the choice.
    """
    groups = [s for s in swept if s != field]
    values = pd.to_numeric(runs[SELECTION_METRIC], errors="coerce")
    ok = runs.assign(**{SELECTION_METRIC: values})[
        ~runs["status"].isin(FAILED_STATUSES) & np.isfinite(values)
    ]
    rows = []
    for key, part in runs.groupby(swept, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        mine = ok.loc[ok.index.intersection(part.index)]
        rows.append(
            {
                **dict(zip(swept, key, strict=True)),
                "n": len(mine),
                "failed": int(part["status"].isin(FAILED_STATUSES).sum()),
                SELECTION_MEAN: float(mine[SELECTION_METRIC].mean()) if len(mine) else math.nan,
                SELECTION_STD: float(mine[SELECTION_METRIC].std()) if len(mine) > 1 else math.nan,
                "test_error_mean": float(mine["test_error"].mean()) if len(mine) else math.nan,
            }
        )
    table = pd.DataFrame(rows)
    table["selected"] = False
    for _, part in table.groupby(groups, sort=False, dropna=False) if groups else [(None, table)]:
        scores = part[SELECTION_MEAN]
        if scores.notna().any():
            table.loc[scores.idxmax(), "selected"] = True  # idxmax: the first of equal maxima
    return table


def rows_at(runs: pd.DataFrame, points: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The rows of ``runs`` whose ``columns`` match one of ``points`` (exact values, None too)."""
    wanted = {_key(row, columns) for _, row in points.iterrows()}
    mask = [(_key(row, columns) in wanted) for _, row in runs.iterrows()]
    return runs[np.array(mask, dtype=bool)] if len(runs) else runs


def _key(row: Any, columns: list[str]) -> tuple[Any, ...]:
    # NaN never equals itself: None and NaN both stand for "not set"
    return tuple(None if _missing(row[c]) else row[c] for c in columns)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def selected_view(runs: pd.DataFrame, *, swept: list[str], field: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(selection, selected): the choice by validation and the summary of the chosen points,
    compared on test error over seeds like any sweep (one row per group, ``field`` its choice)."""
    selection = select_by_validation(runs, swept=swept, field=field)
    chosen = rows_at(runs, selection[selection["selected"]], swept)
    return selection, summarize(chosen, swept)


def compare_at_view(runs: pd.DataFrame, *, swept: list[str], at: dict[str, Any]) -> pd.DataFrame:
    """The summary of the runs at the given values (e.g. every optimizer at lr 1e-3)."""
    mask = np.ones(len(runs), dtype=bool)
    for key, value in at.items():
        mask &= (runs[key] == value).to_numpy()
    return summarize(runs[mask], swept)


def factorial_factors(runs: pd.DataFrame, swept: list[str]) -> list[str]:
    """The swept fields of a factorial design, or [] when the grid is not one.

    A grid is factorial when at least 2 swept fields take 2 or more values each, every
    combination of their values was run (the grid is their full product, as one ``[sweep]``
    table makes it) and each combination has at least 2 seeds. Fields with one value are no
    factor. Judged on the planned runs, failed ones included: a failure does not change the design.
    """
    if runs.empty or "seed" not in runs.columns:
        return []
    factors = [s for s in swept if s in runs.columns and runs[s].map(_cell).nunique(dropna=False) >= 2]
    if len(factors) < 2:
        return []
    cells = runs[factors].map(_cell).assign(seed=runs["seed"].map(_cell))
    seeds = cells.groupby(factors, sort=False, dropna=False)["seed"].nunique()
    product = math.prod(cells[f].nunique(dropna=False) for f in factors)
    return factors if len(seeds) == product and bool((seeds >= 2).all()) else []


def anova_view(runs: pd.DataFrame, swept: list[str]) -> pd.DataFrame | None:
    """The factorial ANOVA of test error (ok runs, type II, seed as a block) of a factorial grid,
    or None when the grid is not factorial."""
    factors = factorial_factors(runs, swept)
    if not factors:
        return None
    return factorial_anova(
        runs, factors=factors, metric="test_error", block="seed", failed_statuses=FAILED_STATUSES
    )


def _cell(value: Any) -> Any:
    """A hashable stand-in for a cell: None and NaN are one missing value."""
    return None if _missing(value) else value


def at_name(at: dict[str, Any]) -> str:
    """'lr_0.001': the compare_at view in file names."""
    return "_".join(f"{k}_{_fmt(v)}" for k, v in at.items())


def label_of(row: Any, swept: list[str]) -> str:
    return ", ".join(f"{k}={_fmt(getattr(row, k) if hasattr(row, k) else row[k])}" for k in swept)


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{value:g}"
    return str(value)
