"""The sweep stage's section of REPORT.md, computed from its ``SweepResults``: the answer first
(the selected view, each budget's view, or the grid: a reference chosen by validation, every
other condition tested against it on test error), the factorial ANOVA of a factorial grid, then
failures, stopping, cost (averages of successful runs only) and any published reference, then
the tables."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lenet_core.errors import StudyError
from study.common.report import figure_links as _figures
from study.common.report import md as _md
from study.common.report import pct as _pct
from study.common.report import value_text as _value
from study.common.selection import SELECTION_METRIC
from study.stages.sweep.tables import FAILED_STATUSES, SELECTION_MEAN, label_of, ok_runs

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
    if results.anova is not None:
        sentences.append(_anova_sentence(results.anova, runs))
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
    if results.anova is not None:
        tables.append((_anova_heading(results.anova), results.anova))
    if select:
        tables.append((f"The choice of {select}: mean {SELECTION_METRIC} of ok seeds", selection))
    title = run.get("description") or root.name
    body = [line for heading, frame in tables for line in (f"### {heading}", "", _md(frame), "")]
    return [f"## {title}", "", *[s for s in sentences if s], "", *body, *_figures(root, root), ""]


STATS_NOTE = (
    "(ok runs: mean, 95% t-interval; reference: chosen by validation accuracy, never test; "
    "paired t-test against it over seeds, Holm)"
)
BUDGET_NAMES = {"equal_steps": "Equal steps", "equal_epochs": "Equal epochs"}


def _claim(table: pd.DataFrame, by: list[str]) -> str:
    """best_claim's sentence about a summary-shaped table (test_error_mean, ...)."""
    from study.common.stats import best_claim

    if table.empty:
        return "No condition has a run."
    stats = table.rename(columns={"test_error_mean": "mean", "test_error_std": "std"})
    stats.attrs.update(
        {
            "by": by,
            "metric": "test_error",
            "lower_is_better": True,
            "select_on": SELECTION_METRIC,
            "select_lower_is_better": False,
        }
    )
    return best_claim(stats)


def _anova_sentence(anova: pd.DataFrame, runs: pd.DataFrame) -> str:
    """The main effects and interactions with F and p, and the cells whose every run failed."""
    from study.common.stats import anova_claim

    factors = [f for f in anova["factor"] if ":" not in f and f not in ("Residual", "seed")]

    def cells(frame: pd.DataFrame) -> set[tuple[str, ...]]:
        return {tuple(_value(v) for v in row) for row in frame[factors].itertuples(index=False)}

    empty = sorted(cells(runs) - cells(ok_runs(runs)))
    named = [", ".join(f"{f}={v}" for f, v in zip(factors, cell, strict=True)) for cell in empty]
    return anova_claim(anova, block="seed", empty_cells=named)


def _anova_heading(anova: pd.DataFrame) -> str:
    block = ", seed as a block" if (anova["factor"] == "seed").any() else ""
    return f"Factorial ANOVA of test error (ok runs, type II sums of squares{block})"


def _main_sentences(summary: pd.DataFrame, swept: list[str]) -> list[str]:
    if "budget" in swept:  # each budget is its own comparison, with its own reference
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
    """How many successful runs stopped early and how long they lasted: averages over successful
    (ok) runs only, each trained run once (a run shared by two views counts once); a failed run
    stops when it fails, which says nothing about early stopping."""
    if "stopped_early" not in runs.columns:
        return []
    trained = runs.drop_duplicates("run") if "run" in runs.columns else runs
    ok = ok_runs(trained)
    if ok.empty or not ok["stopped_early"].astype(bool).any():
        return []
    left_out = len(trained) - len(ok)
    failed = f"; the {left_out} failed run(s) are left out of these averages" if left_out else ""
    return [
        f"{int(ok['stopped_early'].astype(bool).sum())} of {len(ok)} successful runs stopped early when "
        f"validation accuracy stopped improving; successful runs lasted {ok['epochs_run'].mean():.1f} "
        f"epochs on average and kept their best validation epoch ({ok['best_epoch'].mean():.1f} on "
        f"average){failed}."
    ]


def _cost_sentences(summary: pd.DataFrame, swept: list[str]) -> list[str]:
    """Parameters, wall time and epochs per condition, where the conditions are different models:
    the summary's means, which are over successful (ok) runs only."""
    if "parameters" not in summary.columns or summary["parameters"].nunique() < 2:
        return []
    parts = [
        f"{label_of(r, swept)}: {r['parameters']:,.0f} parameters, {r['seconds_mean']:,.0f} s per run"
        + (f" ({r['epochs_run_mean']:.1f} epochs)" if "epochs_run_mean" in r else "")
        + f" over {int(r['n'])} successful run(s)"
        for _, r in summary.iterrows()
        if r["n"] > 0
    ]
    return [
        "Size and cost (wall time and epochs: means of successful runs only, failed runs left out): "
        + "; ".join(parts)
        + "."
    ]


def _reference_sentences(summary: pd.DataFrame, reference: dict) -> list[str]:
    """Our test accuracy next to a published one, and what differs between the two setups."""
    if not reference:
        return []
    ok = summary[summary["n"] > 0]
    published = f"{reference['source']} reports {_pct(reference['test_acc'])} test accuracy."
    if ok.empty:
        return [published + " No run of ours succeeded to compare with it."]
    row = ok.iloc[0]  # the only condition, or the reference (chosen by validation)
    ours = 1 - row["test_error_mean"]
    interval = (
        f", 95% t-interval {_pct(1 - row['ci95_high'])} to {_pct(1 - row['ci95_low'])}"
        if row["n"] > 1
        else ""
    )
    which = "" if len(summary) == 1 else f" ({_condition(row, summary)}, the reference chosen by validation)"
    line = (
        f"{published} Ours{which}: {_pct(ours)} mean test accuracy over {int(row['n'])} seed(s){interval}, "
        f"{100 * (ours - reference['test_acc']):+.2f} percentage points."
    )
    note = reference.get("note")
    return [line + (f" What differs: {note}" if note else "")]


def _condition(row: pd.Series, summary: pd.DataFrame) -> str:
    return label_of(row, list(summary.columns[: list(summary.columns).index("n")]))


# ------------------------------------------------------------------ earlier claims
# Verdicts as earlier versions wrote them: "best" was the lowest test mean, "tied" a comparison
# with it that was not significant after Holm.
EARLIER_WORDS = {"best": "best (lowest test error)", "tied": "tied with the best"}
VERDICT_VIEWS = ("summary", "selected", "compare_at")


def earlier_claims(previous: dict[str, pd.DataFrame], results: SweepResults) -> pd.DataFrame:
    """Each condition's verdict in an earlier run's tables (``previous``: view name -> the table as
    that run stored it) beside its verdict now, and whether the earlier claim survived.

    An earlier "best" survives when that condition is now the reference or not significantly
    worse than it; "tied" when there is now no significant difference from the reference;
    "worse" or "better" when the verdict is the same. Conditions only one run has are listed with
    "not in this run" or "not in the earlier run".
    """
    current = {"summary": results.summary, "selected": results.selected, "compare_at": results.compared_at}
    swept = results.swept
    rows = []
    for view in VERDICT_VIEWS:
        old, new = previous.get(view), current.get(view)
        if old is None or new is None or "verdict" not in old or "verdict" not in new:
            continue
        missing = [column for column in swept if column not in old]
        if missing:
            raise StudyError(
                f"the earlier run is not one of this experiment: its {view} table has no "
                f"{', '.join(missing)} column (this run sweeps {', '.join(swept)})"
            )
        now = {label_of(r, swept): r for _, r in new.iterrows()}
        for _, r in old.iterrows():
            label = label_of(r, swept)
            before, match = str(r["verdict"]), now.get(label)
            after = None if match is None else str(match["verdict"])
            rows.append(
                {
                    "table": view,
                    "condition": label,
                    "earlier": EARLIER_WORDS.get(before, before),
                    "now": after if after is not None else "not in this run",
                    "survived": _survived(before, after),
                    "earlier_test_error": r.get("test_error_mean"),
                    "now_test_error": None if match is None else match.get("test_error_mean"),
                    "earlier_n": r.get("n"),
                    "now_n": None if match is None else match.get("n"),
                }
            )
    columns = ["table", "condition", "earlier", "now", "survived", "earlier_test_error", "now_test_error"]
    return pd.DataFrame(rows, columns=[*columns, "earlier_n", "now_n"])


def _survived(before: str, after: str | None) -> str:
    if after is None:
        return "n/a"
    if before in ("n/a", "failed"):
        return "yes" if after == before else "n/a"
    if before == "best":
        return "yes" if after in ("reference", "no significant difference", "better") else "no"
    if before == "tied":
        return "yes" if after in ("no significant difference", "reference") else "no"
    return "yes" if after == before else "no"


def earlier_claims_section(
    previous: dict[str, pd.DataFrame], results: SweepResults, source: str
) -> list[str]:
    table = earlier_claims(previous, results)
    if table.empty:
        return []
    claims = table[table["earlier"].str.startswith(("best", "tied", "worse", "better"))]
    kept, lost = (claims["survived"] == "yes").sum(), (claims["survived"] == "no").sum()
    lost_names = claims.loc[claims["survived"] == "no", ["table", "condition", "earlier", "now"]]
    lost_text = "; ".join(
        f"{r.condition} ({r.table}): {r.earlier} -> {r.now}" for r in lost_names.itertuples()
    )
    return [
        "### Earlier claims, against this run",
        "",
        f"The earlier run ({source}) chose its best condition by test error and called non-significant "
        f"differences ties. Of its {len(claims)} verdicts, {kept} survived this run and {lost} did not"
        + (f": {lost_text}." if lost else "."),
        "",
        _md(table),
        "",
    ]
