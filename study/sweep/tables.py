"""Sweep tables: one row per grid point over its seeds, with the statistics every comparison
needs (``study.common.stats``), and the label that names a grid point."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from study.common.stats import compare_conditions

FAILED_STATUSES = ("diverged", "collapsed")
# Means of ok runs only (failed runs are counted in "failed", never averaged in).
EXTRA_MEANS = {
    "val_acc": "val_acc_mean",
    "final_train_loss": "final_train_loss_mean",
    "seconds": "seconds_mean",
}


def summarize(runs: pd.DataFrame, swept: list[str]) -> pd.DataFrame:
    """Per grid point: n ok runs, failed runs, test error mean, std and 95% t-interval, and the
    paired test against the best point over matching seeds (Holm-corrected), with a verdict."""
    table = compare_conditions(
        runs, by=swept, metric="test_error", pair_on="seed", failed_statuses=FAILED_STATUSES
    )
    table = table.rename(columns={"mean": "test_error_mean", "std": "test_error_std"})
    ok = runs[~runs["status"].isin(FAILED_STATUSES)]
    means = ok.groupby(swept, dropna=False, sort=False)[list(EXTRA_MEANS)].mean().rename(columns=EXTRA_MEANS)
    merged = table.merge(means.reset_index(), on=swept, how="left")
    merged.attrs = table.attrs
    return merged


def label_of(row: Any, swept: list[str]) -> str:
    return ", ".join(f"{k}={_fmt(getattr(row, k) if hasattr(row, k) else row[k])}" for k in swept)


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{value:g}"
    return str(value)
