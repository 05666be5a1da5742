"""Sweep tables: one row per grid point over its seeds, and the label that names a grid point."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def summarize(runs: pd.DataFrame, swept: list[str]) -> pd.DataFrame:
    """Mean and standard deviation over seeds for every grid point."""
    metrics = ["test_error", "val_acc", "final_train_loss", "seconds"]
    grouped = runs.groupby(swept, dropna=False, sort=False)
    table = grouped[metrics].agg(["mean", "std"])
    table.columns = [f"{m}_{s}" for m, s in table.columns]
    table["runs"] = grouped.size()
    table["diverged"] = grouped["status"].agg(lambda s: int((s == "diverged").sum()))
    return table.reset_index()


def label_of(row: Any, swept: list[str]) -> str:
    return ", ".join(f"{k}={_fmt(getattr(row, k) if hasattr(row, k) else row[k])}" for k in swept)


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{value:g}"
    return str(value)
