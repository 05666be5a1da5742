"""Statistics behind every comparison the study prints: numpy/scipy/pandas, statsmodels for ANOVA.

Three kinds of question:

* conditions over seeds: ``describe`` one condition, ``paired_test`` two conditions over matching
  seeds, ``holm`` for many comparisons, and ``compare_conditions`` / ``best_claim`` that put them
  together into a table and a sentence that never claims a winner the data do not support: the
  reference condition is chosen on validation, never on test, and every other condition is tested
  against it on test; "no significant difference" is what a non-significant test is called;
  ``tost`` for a claim of equivalence within a margin; ``factorial_anova`` (statsmodels) for a
  grid that is a full product of its factors;
* two models on one test set: ``mcnemar_exact`` and ``wilson_interval``;
* calibration of (N, C) class probabilities against (N,) integer labels: ``nll``, ``brier``,
  ``expected_calibration_error`` and ``reliability_curve``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Iterable, Sequence
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from lenet_core.status import failed_names
from study.common.selection import SELECTION_METRIC

FAILED_NAMES = failed_names()  # runs that never count as ok: diverged, collapsed
MIN_WILCOXON_PAIRS = 6  # with 5 pairs the smallest two-sided exact p is 2/32 = 0.0625: it can never reject
MIN_T_PAIRS = 2  # a paired t-test needs a standard deviation of the differences
PROBA_FLOOR = 1e-12  # log(0) guard for the negative log-likelihood
# The verdicts of compare_conditions: "better" and "worse" only at Holm p < alpha
REFERENCE, BETTER, WORSE, NO_DIFFERENCE, NOT_TESTED, FAILED = (
    "reference",
    "better",
    "worse",
    "no significant difference",
    "n/a",
    "failed",
)
VERDICTS = (REFERENCE, BETTER, WORSE, NO_DIFFERENCE, NOT_TESTED, FAILED)


# --------------------------------------------------------------------------- one condition, two conditions


def describe(values: Iterable[float]) -> dict[str, float | int]:
    """n, mean, std (ddof=1) and a 95% Student t interval of the mean; NaN, None and inf are ignored.

    std and the interval are NaN for fewer than 2 values; everything but n is NaN for none.
    """
    x = _finite_or_nan(values)
    x = x[~np.isnan(x)]
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "std": math.nan, "ci95_low": math.nan, "ci95_high": math.nan}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, df=n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}


def paired_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """Paired comparison of ``a`` against ``b`` (same length, element i of each from the same seed).

    Pairs with a NaN on either side are dropped. ``mean_diff`` is mean(a - b). ``p_t`` is the two-sided
    paired t-test (NaN below 2 pairs); ``p_wilcoxon`` the two-sided Wilcoxon signed-rank test (zero
    differences dropped, scipy's default), only from 6 pairs on, NaN before. When every difference is
    exactly zero both tests have nothing to detect: p = 1.0 instead of scipy's NaN or warning.
    """
    x, y = _finite_or_nan(a), _finite_or_nan(b)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired_test needs two 1-D arrays of equal length, got {x.shape} and {y.shape}")
    keep = ~(np.isnan(x) | np.isnan(y))
    diff = x[keep] - y[keep]  # (n_pairs,)
    n = len(diff)
    result: dict[str, float | int] = {
        "n_pairs": n,
        "mean_diff": float(diff.mean()) if n else math.nan,
        "p_t": math.nan,
        "p_wilcoxon": math.nan,
    }
    all_zero = n > 0 and not diff.any()
    if n >= MIN_T_PAIRS:
        result["p_t"] = 1.0 if all_zero else _quiet_p(stats.ttest_rel, x[keep], y[keep])
    if n >= MIN_WILCOXON_PAIRS:
        result["p_wilcoxon"] = 1.0 if all_zero else _quiet_p(stats.wilcoxon, diff)
    return result


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values, same order as given; NaN entries pass through and do not count.

    With m real p-values sorted ascending p_(1) <= ... <= p_(m), the adjusted p_(i) is
    max over j <= i of min(1, (m - j + 1) * p_(j)), which keeps the adjusted values monotone.
    """
    p = np.asarray(pvalues, dtype=float)
    adjusted = p.copy()
    real = np.flatnonzero(~np.isnan(p))
    order = real[np.argsort(p[real], kind="stable")]  # indices of the real p-values, ascending
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


# --------------------------------------------------------------------------- a table of conditions


# the columns after the `by` ones, in table order (the selection mean, "<select_on>_mean", sits
# before `reference` when there is a selection metric)
_TABLE_COLUMNS = (
    "n",
    "failed",
    "missing",
    "mean",
    "std",
    "ci95_low",
    "ci95_high",
    "reference",
    "n_pairs",
    "mean_diff_vs_ref",
    "p_vs_ref",
    "p_wilcoxon_vs_ref",
    "p_holm_vs_ref",
    "verdict",
)


def compare_conditions(
    runs: pd.DataFrame,
    *,
    by: list[str],
    metric: str = "test_error",
    pair_on: str = "seed",
    lower_is_better: bool = True,
    select_on: str | None = SELECTION_METRIC,
    select_lower_is_better: bool = False,
    failed_statuses: Sequence[str] = FAILED_NAMES,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """One row per condition (a distinct combination of the ``by`` values), the reference first.

    A run counts ("ok") unless its ``status`` is in ``failed_statuses`` (counted in ``failed``) or its
    metric is not finite (counted in ``missing``); only ok runs enter n, mean, std and the interval.
    Without a ``status`` column every run with a finite metric is ok.

    The reference condition is chosen on ``select_on`` (validation accuracy, ``best_val_acc``), never
    on ``metric`` (test error): the highest mean of ``select_on`` over its ok runs (the lowest with
    ``select_lower_is_better``), the first seen winning a tie. Choosing it by the compared metric
    would make every "worse" verdict anti-conservative (the pick is flattered by its own noise).
    Where no condition has a finite ``select_on`` (``select_on`` None or not a column, as in tables
    older than the selection metric), the reference is the first condition with an ok run, in
    table (grid) order: chosen before looking at any result. The column ``<select_on>_mean`` holds
    each condition's selection mean, ``reference`` is True on the reference's row, and
    ``table.attrs["reference_by"]`` says how it was chosen.

    Every other condition is compared with the reference on ``metric`` over the ``pair_on`` values
    (seeds) both have ok runs for (several ok runs of one condition with the same seed are averaged
    first): ``n_pairs``, ``mean_diff_vs_ref`` = mean over those seeds of (condition - reference),
    ``p_vs_ref`` (paired t), ``p_wilcoxon_vs_ref`` (from 6 pairs) and ``p_holm_vs_ref`` (Holm over
    the t-test p of the other conditions that have one). ``verdict``: "reference"; "worse" or
    "better" (Holm p < alpha, losing or winning against the reference); "no significant difference"
    (Holm p >= alpha: at this n the test cannot tell them apart, which is not a tie); "n/a" (fewer
    than 2 shared seeds); "failed" (no ok run). The reference row has mean_diff 0, NaN p-values and
    n_pairs = its number of distinct seeds. ``table.attrs`` records by, metric, lower_is_better,
    alpha, select_on, select_lower_is_better, reference_by and comparisons (the Holm family's size).
    """
    _check_columns(runs, [*by, metric, pair_on])
    if not by:
        raise ValueError("compare_conditions needs at least one column in `by`")
    if isinstance(failed_statuses, str):  # "diverged" alone must not mean its letters
        failed_statuses = (failed_statuses,)
    values = pd.to_numeric(runs[metric], errors="coerce").to_numpy(dtype=float)  # (R,)
    scores = _numeric_column(runs, select_on)  # (R,) the selection metric, NaN where absent
    failed = (
        runs["status"].isin(list(failed_statuses)).to_numpy()
        if "status" in runs.columns
        else np.zeros(len(runs), bool)
    )
    ok = ~failed & np.isfinite(values)
    conditions = _group_rows(runs, by)  # {key: (display values, row positions)}, first-seen order
    seeds = [_normalize(v) for v in runs[pair_on].tolist()]
    score_column = f"{select_on}_mean" if select_on else None

    rows = []
    per_seed: dict[Hashable, dict[Hashable, float]] = {}
    for key, (shown, positions) in conditions.items():
        mine = [p for p in positions if ok[p]]
        row: dict[str, Any] = dict(zip(by, shown, strict=True))
        row["n"] = len(mine)
        row["failed"] = int(failed[positions].sum())
        row["missing"] = len(positions) - len(mine) - row["failed"]
        row.update({k: v for k, v in describe(values[mine]).items() if k != "n"})
        if score_column:
            finite = scores[mine][np.isfinite(scores[mine])]
            row[score_column] = float(finite.mean()) if len(finite) else math.nan
        per_seed[key] = _mean_per_seed(values, seeds, mine)
        rows.append((key, row))

    ref_key, reference_by = _reference_key(
        rows, score_column, select_on=select_on, select_lower_is_better=select_lower_is_better
    )
    for key, row in rows:
        row["reference"] = key == ref_key
        row.update(_versus_reference(per_seed, key=key, ref_key=ref_key))
    others = [row for key, row in rows if key != ref_key]
    for row, adjusted in zip(others, holm([row["p_vs_ref"] for row in others]), strict=True):
        row["p_holm_vs_ref"] = float(adjusted)
    for key, row in rows:
        row["verdict"] = _verdict(row, is_ref=key == ref_key, lower_is_better=lower_is_better, alpha=alpha)

    columns = list(_TABLE_COLUMNS)
    if score_column:
        columns.insert(columns.index("reference"), score_column)
    ordered = _reference_first([row for _, row in rows], lower_is_better=lower_is_better)
    table = pd.DataFrame(ordered, columns=[*by, *columns])
    table.attrs.update(
        {
            "by": list(by),
            "metric": metric,
            "lower_is_better": lower_is_better,
            "alpha": alpha,
            "select_on": select_on,
            "select_lower_is_better": select_lower_is_better,
            "reference_by": reference_by,
            "comparisons": int(sum(not math.isnan(row["p_vs_ref"]) for row in others)),
        }
    )
    return table


def reference_by_text(
    select_on: str | None, *, chosen: bool, select_lower_is_better: bool = False, score: str = ""
) -> str:
    """How the reference was chosen, for attrs and sentences: 'validation accuracy (the highest mean
    best_val_acc of ok runs[, SCORE])', or the grid-order fallback when there was nothing to choose by."""
    if not chosen:
        what = f"no {select_on} to choose by" if select_on else "no selection metric"
        return f"grid order ({what}: the first condition with a successful run)"
    direction = "lowest" if select_lower_is_better else "highest"
    shown = f", {score}" if score else ""
    return f"{_selection_name(select_on)} (the {direction} mean {select_on} of ok runs{shown})"


def best_claim(
    table: pd.DataFrame,
    *,
    alpha: float = 0.05,
    metric: str | None = None,
    lower_is_better: bool | None = None,
) -> str:
    """Sentences for a report about a ``compare_conditions`` table.

    They name the reference and how it was chosen (on validation), then every other condition's
    verdict against it on the compared metric with its Holm p: "no significant difference at n = N"
    (with the raw p beside the Holm p), significantly better or worse, not tested (fewer than 2
    shared seeds), no successful run. The reference is called the best condition only when every
    other condition is significantly worse. When another condition has the best mean of the
    compared metric, it is named as such, as a description: picked by test error it is flattered.
    ``alpha`` re-judges the Holm p-values, so it may differ from the one the table was built with.
    ``metric`` and ``lower_is_better`` default to what ``compare_conditions`` recorded in
    ``table.attrs`` (so do select_on and select_lower_is_better).
    """
    by = table.attrs.get("by") or list(table.columns[: list(table.columns).index("n")])
    metric = metric if metric is not None else table.attrs.get("metric", "test_error")
    lower = lower_is_better if lower_is_better is not None else table.attrs.get("lower_is_better", True)
    select_on = table.attrs.get("select_on", SELECTION_METRIC)
    select_lower = table.attrs.get("select_lower_is_better", False)
    rows = [(_condition_name(row, by), row) for _, row in table.iterrows()]  # (name, row), table order
    fmt = _metric_formatter(metric)
    what = metric.replace("_", " ")
    failed_note = _failed_note([(name, row) for name, row in rows if row["n"] == 0])
    refs = [(name, row) for name, row in rows if row["verdict"] == REFERENCE]
    if not refs:
        return "No condition has a successful run." + failed_note
    ref_name, ref = refs[0]
    score = ref.get(f"{select_on}_mean", math.nan) if select_on else math.nan
    chosen = score is not None and not pd.isna(score)
    shown = _metric_formatter(str(select_on))(float(score)) if chosen else ""
    how = reference_by_text(select_on, chosen=chosen, select_lower_is_better=select_lower, score=shown)
    lead = f"{ref_name} is the reference, chosen by {how}; its mean {what} is {fmt(ref['mean'])}"
    lead += f" (n={int(ref['n'])})"
    others = [(name, row) for name, row in rows if row["verdict"] != REFERENCE and row["n"] > 0]
    if not others:
        return f"{lead}; it is the only condition with a successful run." + failed_note
    groups: dict[str, list[tuple[str, Any]]] = {v: [] for v in (NO_DIFFERENCE, BETTER, NOT_TESTED, WORSE)}
    for name, row in others:
        groups[_verdict(row, is_ref=False, lower_is_better=lower, alpha=alpha)].append((name, row))
    tested = len(others) - len(groups[NOT_TESTED])
    worse_word, better_word = ("higher", "lower") if lower else ("lower", "higher")
    against = f"Against it on {what} (paired t-test over seeds, Holm over {tested} comparison" + (
        "s)" if tested != 1 else ")"
    )
    note = _flattered_note(rows, ref_name, lower=lower, what=what, fmt=fmt)
    if len(groups[WORSE]) == len(others):
        largest = max(float(row["p_holm_vs_ref"]) for _, row in others)
        return (
            f"{lead}. {against}, every other condition has a significantly {worse_word} {what} "
            f"(largest Holm {_fmt_p(largest)}): it is the best condition." + note + failed_note
        )
    clauses = []
    by_n: dict[int, list[tuple[str, Any]]] = {}
    for name, row in groups[NO_DIFFERENCE]:
        by_n.setdefault(int(row["n_pairs"]), []).append((name, row))
    for n_pairs, named in sorted(by_n.items(), reverse=True):
        clauses.append(f"no significant difference at n = {n_pairs} from {_with_p(named, raw=True)}")
    if groups[BETTER]:
        clauses.append(f"significantly {better_word} {what} than the reference: {_with_p(groups[BETTER])}")
    if groups[WORSE]:
        clauses.append(f"significantly {worse_word} {what}: {_with_p(groups[WORSE])}")
    if groups[NOT_TESTED]:
        listed = ", ".join(
            f"{name} ({fmt(row['mean'])}, n={int(row['n'])})" for name, row in groups[NOT_TESTED]
        )
        clauses.append(f"not tested against {listed} (fewer than 2 shared seeds)")
    body = "; ".join(clauses)
    body = f"{against}: {body}" if tested else body[0].upper() + body[1:]
    return f"{lead}. {body}." + note + failed_note


# --------------------------------------------------------------------------- equivalence


def tost(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    margin: float,
    *,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Paired two one-sided t-tests (TOST): is mean(a - b) within ±``margin``?

    Element i of ``a`` and ``b`` come from the same seed; pairs with a NaN on either side are
    dropped. The two null hypotheses are mean(a - b) <= -margin (``p_lower``: t = (mean + margin) /
    se, upper tail) and mean(a - b) >= margin (``p_upper``: t = (mean - margin) / se, lower tail), on
    n - 1 degrees of freedom; ``p`` = max of the two. Equivalence is shown when p < alpha, the same
    as the (1 - 2 alpha) t-interval of the mean difference (``ci_low``, ``ci_high``, a 90% interval
    at alpha 0.05) lying inside (-margin, margin). A difference inside the margin is not enough:
    with few or noisy pairs equivalence is not shown. ``verdict`` is "equivalent within ±margin"
    or "not shown equivalent within ±margin". Fewer than 2 pairs: p NaN, not shown. When every
    difference is the same, se = 0 and each one-sided p is 0 or 1.
    """
    if not margin > 0:
        raise ValueError(f"tost needs a margin > 0, got {margin}")
    x, y = _finite_or_nan(a), _finite_or_nan(b)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"tost needs two 1-D arrays of equal length, got {x.shape} and {y.shape}")
    keep = ~(np.isnan(x) | np.isnan(y))
    diff = x[keep] - y[keep]  # (n_pairs,)
    n = len(diff)
    mean = float(diff.mean()) if n else math.nan
    result: dict[str, Any] = {
        "n_pairs": n,
        "mean_diff": mean,
        "margin": float(margin),
        "alpha": alpha,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "p_lower": math.nan,
        "p_upper": math.nan,
        "p": math.nan,
    }
    if n >= MIN_T_PAIRS:
        se = float(diff.std(ddof=1)) / math.sqrt(n)
        if se == 0.0:
            p_lower, p_upper = float(mean <= -margin), float(mean >= margin)
        else:
            p_lower = float(stats.t.sf((mean + margin) / se, df=n - 1))
            p_upper = float(stats.t.cdf((mean - margin) / se, df=n - 1))
        half = float(stats.t.ppf(1 - alpha, df=n - 1)) * se
        result.update({"ci_low": mean - half, "ci_high": mean + half, "p_lower": p_lower, "p_upper": p_upper})
        result["p"] = max(p_lower, p_upper)
    equivalent = bool(result["p"] < alpha)  # False for NaN
    result["equivalent"] = equivalent
    result["verdict"] = f"{'equivalent' if equivalent else 'not shown equivalent'} within ±{margin:g}"
    return result


# --------------------------------------------------------------------------- factorial designs


ANOVA_COLUMNS = ("factor", "sum_sq", "df", "F", "p")
RESIDUAL = "Residual"


def factorial_anova(
    runs: pd.DataFrame,
    *,
    factors: list[str],
    metric: str = "test_error",
    block: str | None = "seed",
    failed_statuses: Sequence[str] = FAILED_NAMES,
) -> pd.DataFrame:
    """Factorial ANOVA of ``metric`` over the ok runs: statsmodels ``ols`` with every factor
    categorical, and ``anova_lm`` with type II sums of squares.

    One row per term: each factor's main effect, then the interactions ("a:b", "a:b:c"), the
    ``block`` ("seed") when it is used, and "Residual"; columns factor, sum_sq, df, F, p (NaN on
    the residual row). Failed runs and runs without a finite metric are left out (a cell whose runs
    all failed is named in ``attrs["empty_cells"]``). Factors with fewer than 2 levels among the
    ok runs are left out of the model. The interactions go up to the highest order every one of
    whose cells has an ok run (``attrs["order"]``): with an empty cell the interaction of all the
    factors cannot be estimated, so it is left out rather than tested on a rank-deficient design.

    ``block`` enters as an additive categorical term when it is a column whose values are shared
    across cells (each of at least 2 values in at least 2 cells: the same seeds run in every
    condition) and a residual degree of freedom remains; ``attrs["block"]`` is the block used or
    "". ``attrs`` also records metric, factors, order, n (ok runs), failed and empty_cells.
    """
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    _check_columns(runs, [*factors, metric])
    if isinstance(failed_statuses, str):
        failed_statuses = (failed_statuses,)
    values = pd.to_numeric(runs[metric], errors="coerce").to_numpy(dtype=float)
    failed = (
        runs["status"].isin(list(failed_statuses)).to_numpy()
        if "status" in runs.columns
        else np.zeros(len(runs), bool)
    )
    ok = ~failed & np.isfinite(values)
    codes = {f"f{i}": runs[name].map(_level_text).to_numpy()[ok] for i, name in enumerate(factors)}
    data = pd.DataFrame({"y": values[ok], **codes})
    names = dict(zip(codes, factors, strict=True))  # f0 -> the factor's name
    used = [code for code in codes if data[code].nunique() >= 2]
    empty = _empty_cells(runs, factors, ok)
    attrs: dict[str, Any] = {
        "metric": metric,
        "factors": [names[c] for c in used],
        "order": 0,
        "block": "",
        "n": int(ok.sum()),
        "failed": int((~ok).sum()),
        "empty_cells": empty,
    }
    table = pd.DataFrame(columns=list(ANOVA_COLUMNS))
    if not used:
        table.attrs.update(attrs)
        return table
    order = _estimable_order(data, used)
    terms = [
        ":".join(f"C({c})" for c in combo) for k in range(1, order + 1) for combo in combinations(used, k)
    ]
    blocks = runs[block].map(_level_text).to_numpy()[ok] if block and block in runs.columns else None
    fit = None
    if blocks is not None and _block_is_crossed(blocks, data[used]):
        data["b"] = blocks
        names["b"] = str(block)
        fit = smf.ols("y ~ " + " + ".join([*terms, "C(b)"]), data=data).fit()
        if fit.df_resid >= 1:
            attrs["block"] = str(block)
        else:
            fit = None
    if fit is None:
        fit = smf.ols("y ~ " + " + ".join(terms), data=data).fit()
    attrs["order"] = order
    if fit.df_resid < 1:  # one run per cell: nothing left to estimate the error with
        table.attrs.update(attrs)
        return table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # F of a term with zero sum of squares
        raw = anova_lm(fit, typ=2)
    table = pd.DataFrame(
        {
            "factor": [_term_name(term, names) for term in raw.index],
            "sum_sq": raw["sum_sq"].to_numpy(dtype=float),
            "df": raw["df"].to_numpy(dtype=float),
            "F": raw["F"].to_numpy(dtype=float),
            "p": raw["PR(>F)"].to_numpy(dtype=float),
        }
    )
    table.attrs.update(attrs)
    return table


def anova_claim(
    table: pd.DataFrame,
    *,
    alpha: float = 0.05,
    block: str | None = None,
    empty_cells: list[str] | None = None,
    metric: str | None = None,
) -> str:
    """Sentences about a ``factorial_anova`` table: the main effects and the interactions, each with
    F(df, residual df) and p, then which are significant at ``alpha``, and the cells left out.

    Everything is read from the table's rows, so a table read back from a file (without attrs)
    gives the same sentences: the block is the row named ``block`` (default: ``attrs["block"]``, else
    "seed"), the runs are the total degrees of freedom + 1; ``empty_cells`` (cells whose every run
    failed) and ``metric`` default to the attrs.
    """
    if table.empty:
        return ""
    block = block if block is not None else (table.attrs.get("block", "seed") if table.attrs else "seed")
    empty = empty_cells if empty_cells is not None else list(table.attrs.get("empty_cells") or [])
    metric = metric or str(table.attrs.get("metric", "test_error"))
    residual = table[table["factor"] == RESIDUAL]
    df_resid = int(residual["df"].iloc[0]) if len(residual) else 0
    terms = table[(table["factor"] != RESIDUAL) & (table["factor"] != block)]
    blocked = bool(block) and bool((table["factor"] == block).any())

    def effect(row: Any) -> str:
        p = float(row["p"])
        p_text = "p = n/a" if math.isnan(p) else _fmt_p(p)
        return f"{row['factor']} F({int(row['df'])}, {df_resid}) = {float(row['F']):.2f}, {p_text}"

    mains = [r for _, r in terms.iterrows() if ":" not in r["factor"]]
    inters = [r for _, r in terms.iterrows() if ":" in r["factor"]]
    how = f"type II sums of squares, {block} as a block" if blocked else "type II sums of squares"
    runs = round(float(table["df"].sum())) + 1  # the total degrees of freedom are n - 1
    parts = [
        f"Factorial ANOVA of {metric.replace('_', ' ')} over {runs} ok runs ({how}): main effects "
        + "; ".join(map(effect, mains))
    ]
    if inters:
        parts.append("interactions " + "; ".join(map(effect, inters)))
    sentence = "; ".join(parts) + "."
    significant = [str(r["factor"]) for r in [*mains, *inters] if float(r["p"]) < alpha]
    rest = [str(r["factor"]) for r in [*mains, *inters] if not float(r["p"]) < alpha]
    if significant:
        sentence += f" Significant at {alpha:g}: {', '.join(significant)}"
        sentence += f"; no significant effect at this n of {', '.join(rest)}." if rest else "."
    else:
        sentence += f" No term is significant at {alpha:g} at this n."
    order = max((str(r["factor"]).count(":") + 1 for r in [*mains, *inters]), default=0)
    if empty:
        sentence += f" Every run failed in {'; '.join(empty)}: left out"
        sentence += (
            f", so interactions of more than {order} factors cannot be estimated and are left out too."
            if order < len(mains)
            else "."
        )
    return sentence


# --------------------------------------------------------------------------- two models on one test set


def mcnemar_exact(a_correct: np.ndarray, b_correct: np.ndarray) -> float:
    """Two-sided exact McNemar p-value: a binomial(0.5) test on the images exactly one model gets right.

    ``a_correct`` and ``b_correct`` are (N,) booleans for the same N test images; 1.0 when no image
    separates the two models.
    """
    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mcnemar_exact needs arrays of one shape, got {a.shape} and {b.shape}")
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def wilson_interval(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (e.g. test accuracy); (NaN, NaN) for n = 0."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return math.nan, math.nan
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


# --------------------------------------------------------------------------- calibration


def nll(proba: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class; probabilities are clipped at 1e-12 (log(0))."""
    p, y = _check_proba(proba, labels)
    if not len(y):
        return math.nan
    picked = np.clip(p[np.arange(len(y)), y], PROBA_FLOOR, 1.0)  # (N,)
    return float(-np.log(picked).mean())


def brier(proba: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: mean over images of the sum over classes of (p - one-hot)^2, in [0, 2]."""
    p, y = _check_proba(proba, labels)
    if not len(y):
        return math.nan
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0  # (N, C)
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def reliability_curve(proba: np.ndarray, labels: np.ndarray, *, bins: int = 15) -> pd.DataFrame:
    """Confidence (max probability) against accuracy in equal-width bins of [0, 1], for a diagram.

    Bins are right-closed, (low, high], the first also holding 0. One row per bin, empty bins
    included: bin, low, high, count, confidence (mean of the bin, NaN if empty), accuracy (ditto).
    """
    p, y = _check_proba(proba, labels)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    edges = np.linspace(0.0, 1.0, bins + 1)  # (bins + 1,)
    confidence = p.max(axis=1) if len(y) else np.zeros(0)  # (N,)
    correct = (p.argmax(axis=1) == y) if len(y) else np.zeros(0, bool)  # (N,)
    # how many inner edges lie strictly below each confidence = its (low, high] bin
    which = np.searchsorted(edges[1:-1], confidence, side="left")  # (N,)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(which, weights=correct.astype(float), minlength=bins) / count
    return pd.DataFrame(
        {
            "bin": np.arange(bins),
            "low": edges[:-1],
            "high": edges[1:],
            "count": count,
            "confidence": mean_conf,
            "accuracy": accuracy,
        }
    )


def expected_calibration_error(proba: np.ndarray, labels: np.ndarray, *, bins: int = 15) -> float:
    """ECE: sum over the bins of ``reliability_curve`` of (count / N) * |accuracy - confidence|."""
    curve = reliability_curve(proba, labels, bins=bins)
    used = curve[curve["count"] > 0]
    total = int(curve["count"].sum())
    if not total:
        return math.nan
    gaps = (used["accuracy"] - used["confidence"]).abs()
    return float((used["count"] * gaps).sum() / total)


# --------------------------------------------------------------------------- helpers


def _finite_or_nan(values: Iterable[float] | np.ndarray) -> np.ndarray:
    """Float array with +-inf turned into NaN, so 'not a number' and 'not finite' are one case."""
    if isinstance(values, np.ndarray):
        x = values.astype(float)  # a copy: the caller's array is not touched below
    else:  # through pandas so that None and pd.NA (nullable columns) become NaN too
        x = pd.Series(list(values), dtype=object).astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    x[np.isinf(x)] = np.nan
    return x


def _quiet_p(test: Any, *args: np.ndarray) -> float:
    """p-value of a scipy test, without its warnings about nearly constant differences.

    Those warnings fire when every seed shows (almost) the same difference; the p-value is then
    (almost) 0, which is the right answer for a perfectly consistent shift.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(test(*args).pvalue)


def _check_columns(runs: pd.DataFrame, needed: list[str]) -> None:
    missing = [c for c in needed if c not in runs.columns]
    if missing:
        raise ValueError(f"runs table lacks column(s) {missing}; it has {list(runs.columns)}")


def _normalize(value: Any) -> Hashable:
    """A grouping key for one cell: None/NaN become None, numpy scalars python ones, bools stay apart
    from the ints 0 and 1 (True == 1 in a dict)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, bool):
        return ("bool", value)
    return value


def _group_rows(runs: pd.DataFrame, by: list[str]) -> dict[Hashable, tuple[list[Any], list[int]]]:
    """Condition key -> (the values to show, positions of its runs), in order of first appearance.

    Done by hand rather than with groupby so that None, NaN and mixed types in a column group
    predictably and nothing gets sorted or dropped.
    """
    groups: dict[Hashable, tuple[list[Any], list[int]]] = {}
    columns = [runs[c].tolist() for c in by]  # len(by) lists of R cells
    for position, cells in enumerate(zip(*columns, strict=True)):
        key = tuple(_normalize(v) for v in cells)
        if key not in groups:
            shown = [None if _normalize(v) is None else _plain(v) for v in cells]
            groups[key] = (shown, [])
        groups[key][1].append(position)
    return groups


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _mean_per_seed(values: np.ndarray, seeds: list[Hashable], positions: list[int]) -> dict[Hashable, float]:
    """Seed -> mean metric of the given (ok) runs with that seed; runs without a seed cannot pair."""
    sums: dict[Hashable, list[float]] = {}
    for p in positions:
        if seeds[p] is not None:
            sums.setdefault(seeds[p], []).append(float(values[p]))
    return {seed: float(np.mean(v)) for seed, v in sums.items()}


def _numeric_column(runs: pd.DataFrame, column: str | None) -> np.ndarray:
    """(R,) floats of ``column``, NaN where a cell is not a finite number or the column is absent."""
    if not column or column not in runs.columns:
        return np.full(len(runs), np.nan)
    x = pd.to_numeric(runs[column], errors="coerce").to_numpy(dtype=float, copy=True)
    x[np.isinf(x)] = np.nan
    return x


def _selection_name(select_on: str | None) -> str:
    if select_on in (SELECTION_METRIC, "val_acc"):
        return "validation accuracy"
    return str(select_on).replace("_", " ")


def _reference_key(
    rows: list[tuple[Hashable, dict[str, Any]]],
    score_column: str | None,
    *,
    select_on: str | None,
    select_lower_is_better: bool,
) -> tuple[Hashable | None, str]:
    """(key of the reference condition, how it was chosen).

    The best mean selection score among the conditions with ok runs, the first seen winning a tie;
    without any finite score, the first condition with an ok run (grid order, fixed in advance).
    """
    sign = 1.0 if select_lower_is_better else -1.0
    scored = [
        (sign * row[score_column], i)
        for i, (_, row) in enumerate(rows)
        if score_column and row["n"] > 0 and not math.isnan(row[score_column])
    ]
    if scored:
        chosen = rows[min(scored)[1]][0]
        return chosen, reference_by_text(
            select_on, chosen=True, select_lower_is_better=select_lower_is_better
        )
    with_runs = [key for key, row in rows if row["n"] > 0]
    return (with_runs[0] if with_runs else None), reference_by_text(select_on, chosen=False)


def _versus_reference(
    per_seed: dict[Hashable, dict[Hashable, float]], *, key: Hashable, ref_key: Hashable | None
) -> dict[str, Any]:
    nan = math.nan
    if ref_key is None or (key != ref_key and not per_seed[key]):
        return {
            "n_pairs": 0,
            "mean_diff_vs_ref": nan,
            "p_vs_ref": nan,
            "p_wilcoxon_vs_ref": nan,
            "p_holm_vs_ref": nan,
        }
    if key == ref_key:
        return {
            "n_pairs": len(per_seed[key]),
            "mean_diff_vs_ref": 0.0,
            "p_vs_ref": nan,
            "p_wilcoxon_vs_ref": nan,
            "p_holm_vs_ref": nan,
        }
    mine, ref = per_seed[key], per_seed[ref_key]
    shared = sorted((s for s in mine if s in ref), key=repr)  # deterministic order; the tests ignore it
    test = paired_test([mine[s] for s in shared], [ref[s] for s in shared])
    return {
        "n_pairs": test["n_pairs"],
        "mean_diff_vs_ref": test["mean_diff"],
        "p_vs_ref": test["p_t"],
        "p_wilcoxon_vs_ref": test["p_wilcoxon"],
        "p_holm_vs_ref": nan,  # filled in once all conditions are known
    }


def _verdict(row: Any, *, is_ref: bool, lower_is_better: bool, alpha: float) -> str:
    if is_ref:
        return REFERENCE
    if row["n"] == 0:
        return FAILED
    if row["n_pairs"] < MIN_T_PAIRS or math.isnan(row["p_holm_vs_ref"]):
        return NOT_TESTED
    if row["p_holm_vs_ref"] >= alpha:
        return NO_DIFFERENCE
    losing = row["mean_diff_vs_ref"] > 0 if lower_is_better else row["mean_diff_vs_ref"] < 0
    return WORSE if losing else BETTER


def _reference_first(rows: list[dict[str, Any]], *, lower_is_better: bool) -> list[dict[str, Any]]:
    """The reference, then the others by mean (best direction first), then conditions with no ok run."""
    sign = 1.0 if lower_is_better else -1.0

    def rank(row: dict[str, Any]) -> tuple[int, float]:
        if row["verdict"] == REFERENCE:
            return (0, 0.0)
        if row["n"] == 0:
            return (2, 0.0)
        return (1, sign * row["mean"])

    return sorted(rows, key=rank)  # stable: equal means keep their first-seen order


def _flattered_note(rows: list[tuple[str, Any]], ref_name: str, *, lower: bool, what: str, fmt: Any) -> str:
    """' The lowest mean test error is X's (2.75%): ...' when it is not the reference's, else ''."""
    ok = [(name, row) for name, row in rows if row["n"] > 0 and not pd.isna(row["mean"])]
    if not ok:
        return ""
    pick = min if lower else max
    name, row = pick(ok, key=lambda item: float(item[1]["mean"]))  # the first of equal means
    if name == ref_name:
        return ""
    word = "lowest" if lower else "highest"
    return (
        f" The {word} mean {what} is {name}'s ({fmt(row['mean'])}), a description only: "
        f"picked by {what} itself it would be flattered by its own noise."
    )


def _level_text(value: Any) -> str:
    """A factor level as text, so that None, NaN, numbers and bools are plain categories."""
    return _fmt_value(value)


def _empty_cells(runs: pd.DataFrame, factors: list[str], ok: np.ndarray) -> list[str]:
    """'a=1, b=x' for each cell (a combination present in ``runs``) without an ok run."""
    cells: dict[tuple[str, ...], bool] = {}
    labels = [runs[f].map(_level_text).tolist() for f in factors]
    for position, cell in enumerate(zip(*labels, strict=True)):
        cells[cell] = cells.get(cell, False) or bool(ok[position])
    return [
        ", ".join(f"{f}={v}" for f, v in zip(factors, cell, strict=True))
        for cell, has in cells.items()
        if not has
    ]


def _estimable_order(data: pd.DataFrame, used: list[str]) -> int:
    """The highest k such that, for every k of the factors, every combination of their levels
    has an observation (so each interaction of k factors is estimable)."""
    for k in range(len(used), 0, -1):
        full = all(
            len(data[list(combo)].drop_duplicates()) == math.prod(data[c].nunique() for c in combo)
            for combo in combinations(used, k)
        )
        if full:
            return k
    return 1


def _block_is_crossed(blocks: np.ndarray, cells: pd.DataFrame) -> bool:
    """At least 2 block values, each seen in at least 2 cells: a block shared across conditions."""
    keys = pd.Series([tuple(r) for r in cells.itertuples(index=False)])
    frame = pd.DataFrame({"block": blocks, "cell": keys})
    per_block = frame.groupby("block")["cell"].nunique()
    return len(per_block) >= 2 and bool((per_block >= 2).all())


def _term_name(term: str, names: dict[str, str]) -> str:
    """'C(f0):C(f2)' -> 'variant:pooling'; 'Residual' stays."""
    if term == RESIDUAL:
        return RESIDUAL
    return ":".join(names[part[2:-1]] for part in term.split(":"))


def _condition_name(row: Any, by: list[str]) -> str:
    """'optimizer=adam', or '[optimizer=adam, lr=0.1]' so that lists of conditions stay readable."""
    name = ", ".join(f"{k}={_fmt_value(row[k])}" for k in by)
    return f"[{name}]" if len(by) > 1 else name


def _fmt_value(value: Any) -> str:
    if _normalize(value) is None:
        return "None"
    if isinstance(value, float | np.floating) and not isinstance(value, bool):
        return f"{value:g}"
    return str(value)


def _metric_formatter(metric: str) -> Any:
    """Errors and accuracies are fractions shown as percentages (2.94%); anything else to 4 digits."""
    if "error" in metric or "acc" in metric:
        return lambda v: f"{100 * v:.2f}%"
    return lambda v: f"{v:.4g}"


def _fmt_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _with_p(named: list[tuple[str, Any]], *, raw: bool = False) -> str:
    """'a (Holm p = 0.03), b (Holm p < 0.001)'; with ``raw`` the uncorrected p first: '(p = 0.005,
    Holm p = 0.12)', so a reader sees what the correction for many comparisons did."""

    def ps(row: Any) -> str:
        holm_p = f"Holm {_fmt_p(float(row['p_holm_vs_ref']))}"
        return f"{_fmt_p(float(row['p_vs_ref']))}, {holm_p}" if raw else holm_p

    return ", ".join(f"{name} ({ps(row)})" for name, row in named)


def _failed_note(named: list[tuple[str, Any]]) -> str:
    """' No successful run for a=1 (2 failed), a=2 (1 failed, 1 without a metric).' or ''."""
    if not named:
        return ""

    def why(row: Any) -> str:
        parts = [f"{int(row['failed'])} failed"] if row["failed"] else []
        parts += [f"{int(row['missing'])} without a metric"] if row.get("missing", 0) else []
        return ", ".join(parts) or "no runs"

    return " No successful run for " + ", ".join(f"{name} ({why(row)})" for name, row in named) + "."


def _check_proba(proba: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) float probabilities and (N,) int labels in range, or ValueError."""
    p = np.asarray(proba, dtype=float)
    y = np.asarray(labels)
    if p.ndim != 2 or y.ndim != 1 or len(p) != len(y):
        raise ValueError(f"need proba (N, C) and labels (N,), got {p.shape} and {y.shape}")
    if len(y) and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must be integers in [0, {p.shape[1]}), got {y.dtype} {y.min()}..{y.max()}")
    return p, y.astype(int)
