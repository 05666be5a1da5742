"""The sweep stage's section of REPORT.md, computed from its ``SweepResults``: the answer first
(the selected view, each budget's view, or the grid), then failures, stopping, cost and any
published reference, then the tables."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from study.common.report import figure_links as _figures
from study.common.report import md as _md
from study.common.report import pct as _pct
from study.common.report import value_text as _value
from study.common.selection import SELECTION_METRIC
from study.stages.sweep.tables import FAILED_STATUSES, SELECTION_MEAN, label_of

if TYPE_CHECKING:
    from study.stages.sweep.results import SweepResults


def sweep_section(results: SweepResults, root: Path) -> list[str]:
    runs, summary, run, file = results.runs, results.summary, results.run, results.file
    swept, select = results.swept, results.select
    sentences: list[str] = []
    tables: list[tuple[str, pd.DataFrame]] = []
    if select:
        selection, selected = results.selection, results.selected
        sentences += _selection_sentences(selection, selected, swept, select)
        tables.append((f"Each at its {select} chosen by validation: test error {STATS_NOTE}", selected))
    if results.compare_at:
        at = results.compared_at
        where = ", ".join(f"{k}={_value(v)}" for k, v in results.compare_at.items())
        sentences.append(f"With every condition at {where}: " + _claim(at, swept))
        tables.append((f"Every condition at {where}: test error {STATS_NOTE}", at))
    if not select:
        sentences += _main_sentences(summary, swept)
    sentences.append(_failed_sentence(runs, swept))
    sentences += _fraction_sentences(runs, swept)
    sentences += _stopping_sentences(runs)
    sentences += _cost_sentences(summary, swept)
    sentences += _reference_sentences(summary, file.get("reference") or {})
    grid_heading = (
        f"Every grid point (descriptive: picking from it by test error would flatter the pick) {STATS_NOTE}"
        if select
        else f"Test error by condition {STATS_NOTE}"
    )
    tables.append((grid_heading, summary))
    if select:
        tables.append((f"The choice of {select}: mean {SELECTION_METRIC} of ok seeds", selection))
    title = run.get("description") or root.name
    body = [line for heading, frame in tables for line in (f"### {heading}", "", _md(frame), "")]
    return [f"## {title}", "", *[s for s in sentences if s], "", *body, *_figures(root, root), ""]


STATS_NOTE = "(ok runs: mean, 95% t-interval; paired t-test vs the best over seeds, Holm)"
BUDGET_NAMES = {"equal_steps": "Equal steps", "equal_epochs": "Equal epochs"}


def _claim(table: pd.DataFrame, by: list[str]) -> str:
    """best_claim's sentence about a summary-shaped table (test_error_mean, ...)."""
    from study.common.stats import best_claim

    if table.empty:
        return "No condition has a run."
    stats = table.rename(columns={"test_error_mean": "mean", "test_error_std": "std"})
    stats.attrs.update({"by": by, "metric": "test_error", "lower_is_better": True})
    return best_claim(stats)


def _main_sentences(summary: pd.DataFrame, swept: list[str]) -> list[str]:
    if "budget" in swept:  # each budget is its own comparison, with its own best
        rest = [s for s in swept if s != "budget"]
        return [
            f"{BUDGET_NAMES.get(budget, budget)}: {_claim(part, rest)}"
            for budget, part in summary.groupby("budget", sort=False)
        ]
    if len(summary) == 1:
        return [_one_condition(summary.iloc[0])]
    return [_claim(summary, swept)]


def _one_condition(row: pd.Series) -> str:
    if row["n"] == 0:
        return "No run succeeded."
    interval = (
        f" (95% t-interval {_pct(row['ci95_low'])} to {_pct(row['ci95_high'])})" if row["n"] > 1 else ""
    )
    return (
        f"Over {int(row['n'])} ok run(s), mean test error is {_pct(row['test_error_mean'])}{interval}, "
        f"a test accuracy of {_pct(1 - row['test_error_mean'])}."
    )


def _selection_sentences(
    selection: pd.DataFrame, selected: pd.DataFrame, swept: list[str], field: str
) -> list[str]:
    groups = [s for s in swept if s != field]
    chosen = selection[selection["selected"]]
    picks = "; ".join(
        f"{', '.join(_value(r[g]) for g in groups)}: {field} {_value(r[field])} "
        f"(validation {_pct(r[SELECTION_MEAN])}, n={int(r['n'])})"
        for _, r in chosen.iterrows()
    )
    lines = [
        f"Each {' x '.join(groups)} was run over its own {field} grid and its {field} chosen by the "
        f"highest mean validation accuracy over ok seeds (failed runs left out; test error plays no "
        f"part in the choice): {picks}."
    ]
    unchosen = selection.groupby(groups, sort=False, dropna=False)["selected"].any() if groups else None
    if unchosen is not None and not unchosen.all():
        lines.append(
            "Every run failed for " + ", ".join(str(k) for k, v in unchosen.items() if not v) + "; left out."
        )
    lines.append("At the chosen values: " + _claim(selected, swept))
    return lines


def _failed_sentence(runs: pd.DataFrame, swept: list[str]) -> str:
    failed = runs[runs["status"].isin(FAILED_STATUSES)]
    if not len(failed):
        return f"None of the {len(runs)} runs diverged or collapsed."
    labels = sorted(
        {", ".join(f"{k}={r[k]}" for k in swept) + f" ({r['status']})" for _, r in failed.iterrows()}
    )
    return f"{len(failed)} of {len(runs)} runs failed and are left out of every mean: {'; '.join(labels)}."


def _fraction_sentences(runs: pd.DataFrame, swept: list[str]) -> list[str]:
    """The log-log slope of test error against training examples, per budget."""
    if "train_fraction" not in swept:
        return []
    ok = runs[~runs["status"].isin(FAILED_STATUSES)]
    views = ok.groupby("budget", sort=False) if "budget" in ok.columns else [(None, ok)]
    lines = []
    for budget, part in views:
        sizes = part.groupby("train_images")["test_error"].mean()
        if len(sizes) < 2:
            continue
        slope = np.polyfit(np.log(sizes.index), np.log(sizes.clip(lower=1e-6).values), 1)[0]
        epochs = part.groupby("train_images")["epochs"].max() if "epochs" in part.columns else None
        trained = (
            f" (an epoch budget of {int(epochs.iloc[0])} at {sizes.index[0]:,} examples and "
            f"{int(epochs.iloc[-1])} at {sizes.index[-1]:,})"
            if epochs is not None
            else ""
        )
        view = f"{BUDGET_NAMES.get(budget, budget)}: m" if budget is not None else "M"
        lines.append(
            f"{view}ean test error fell from {_pct(sizes.iloc[0])} with {sizes.index[0]:,} training "
            f"examples to {_pct(sizes.iloc[-1])} with {sizes.index[-1]:,}, a log-log slope of "
            f"{slope:.2f}{trained}."
        )
    return lines


def _stopping_sentences(runs: pd.DataFrame) -> list[str]:
    if "stopped_early" not in runs.columns or not runs["stopped_early"].any():
        return []
    stopped = runs.drop_duplicates("run")
    return [
        f"{int(stopped['stopped_early'].sum())} of {len(stopped)} runs stopped early when validation "
        f"accuracy stopped improving; runs lasted {stopped['epochs_run'].mean():.1f} epochs on average "
        f"and kept their best validation epoch ({stopped['best_epoch'].mean():.1f} on average)."
    ]


def _cost_sentences(summary: pd.DataFrame, swept: list[str]) -> list[str]:
    """Parameters and wall time per condition, where the conditions are different models."""
    if "parameters" not in summary.columns or summary["parameters"].nunique() < 2:
        return []
    parts = [
        f"{label_of(r, swept)}: {r['parameters']:,.0f} parameters, {r['seconds_mean']:,.0f} s per run"
        + (f" ({r['epochs_run_mean']:.1f} epochs)" if "epochs_run_mean" in r else "")
        for _, r in summary.iterrows()
        if r["n"] > 0
    ]
    return ["Size and cost (wall time: mean of ok runs, where they ran): " + "; ".join(parts) + "."]


def _reference_sentences(summary: pd.DataFrame, reference: dict) -> list[str]:
    """Our test accuracy next to a published one, and what differs between the two setups."""
    if not reference:
        return []
    ok = summary[summary["n"] > 0]
    published = f"{reference['source']} reports {_pct(reference['test_acc'])} test accuracy."
    if ok.empty:
        return [published + " No run of ours succeeded to compare with it."]
    row = ok.iloc[0]  # the only condition, or the best one
    ours = 1 - row["test_error_mean"]
    interval = (
        f", 95% t-interval {_pct(1 - row['ci95_high'])} to {_pct(1 - row['ci95_low'])}"
        if row["n"] > 1
        else ""
    )
    which = "" if len(summary) == 1 else f" ({_condition(row, summary)})"
    line = (
        f"{published} Ours{which}: {_pct(ours)} mean test accuracy over {int(row['n'])} seed(s){interval}, "
        f"{100 * (ours - reference['test_acc']):+.2f} percentage points."
    )
    note = reference.get("note")
    return [line + (f" What differs: {note}" if note else "")]


def _condition(row: pd.Series, summary: pd.DataFrame) -> str:
    return label_of(row, list(summary.columns[: list(summary.columns).index("n")]))


