"""Statistics behind every comparison the study prints. Pure numpy/scipy/pandas.

Three kinds of question:

* conditions over seeds: ``describe`` one condition, ``paired_test`` two conditions over matching
  seeds, ``holm`` for many comparisons, and ``compare_conditions`` / ``best_claim`` that put them
  together into a table and a sentence that never claims a winner the data do not support;
* two models on one test set: ``mcnemar_exact`` and ``wilson_interval``;
* calibration of (N, C) class probabilities against (N,) integer labels: ``nll``, ``brier``,
  ``expected_calibration_error`` and ``reliability_curve``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from lenet_core.status import failed_names

FAILED_NAMES = failed_names()  # runs that never count as ok: diverged, collapsed
MIN_WILCOXON_PAIRS = 6  # with 5 pairs the smallest two-sided exact p is 2/32 = 0.0625: it can never reject
MIN_T_PAIRS = 2  # a paired t-test needs a standard deviation of the differences
PROBA_FLOOR = 1e-12  # log(0) guard for the negative log-likelihood


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


# the columns after the `by` ones, in table order
_TABLE_COLUMNS = (
    "n",
    "failed",
    "missing",
    "mean",
    "std",
    "ci95_low",
    "ci95_high",
    "n_pairs",
    "mean_diff_vs_best",
    "p_vs_best",
    "p_wilcoxon_vs_best",
    "p_holm_vs_best",
    "verdict",
)


def compare_conditions(
    runs: pd.DataFrame,
    *,
    by: list[str],
    metric: str = "test_error",
    pair_on: str = "seed",
    lower_is_better: bool = True,
    failed_statuses: Sequence[str] = FAILED_NAMES,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """One row per condition (a distinct combination of the ``by`` values), best condition first.

    A run counts ("ok") unless its ``status`` is in ``failed_statuses`` (counted in ``failed``) or its
    metric is not finite (counted in ``missing``); only ok runs enter n, mean, std, the interval and
    the choice of the best condition (lowest mean, or highest when ``lower_is_better`` is False).
    Without a ``status`` column every run with a finite metric is ok.

    Every other condition is compared with the best one over the ``pair_on`` values (seeds) both have
    ok runs for (several ok runs of one condition with the same seed are averaged first):
    ``n_pairs``, ``mean_diff_vs_best`` = mean over those seeds of (condition - best), ``p_vs_best``
    (paired t), ``p_wilcoxon_vs_best`` (from 6 pairs) and ``p_holm_vs_best`` (Holm over the t-test p of
    the non-best conditions that have one). ``verdict``: "best"; "worse" (Holm p < alpha, in the
    losing direction); "tied" (Holm p >= alpha); "better" (Holm p < alpha but winning on the shared
    seeds, which can happen only when the best's mean includes seeds the other lacks); "n/a" (fewer
    than 2 shared seeds); "failed" (no ok run). The best row has mean_diff 0, NaN p-values and
    n_pairs = its number of distinct seeds. ``table.attrs`` records by, metric, lower_is_better, alpha.
    """
    _check_columns(runs, [*by, metric, pair_on])
    if not by:
        raise ValueError("compare_conditions needs at least one column in `by`")
    if isinstance(failed_statuses, str):  # "diverged" alone must not mean its letters
        failed_statuses = (failed_statuses,)
    values = pd.to_numeric(runs[metric], errors="coerce").to_numpy(dtype=float)  # (R,)
    failed = (
        runs["status"].isin(list(failed_statuses)).to_numpy()
        if "status" in runs.columns
        else np.zeros(len(runs), bool)
    )
    ok = ~failed & np.isfinite(values)
    conditions = _group_rows(runs, by)  # {key: (display values, row positions)}, first-seen order
    seeds = [_normalize(v) for v in runs[pair_on].tolist()]

    rows = []
    per_seed: dict[Hashable, dict[Hashable, float]] = {}
    for key, (shown, positions) in conditions.items():
        mine = [p for p in positions if ok[p]]
        row: dict[str, Any] = dict(zip(by, shown, strict=True))
        row["n"] = len(mine)
        row["failed"] = int(failed[positions].sum())
        row["missing"] = len(positions) - len(mine) - row["failed"]
        row.update({k: v for k, v in describe(values[mine]).items() if k != "n"})
        per_seed[key] = _mean_per_seed(values, seeds, mine)
        rows.append((key, row))

    best_key = _best_key(rows, lower_is_better=lower_is_better)
    for key, row in rows:
        row.update(_versus_best(per_seed, key=key, best_key=best_key))
    non_best = [row for key, row in rows if key != best_key]
    for row, adjusted in zip(non_best, holm([row["p_vs_best"] for row in non_best]), strict=True):
        row["p_holm_vs_best"] = float(adjusted)
    for key, row in rows:
        row["verdict"] = _verdict(row, is_best=key == best_key, lower_is_better=lower_is_better, alpha=alpha)

    ordered = _best_first([row for _, row in rows], lower_is_better=lower_is_better)
    table = pd.DataFrame(ordered, columns=[*by, *_TABLE_COLUMNS])
    table.attrs.update({"by": list(by), "metric": metric, "lower_is_better": lower_is_better, "alpha": alpha})
    return table


def best_claim(
    table: pd.DataFrame,
    *,
    alpha: float = 0.05,
    metric: str | None = None,
    lower_is_better: bool | None = None,
) -> str:
    """One or two sentences for a report about a ``compare_conditions`` table.

    The best condition is called the best only when every other condition is significantly worse
    after Holm correction; otherwise the sentence names the conditions tied with it (with their Holm
    p), those that could not be compared, and those with no successful run. ``alpha`` re-judges the
    Holm p-values, so it may differ from the one the table was built with. ``metric`` and
    ``lower_is_better`` default to what ``compare_conditions`` recorded in ``table.attrs``.
    """
    by = table.attrs.get("by") or list(table.columns[: list(table.columns).index("n")])
    metric = metric if metric is not None else table.attrs.get("metric", "test_error")
    lower = lower_is_better if lower_is_better is not None else table.attrs.get("lower_is_better", True)
    rows = [(_condition_name(row, by), row) for _, row in table.iterrows()]  # (name, row), table order
    fmt = _metric_formatter(metric)
    failed_note = _failed_note([(name, row) for name, row in rows if row["n"] == 0])
    best = [(name, row) for name, row in rows if row["verdict"] == "best"]
    if not best:
        return "No condition has a successful run." + failed_note
    top_name, top = best[0]
    lead = (
        f"{top_name} has the {'lowest' if lower else 'highest'} mean {metric.replace('_', ' ')} "
        f"({fmt(top['mean'])}, n={int(top['n'])})"
    )
    others = [(name, row) for name, row in rows if row["verdict"] != "best" and row["n"] > 0]
    if not others:
        return f"{lead}; it is the only condition with a successful run." + failed_note
    groups: dict[str, list[tuple[str, Any]]] = {"worse": [], "tied": [], "better": [], "n/a": []}
    for name, row in others:
        groups[_verdict(row, is_best=False, lower_is_better=lower, alpha=alpha)].append((name, row))
    if len(groups["worse"]) == len(others):
        largest = max(float(row["p_holm_vs_best"]) for _, row in others)
        return (
            f"{lead} and is significantly better than every other condition "
            f"(paired t-test over seeds, largest Holm {_fmt_p(largest)})." + failed_note
        )
    clauses = []
    if groups["tied"]:
        clauses.append(f"it is statistically tied with {_with_p(groups['tied'])}")
    if groups["better"]:
        clauses.append(f"on the seeds both have, {_with_p(groups['better'])} did significantly better")
    if groups["n/a"]:
        listed = ", ".join(f"{name} ({fmt(row['mean'])}, n={int(row['n'])})" for name, row in groups["n/a"])
        clauses.append(f"it could not be tested against {listed} (fewer than 2 shared seeds)")
    if groups["worse"]:
        clauses.append(f"it is significantly better than {_with_p(groups['worse'])}")
    return f"{lead}, but " + "; ".join(clauses) + "." + failed_note


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


def _best_key(rows: list[tuple[Hashable, dict[str, Any]]], *, lower_is_better: bool) -> Hashable | None:
    """Key of the condition with the best mean among those with ok runs; first seen wins a tie."""
    scored = [(row["mean"] if lower_is_better else -row["mean"], i) for i, (_, row) in enumerate(rows)]
    scored = [(s, i) for s, i in scored if not math.isnan(s)]
    return rows[min(scored)[1]][0] if scored else None


def _versus_best(
    per_seed: dict[Hashable, dict[Hashable, float]], *, key: Hashable, best_key: Hashable | None
) -> dict[str, Any]:
    nan = math.nan
    if best_key is None or (key != best_key and not per_seed[key]):
        return {
            "n_pairs": 0,
            "mean_diff_vs_best": nan,
            "p_vs_best": nan,
            "p_wilcoxon_vs_best": nan,
            "p_holm_vs_best": nan,
        }
    if key == best_key:
        return {
            "n_pairs": len(per_seed[key]),
            "mean_diff_vs_best": 0.0,
            "p_vs_best": nan,
            "p_wilcoxon_vs_best": nan,
            "p_holm_vs_best": nan,
        }
    mine, best = per_seed[key], per_seed[best_key]
    shared = sorted((s for s in mine if s in best), key=repr)  # deterministic order; the tests ignore it
    test = paired_test([mine[s] for s in shared], [best[s] for s in shared])
    return {
        "n_pairs": test["n_pairs"],
        "mean_diff_vs_best": test["mean_diff"],
        "p_vs_best": test["p_t"],
        "p_wilcoxon_vs_best": test["p_wilcoxon"],
        "p_holm_vs_best": nan,  # filled in once all conditions are known
    }


def _verdict(row: Any, *, is_best: bool, lower_is_better: bool, alpha: float) -> str:
    if is_best:
        return "best"
    if row["n"] == 0:
        return "failed"
    if row["n_pairs"] < MIN_T_PAIRS or math.isnan(row["p_holm_vs_best"]):
        return "n/a"
    if row["p_holm_vs_best"] >= alpha:
        return "tied"
    losing = row["mean_diff_vs_best"] > 0 if lower_is_better else row["mean_diff_vs_best"] < 0
    return "worse" if losing else "better"


def _best_first(rows: list[dict[str, Any]], *, lower_is_better: bool) -> list[dict[str, Any]]:
    """Best, then the others by mean (best direction first), then conditions with no ok run."""
    sign = 1.0 if lower_is_better else -1.0

    def rank(row: dict[str, Any]) -> tuple[int, float]:
        if row["verdict"] == "best":
            return (0, 0.0)
        if row["n"] == 0:
            return (2, 0.0)
        return (1, sign * row["mean"])

    return sorted(rows, key=rank)  # stable: equal means keep their first-seen order


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


def _with_p(named: list[tuple[str, Any]]) -> str:
    return ", ".join(f"{name} (Holm {_fmt_p(float(row['p_holm_vs_best']))})" for name, row in named)


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
