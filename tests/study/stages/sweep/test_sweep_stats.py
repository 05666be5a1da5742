"""The sweep stage's statistics on hand-made runs tables: the reference point is chosen on
validation and never on test, a factorial grid gets its ANOVA (a view written and read back with
the others, and stated in the report with F and p), averages of epochs and time are over
successful runs only, and no sentence calls a non-significant test a tie."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from study.common.results import write_run_info
from study.stages.sweep.plan import SweepPlan
from study.stages.sweep.report import _cost_sentences, _stopping_sentences, sweep_section
from study.stages.sweep.results import ANOVA, SUMMARY, VIEWS, SweepResults, build_views
from study.stages.sweep.tables import anova_view, factorial_factors, summarize

VERDICTS = {"reference", "better", "worse", "no significant difference", "n/a", "failed"}


def sweep_runs(
    grid: list[dict[str, object]],
    *,
    seeds: int,
    error,
    val=None,
    status=None,
    rng_seed: int = 0,
) -> pd.DataFrame:
    """One row per grid point x seed with every column a sweep writes: ``error(point, seed, rng)``
    gives the test error, ``val(point)`` the validation accuracy (default 1 - mean error),
    ``status(point, seed)`` the status (default completed)."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for i, point in enumerate(grid):
        for seed in range(seeds):
            err = float(error(point, seed, rng))
            state = status(point, seed) if status else "completed"
            failed = state in ("diverged", "collapsed")
            rows.append(
                {
                    "run": i * seeds + seed,
                    **point,
                    "seed": seed,
                    "status": state,
                    "epochs": 20,
                    "epochs_run": 3 if failed else 20 - (seed % 2) * 4,
                    "best_epoch": 2 if failed else 14,
                    "stopped_early": bool(failed or seed % 2),
                    "final_train_loss": 0.1,
                    "best_val_acc": val(point) if val else 1 - err,
                    "test_acc": 1 - err,
                    "test_error": err,
                    "train_error": 0.01,
                    "train_images": 4500,
                    "parameters": 61_706 + 100 * i,
                    "seconds": 30.0 if failed else 10.0,
                    "images_per_s": 1000.0,
                    "data_checksum": "x",
                    "node_ip": "",
                    "node_id": "",
                    "config": json.dumps({"seed": seed}),
                }
            )
    return pd.DataFrame(rows)


def product(**levels: list[object]) -> list[dict[str, object]]:
    names = list(levels)
    grid = [{}]
    for name in names:
        grid = [{**point, name: value} for point in grid for value in levels[name]]
    return grid


def factorial(**kwargs) -> pd.DataFrame:
    """variant x pooling, 2 x 3, 6 seeds: pooling max lowers test error by 1 point, variant does
    nothing, no interaction; a seed offset and small noise."""
    offsets = np.random.default_rng(1).normal(0, 0.002, 6)

    def error(point, seed, rng):
        return 0.04 - (0.01 if point["pooling"] == "max" else 0.0) + offsets[seed] + rng.normal(0, 0.002)

    return sweep_runs(
        product(variant=["classic", "modern"], pooling=["avg", "max", "sub"]), seeds=6, error=error, **kwargs
    )


def plan(swept: list[str], kind: str = "sweep") -> SweepPlan:
    return SweepPlan(name="t", kind=kind, planned=(), swept=tuple(swept))


def results_of(runs: pd.DataFrame, swept: list[str], *, kind: str = "sweep") -> SweepResults:
    epochs = pd.DataFrame({"run": runs["run"], "epoch": 1, "test_acc": runs["test_acc"]})
    run = {"kind": kind, "experiment": "t", "description": "synthetic", "file": {"kind": kind}}
    return SweepResults(
        runs=runs,
        epochs=epochs,
        summary=summarize(runs, swept),
        views=build_views(runs, plan(swept, kind)),
        run=run,
    )


# ------------------------------------------------------------------ the reference


def test_the_reference_point_is_chosen_by_validation_not_by_test_error():
    # lr 0.1 tests best (2%) but validates worst; lr 0.01 validates best: it is the reference
    means = {0.1: 0.020, 0.01: 0.030, 0.001: 0.050}
    vals = {0.1: 0.95, 0.01: 0.99, 0.001: 0.97}
    runs = sweep_runs(
        [{"lr": lr} for lr in means],
        seeds=5,
        error=lambda p, s, rng: means[p["lr"]] + 0.001 * s,
        val=lambda p: vals[p["lr"]],
    )
    summary = summarize(runs, ["lr"]).set_index("lr")
    assert summary["reference"].to_dict() == {0.01: True, 0.1: False, 0.001: False}
    assert summary.loc[0.01, "verdict"] == "reference"
    assert summary.loc[0.1, "verdict"] == "better" and summary.loc[0.001, "verdict"] == "worse"
    assert summary.loc[0.1, "mean_diff_vs_ref"] == pytest.approx(-0.01)
    assert summary["best_val_acc_mean"].to_dict() == pytest.approx(vals)
    assert set(summary["verdict"]) <= VERDICTS
    results = results_of(runs, ["lr"])
    text = "\n".join(sweep_section(results, root=_Root()))
    assert "lr=0.01 is the reference, chosen by validation accuracy" in text
    assert "reference: chosen by validation accuracy" in text  # the tables' note says it too
    assert "The lowest mean test error is lr=0.1's" in text


def test_old_runs_with_val_acc_still_choose_the_reference_on_validation(tmp_path):
    # a sweep written before best_val_acc: runs call it val_acc, the summary has "best"/"tied"
    means = {"a": 0.020, "b": 0.030}
    runs = sweep_runs(
        [{"opt": k} for k in means],
        seeds=4,
        error=lambda p, s, rng: means[p["opt"]] + 0.002 * s,
        val=lambda p: {"a": 0.95, "b": 0.99}[p["opt"]],
    ).rename(columns={"best_val_acc": "val_acc"})
    legacy = pd.DataFrame(
        {"opt": ["a", "b"], "n": [4, 4], "test_error_mean": [0.023, 0.033], "verdict": ["best", "tied"]}
    )
    runs.to_parquet(tmp_path / "runs.parquet")
    legacy.to_parquet(tmp_path / f"{SUMMARY}.parquet")
    pd.DataFrame({"run": [0], "epoch": [1], "test_acc": [0.9]}).to_parquet(tmp_path / "epochs.parquet")
    write_run_info(tmp_path, {"kind": "sweep", "file": {"kind": "sweep"}})
    summary = SweepResults.read(tmp_path).summary.set_index("opt")
    assert summary.loc["b", "verdict"] == "reference" and bool(summary.loc["b", "reference"])
    assert summary.loc["a", "verdict"] in ("better", "no significant difference")
    assert "tied" not in set(summary["verdict"]) and "best" not in set(summary["verdict"])


def test_report_sentences_never_say_tied():
    noise = {"a": [0.030, 0.032, 0.028, 0.031, 0.029], "b": [0.031, 0.031, 0.030, 0.029, 0.030]}
    runs = sweep_runs(
        [{"opt": k} for k in noise], seeds=5, error=lambda p, s, rng: noise[p["opt"]][s], val=lambda p: 0.97
    )
    text = "\n".join(sweep_section(results_of(runs, ["opt"]), root=_Root()))
    assert "no significant difference at n = 5 from opt=b (p = " in text
    assert "tied" not in text


# ------------------------------------------------------------------ factorial designs


def test_a_full_product_with_two_seeds_is_factorial_and_others_are_not():
    runs = factorial()
    assert factorial_factors(runs, ["variant", "pooling"]) == ["variant", "pooling"]
    # a field with one value is no factor; one factor left is no factorial design
    assert factorial_factors(runs.assign(batch=32), ["variant", "pooling", "batch"]) == ["variant", "pooling"]
    assert factorial_factors(runs, ["pooling"]) == []
    # the union of two grids that is not their product (optimizers at their own lrs)
    union = runs[~((runs["variant"] == "modern") & (runs["pooling"] == "sub"))]
    assert factorial_factors(union, ["variant", "pooling"]) == []
    assert factorial_factors(runs[runs["seed"] == 0], ["variant", "pooling"]) == []  # one seed per cell
    # failed runs do not change the design
    failed = runs.assign(status=np.where(runs["pooling"] == "sub", "collapsed", "completed"))
    assert factorial_factors(failed, ["variant", "pooling"]) == ["variant", "pooling"]
    assert ANOVA not in build_views(runs, plan(["variant", "pooling"], kind="data-fraction"))


def test_factorial_anova_finds_the_known_main_effect_and_no_interaction():
    table = anova_view(factorial(), ["variant", "pooling"]).set_index("factor")
    assert list(table.columns) == ["sum_sq", "df", "F", "p"]
    assert list(table.index) == ["variant", "pooling", "seed", "variant:pooling", "Residual"]
    assert table.loc["pooling", "p"] < 1e-6  # the effect put in
    assert table.loc["variant", "p"] > 0.05 and table.loc["variant:pooling", "p"] > 0.05  # none put in
    assert table.loc["Residual", "df"] == 36 - 1 - 1 - 2 - 2 - 5


def test_the_anova_view_round_trips_and_the_report_states_it(tmp_path):
    assert ANOVA in VIEWS
    results = results_of(factorial(), ["variant", "pooling"])
    assert results.anova is not None
    results.write_tables(tmp_path)
    write_run_info(tmp_path, results.run)
    for suffix in (".parquet", ".csv", ".md"):
        assert (tmp_path / f"{ANOVA}{suffix}").is_file()
    again = SweepResults.read(tmp_path)
    pd.testing.assert_frame_equal(again.anova, results.anova, check_like=False)
    pd.testing.assert_frame_equal(again.summary, results.summary)
    table = results.anova.set_index("factor")
    text = "\n".join(sweep_section(again, root=tmp_path))
    pooling = f"pooling F(2, {int(table.loc['Residual', 'df'])}) = {table.loc['pooling', 'F']:.2f}, p < 0.001"
    assert "Factorial ANOVA of test error over 36 ok runs (type II sums of squares, seed as a block)" in text
    assert "main effects variant F(1, 25) = " in text and pooling in text
    assert "interactions variant:pooling F(2, 25) = " in text
    assert (
        "Significant at 0.05: pooling; no significant effect at this n of variant, variant:pooling." in text
    )
    assert "### Factorial ANOVA of test error (ok runs, type II sums of squares, seed as a block)" in text
    # a grid that is not factorial has no ANOVA and no such sentence
    single = results_of(factorial()[lambda r: r["variant"] == "classic"], ["variant", "pooling"])
    assert single.anova is None
    assert "Factorial ANOVA" not in "\n".join(sweep_section(single, root=tmp_path))


def test_anova_names_a_cell_whose_every_run_failed():
    runs = factorial(
        status=lambda p, s: "collapsed" if (p["variant"], p["pooling"]) == ("classic", "sub") else "completed"
    )
    results = results_of(runs, ["variant", "pooling"])
    assert "variant:pooling" not in set(results.anova["factor"])
    text = "\n".join(sweep_section(results, root=_Root()))
    assert "Factorial ANOVA of test error over 30 ok runs" in text
    assert (
        "Every run failed in variant=classic, pooling=sub: left out, so interactions of more than 1" in text
    )


# ------------------------------------------------------------------ averages over successful runs


def test_stopping_averages_are_over_successful_runs_only():
    # 2 points x 4 seeds; point b diverges in every seed after 3 epochs. Ok runs: epochs 20, 16,
    # 20, 16 (mean 18), best epoch 14; counting the failed ones would give (72 + 12) / 8 = 10.5
    runs = sweep_runs(
        [{"opt": "a"}, {"opt": "b"}],
        seeds=4,
        error=lambda p, s, rng: 0.03,
        status=lambda p, s: "diverged" if p["opt"] == "b" else "completed",
    )
    [line] = _stopping_sentences(runs)
    assert line == (
        "2 of 4 successful runs stopped early when validation accuracy stopped improving; successful "
        "runs lasted 18.0 epochs on average and kept their best validation epoch (14.0 on average); "
        "the 4 failed run(s) are left out of these averages."
    )
    assert "10.5" not in line


def test_cost_sentences_say_their_means_are_of_successful_runs():
    runs = sweep_runs(
        [{"model": "a"}, {"model": "b"}],
        seeds=4,
        error=lambda p, s, rng: 0.03 + 0.001 * s,
        status=lambda p, s: "collapsed" if (p["model"], s) == ("b", 0) else "completed",
    )
    summary = summarize(runs, ["model"])
    [line] = _cost_sentences(summary, ["model"])
    assert line.startswith("Size and cost (wall time and epochs: means of successful runs only, failed runs")
    # b's collapsed run took 30 s and 3 epochs: left out, its 3 ok runs took 10 s and 17.3 epochs
    assert "model=b: 61,806 parameters, 10 s per run (17.3 epochs) over 3 successful run(s)" in line


class _Root:
    """A stand-in for the report's folder: no figures in it."""

    name = "t"

    def glob(self, pattern: str) -> list:
        return []


def test_earlier_claims_are_set_beside_this_runs_verdicts():
    """An earlier 'best' that is now the reference or not significantly worse survives; one now
    significantly worse does not; 'tied' survives as 'no significant difference'."""
    from types import SimpleNamespace

    from study.stages.sweep.report import earlier_claims

    earlier = pd.DataFrame(
        {"optimizer": ["adam", "sgd", "rmsprop"], "n": [5, 5, 5], "verdict": ["best", "tied", "worse"]}
    )
    now = pd.DataFrame(
        {
            "optimizer": ["adam", "sgd", "rmsprop"],
            "n": [10, 10, 10],
            "verdict": ["worse", "no significant difference", "reference"],
        }
    )
    results = SimpleNamespace(summary=now, selected=None, compared_at=None, swept=["optimizer"])
    table = earlier_claims({"summary": earlier}, results).set_index("condition")
    assert table.loc["optimizer=adam", "survived"] == "no"  # the earlier best is now worse
    assert table.loc["optimizer=sgd", "survived"] == "yes"
    rmsprop = table.loc["optimizer=rmsprop", ["earlier", "now", "survived"]].tolist()
    assert rmsprop == ["worse", "reference", "no"]


def test_an_earlier_run_of_another_experiment_is_one_clear_error():
    from types import SimpleNamespace

    from lenet_core.errors import StudyError
    from study.stages.sweep.report import earlier_claims

    other = pd.DataFrame({"lr": [0.001], "n": [5], "verdict": ["best"]})
    now = pd.DataFrame({"epochs": [20], "n": [10], "verdict": ["reference"]})
    results = SimpleNamespace(summary=now, selected=None, compared_at=None, swept=["epochs"])
    with pytest.raises(StudyError, match="no epochs column"):
        earlier_claims({"summary": other}, results)
