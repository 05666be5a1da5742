"""study.common.stats against cases worked out by hand (closed forms and tabulated values, not scipy)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from study.common.stats import (
    anova_claim,
    best_claim,
    brier,
    compare_conditions,
    describe,
    expected_calibration_error,
    factorial_anova,
    holm,
    mcnemar_exact,
    nll,
    paired_test,
    reliability_curve,
    tost,
    wilson_interval,
)


def t2_two_sided_p(t: float) -> float:
    """Two-sided p of Student t with 2 degrees of freedom, closed form: F(t) = 1/2 + t / (2 sqrt(2 + t^2))."""
    return 2 * (0.5 - abs(t) / (2 * math.sqrt(2 + t * t)))


def runs_table(
    values: dict[str, list[float]], *, column: str = "optimizer", seeds=None, val=None
) -> pd.DataFrame:
    """Completed runs: condition name -> test errors for seeds 0, 1, ... (or the given seeds), and
    the validation accuracy (``best_val_acc``) of each run: ``val[name]``, else 1 - test error, so
    that validation and test agree unless a test says otherwise."""
    rows = [
        {
            column: name,
            "seed": (seeds or {}).get(name, range(len(errs)))[i],
            "test_error": e,
            "best_val_acc": (val or {}).get(name, [1 - x for x in errs])[i],
            "status": "ok",
        }
        for name, errs in values.items()
        for i, e in enumerate(errs)
    ]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- describe, paired_test, holm


def test_describe_t_interval_matches_hand_computation():
    # mean 3, std sqrt(10/4), t(0.975, df=4) = 2.776445 from a t table -> half = 2.776445 * 1.581139 / sqrt 5
    d = describe([1, 2, 3, 4, 5])
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
    assert d["n"] == 5 and d["mean"] == pytest.approx(3.0)
    assert d["std"] == pytest.approx(math.sqrt(2.5))
    assert (d["ci95_low"], d["ci95_high"]) == pytest.approx((3 - half, 3 + half), abs=1e-6)
    assert (d["ci95_low"], d["ci95_high"]) == pytest.approx((1.036757, 4.963243), abs=1e-6)


def test_describe_small_samples_and_nan():
    one = describe([0.03])
    assert one["n"] == 1 and one["mean"] == pytest.approx(0.03)
    assert math.isnan(one["std"]) and math.isnan(one["ci95_low"]) and math.isnan(one["ci95_high"])
    none = describe([])
    assert none["n"] == 0 and math.isnan(none["mean"])
    # NaN is ignored, not propagated: [1, 3] -> mean 2, std sqrt 2
    d = describe([1.0, float("nan"), 3.0])
    assert d["n"] == 2 and d["mean"] == 2.0 and d["std"] == pytest.approx(math.sqrt(2))


def test_paired_test_t_p_against_closed_form_and_no_wilcoxon_below_six_pairs():
    # differences a - b = [1, 2, 3]: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3 on 2 df -> p = 0.074180
    r = paired_test([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert r["n_pairs"] == 3 and r["mean_diff"] == pytest.approx(2.0)
    assert r["p_t"] == pytest.approx(t2_two_sided_p(2 * math.sqrt(3)), abs=1e-9)
    assert r["p_t"] == pytest.approx(0.074180, abs=1e-6)
    assert math.isnan(r["p_wilcoxon"])
    five = paired_test([1.0, 2, 3, 4, 5], [0.0] * 5)
    assert math.isnan(five["p_wilcoxon"]) and not math.isnan(five["p_t"])


def test_wilcoxon_from_six_pairs_exact_values():
    # all six differences positive: only 1 of 2^6 sign patterns is as extreme on each side -> 2/64
    assert paired_test([1.0, 2, 3, 4, 5, 6], [0.0] * 6)["p_wilcoxon"] == pytest.approx(2 / 64)
    # differences 1..5 and -6: W- = 6; 14 of the 64 sign patterns have a rank sum <= 6 -> 2 * 14 / 64
    r = paired_test([1.0, 2, 3, 4, 5, -6], [0.0] * 6)
    assert r["p_wilcoxon"] == pytest.approx(28 / 64)


def test_paired_test_all_zero_differences_give_one_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        six = paired_test([0.03] * 6, [0.03] * 6)
        three = paired_test([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    assert six["p_t"] == 1.0 and six["p_wilcoxon"] == 1.0 and six["mean_diff"] == 0.0
    assert three["p_t"] == 1.0 and math.isnan(three["p_wilcoxon"])


def test_paired_test_drops_pairs_with_nan_and_needs_two():
    r = paired_test([1.0, float("nan"), 3.0], [0.0, 0.0, float("nan")])
    assert r["n_pairs"] == 1 and r["mean_diff"] == 1.0 and math.isnan(r["p_t"])
    with pytest.raises(ValueError):
        paired_test([1.0, 2.0], [1.0])


def test_holm_hand_examples():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, 2*0.03, max(1*0.04, 0.06) -> back in the given order
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.01, float("nan"), 0.04, 0.03])  # NaN neither counts in m nor changes
    assert adjusted[[0, 2, 3]] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(adjusted[1])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped
    assert holm([0.02, 0.025]) == pytest.approx([0.04, 0.04])  # 2*0.02 = 0.04 > 1*0.025: monotone
    assert len(holm([])) == 0


# --------------------------------------------------------------------------- compare_conditions, best_claim


def test_no_significant_difference_is_not_called_a_tie_and_names_no_winner():
    # rmsprop - adam over seeds 0..2 = [0.01, 0.02, 0.03]: p = 0.074 (closed form) -> not significant
    runs = runs_table({"adam": [0.10, 0.20, 0.30], "rmsprop": [0.11, 0.22, 0.33]})
    table = compare_conditions(runs, by=["optimizer"])
    assert list(table["optimizer"]) == ["adam", "rmsprop"]
    assert list(table["verdict"]) == ["reference", "no significant difference"]
    assert list(table["reference"]) == [True, False]
    other = table.iloc[1]
    assert other["n_pairs"] == 3 and other["mean_diff_vs_ref"] == pytest.approx(0.02)
    assert other["p_vs_ref"] == pytest.approx(t2_two_sided_p(2 * math.sqrt(3)), abs=1e-6)
    assert other["p_holm_vs_ref"] == pytest.approx(other["p_vs_ref"])  # a family of one
    assert best_claim(table) == (
        "optimizer=adam is the reference, chosen by validation accuracy (the highest mean best_val_acc "
        "of ok runs, 80.00%); its mean test error is 20.00% (n=3). Against it on test error (paired "
        "t-test over seeds, Holm over 1 comparison): no significant difference at n = 3 from "
        "optimizer=rmsprop (p = 0.074, Holm p = 0.074)."
    )
    assert "tied" not in best_claim(table)


def test_noisy_overlapping_conditions_show_no_significant_difference():
    adam = [0.030, 0.032, 0.028, 0.031, 0.029]
    # differences +0.1, -0.1, +0.2, -0.2, +0.1 points: t = 0.27 on 4 df, far from significant
    rmsprop = [a + d for a, d in zip(adam, [0.001, -0.001, 0.002, -0.002, 0.001], strict=True)]
    table = compare_conditions(runs_table({"rmsprop": rmsprop, "adam": adam}), by=["optimizer"])
    assert list(table["verdict"]) == ["reference", "no significant difference"]
    assert table["optimizer"].iloc[0] == "adam" and table["p_vs_ref"].iloc[1] > 0.5
    claim = best_claim(table)
    assert "no significant difference at n = 5 from optimizer=rmsprop (p = 0.8" in claim
    assert "best condition" not in claim and "tied" not in claim


def test_clear_gap_is_worse_and_best_claim_names_the_best():
    adam = [0.020, 0.021, 0.019, 0.022, 0.018]
    sgd = [a + d for a, d in zip(adam, [0.010, 0.011, 0.009, 0.0105, 0.0095], strict=True)]
    table = compare_conditions(runs_table({"sgd": sgd, "adam": adam}), by=["optimizer"])
    assert list(table["optimizer"]) == ["adam", "sgd"]
    assert list(table["verdict"]) == ["reference", "worse"]
    # differences: mean 0.01, sd 0.00079 -> t = 28.3 on 4 df
    assert table["mean_diff_vs_ref"].iloc[1] == pytest.approx(0.01)
    assert table["p_vs_ref"].iloc[1] < 1e-5
    claim = best_claim(table)
    assert claim.startswith("optimizer=adam is the reference, chosen by validation accuracy")
    assert claim.endswith(
        "Against it on test error (paired t-test over seeds, Holm over 1 comparison), every other "
        "condition has a significantly higher test error (largest Holm p < 0.001): it is the best condition."
    )


def test_reference_is_chosen_on_validation_never_on_test():
    # b has the lowest test error but the lowest validation accuracy; a validates best. The old
    # code took b (lowest test mean) as "best"; the reference must be a, and b is tested against it.
    a_err, b_err = [0.030, 0.031, 0.029, 0.032], [0.020, 0.021, 0.019, 0.022]
    runs = runs_table(
        {"a": a_err, "b": b_err, "c": [0.040, 0.041, 0.039, 0.042]},
        val={"a": [0.99] * 4, "b": [0.95] * 4, "c": [0.97] * 4},
    )
    table = compare_conditions(runs, by=["optimizer"])
    assert table["optimizer"].tolist() == ["a", "b", "c"]  # the reference first, then by test error
    assert table["reference"].tolist() == [True, False, False]
    assert table["best_val_acc_mean"].tolist() == pytest.approx([0.99, 0.95, 0.97])
    by_name = table.set_index("optimizer")
    assert by_name.loc["b", "mean_diff_vs_ref"] == pytest.approx(-0.01)
    assert by_name.loc["b", "verdict"] == "better" and by_name.loc["c", "verdict"] == "worse"
    assert table.attrs["reference_by"] == "validation accuracy (the highest mean best_val_acc of ok runs)"
    assert table.attrs["comparisons"] == 2
    claim = best_claim(table)
    assert claim.startswith("optimizer=a is the reference, chosen by validation accuracy (the highest mean")
    assert "significantly lower test error than the reference: optimizer=b (Holm p" in claim
    assert "significantly higher test error: optimizer=c (Holm p" in claim
    assert "The lowest mean test error is optimizer=b's (2.05%), a description only" in claim


def test_a_failed_or_untested_run_never_chooses_the_reference():
    # sgd's diverged run validated at 0.999 and its errored run has no test error: neither counts
    runs = runs_table(
        {"sgd": [0.05, 0.06], "adam": [0.04, 0.05]}, val={"sgd": [0.96] * 2, "adam": [0.97] * 2}
    )
    extra = pd.DataFrame(
        [
            {"optimizer": "sgd", "seed": 2, "test_error": 0.0, "best_val_acc": 0.999, "status": "diverged"},
            {"optimizer": "sgd", "seed": 3, "test_error": np.nan, "best_val_acc": 0.999, "status": "ok"},
        ]
    )
    table = compare_conditions(pd.concat([runs, extra], ignore_index=True), by=["optimizer"])
    assert table.set_index("optimizer")["best_val_acc_mean"].to_dict() == pytest.approx(
        {"sgd": 0.96, "adam": 0.97}
    )
    assert table["optimizer"].iloc[0] == "adam" and table["verdict"].iloc[0] == "reference"


def test_without_a_validation_metric_the_reference_is_the_first_condition_in_grid_order():
    # old tables without best_val_acc keep working: the reference is fixed before any result
    runs = runs_table({"a": [0.05, 0.06, 0.07], "b": [0.01, 0.02, 0.03]}).drop(columns="best_val_acc")
    table = compare_conditions(runs, by=["optimizer"])
    assert table["optimizer"].tolist() == ["a", "b"] and table["verdict"].tolist()[0] == "reference"
    assert table["best_val_acc_mean"].isna().all()
    assert table.attrs["reference_by"].startswith("grid order (no best_val_acc to choose by")
    assert best_claim(table).startswith("optimizer=a is the reference, chosen by grid order (no best_val_acc")
    named = compare_conditions(runs.assign(val_acc=0.9), by=["optimizer"], select_on="val_acc")
    assert "val_acc_mean" in named.columns and named.attrs["reference_by"].startswith("validation accuracy")
    assert "reference" in compare_conditions(runs, by=["optimizer"], select_on=None).columns


def test_holm_across_conditions_in_the_table():
    # vs adam: b differs by [1, 2, 3] (t = 2 sqrt 3), c by [1, 1, 4] (mean 2, sd sqrt 3, t = 2), 2 df each
    base = [0.10, 0.20, 0.30]
    runs = runs_table(
        {
            "b": [x + d for x, d in zip(base, [0.01, 0.02, 0.03], strict=True)],
            "adam": base,
            "c": [x + d for x, d in zip(base, [0.01, 0.01, 0.04], strict=True)],
        }
    )
    table = compare_conditions(runs, by=["optimizer"]).set_index("optimizer")
    p_b, p_c = t2_two_sided_p(2 * math.sqrt(3)), t2_two_sided_p(2.0)  # 0.074180, 0.183503
    assert table.loc["b", "p_vs_ref"] == pytest.approx(p_b, abs=1e-6)
    assert table.loc["c", "p_vs_ref"] == pytest.approx(p_c, abs=1e-6)
    # Holm, m = 2: 2 * 0.074180 = 0.148360, then max(0.148360, 1 * 0.183503)
    assert table.loc["b", "p_holm_vs_ref"] == pytest.approx(2 * p_b, abs=1e-6)
    assert table.loc["c", "p_holm_vs_ref"] == pytest.approx(p_c, abs=1e-6)
    assert math.isnan(table.loc["adam", "p_holm_vs_ref"])
    assert table.loc["adam", "mean_diff_vs_ref"] == 0.0 and table.loc["adam", "n_pairs"] == 3


def test_raw_p_below_alpha_but_holm_above_is_no_significant_difference():
    # the audit's case: a raw p below 0.05 among many comparisons is not significant after Holm, and
    # the sentence says so with both p-values and the n, never "tied". y - ref = [1, 2, 0.5, 1.5, 1]
    # points: mean 1.2, sd 0.570, t = 4.71 on 4 df, p = 0.0093; x is far worse (ranked first by
    # Holm), then y's p is multiplied by the 9 of the 10 comparisons left: 0.083
    base = [0.10, 0.20, 0.30, 0.40, 0.50]
    shifts = {
        "x": [0.050, 0.051, 0.049, 0.050, 0.050],
        "y": [0.010, 0.020, 0.005, 0.015, 0.010],
        **{f"c{i}": [0.0, 0.0, 0.0, 0.0, 0.001 * (i + 1)] for i in range(8)},
    }
    values = {"ref": base, **{k: [b + d for b, d in zip(base, v, strict=True)] for k, v in shifts.items()}}
    runs = runs_table(values, val={name: [0.99 if name == "ref" else 0.9] * 5 for name in values})
    table = compare_conditions(runs, by=["optimizer"])
    assert table.attrs["comparisons"] == 10
    by_name = table.set_index("optimizer")
    assert by_name.loc["x", "verdict"] == "worse"
    y = by_name.loc["y"]
    assert y["p_vs_ref"] == pytest.approx(0.0093, abs=5e-4) and y["p_holm_vs_ref"] == pytest.approx(
        9 * y["p_vs_ref"]
    )
    assert y["verdict"] == "no significant difference"
    assert set(table["verdict"]) == {"reference", "worse", "no significant difference"}
    claim = best_claim(table)
    no_difference = claim.split("no significant difference at n = 5 from ", 1)[1].split(";")[0]
    assert "optimizer=y (p = 0.0093, Holm p = 0.083)" in no_difference
    assert "tied" not in claim


def test_wilcoxon_in_the_table_only_from_six_shared_seeds():
    five = compare_conditions(runs_table({"a": [1.0, 2, 3, 4, 5], "b": [2.0, 4, 6, 8, 10]}), by=["optimizer"])
    assert math.isnan(five["p_wilcoxon_vs_ref"].iloc[1])
    six = compare_conditions(
        runs_table({"a": [1.0, 2, 3, 4, 5, 6], "b": [2.0, 4, 6, 8, 10, 12]}), by=["optimizer"]
    )
    assert six["p_wilcoxon_vs_ref"].iloc[1] == pytest.approx(2 / 64)


def test_failed_runs_are_excluded_counted_and_never_the_reference():
    runs = runs_table({"sgd": [0.05, 0.06], "adam": [0.04, 0.05]})
    extra = pd.DataFrame(
        [
            # a diverged run with error 0 and validation 1 would make sgd the reference if it counted
            {"optimizer": "sgd", "seed": 2, "test_error": 0.0, "best_val_acc": 1.0, "status": "diverged"},
            {"optimizer": "sgd", "seed": 3, "test_error": 0.9, "best_val_acc": 1.0, "status": "collapsed"},
            {"optimizer": "sgd", "seed": 4, "test_error": float("nan"), "status": "errored"},
            {"optimizer": "lion", "seed": 0, "test_error": 0.0, "best_val_acc": 1.0, "status": "diverged"},
            {"optimizer": "lion", "seed": 1, "test_error": 0.01, "status": "collapsed"},
        ]
    )
    table = compare_conditions(pd.concat([runs, extra], ignore_index=True), by=["optimizer"])
    assert list(table["optimizer"]) == ["adam", "sgd", "lion"]  # the all-failed condition kept, last
    by_name = table.set_index("optimizer")
    assert by_name.loc["sgd", ["n", "failed", "missing"]].tolist() == [2, 2, 1]
    assert by_name.loc["sgd", "mean"] == pytest.approx(0.055)
    assert by_name.loc["sgd", "n_pairs"] == 2  # seeds 0 and 1 only
    assert by_name.loc["lion", ["n", "failed"]].tolist() == [0, 2]
    assert by_name.loc["lion", "verdict"] == "failed" and math.isnan(by_name.loc["lion", "mean"])
    assert by_name.loc["adam", "verdict"] == "reference"
    assert "No successful run for optimizer=lion (2 failed)." in best_claim(table)


def test_fewer_than_two_shared_seeds_is_not_applicable():
    runs = runs_table({"a": [0.01, 0.02], "b": [0.03, 0.04]}, seeds={"a": [0, 1], "b": [1, 2]})
    table = compare_conditions(runs, by=["optimizer"])
    assert list(table["verdict"]) == ["reference", "n/a"] and table["n_pairs"].iloc[1] == 1
    claim = best_claim(table)
    assert "Not tested against optimizer=b (3.50%, n=2) (fewer than 2 shared seeds)." in claim
    assert "best condition" not in claim and "Holm over" not in claim


def test_better_on_the_shared_seeds_is_named_as_better_than_the_reference():
    # a validates and tests best on average only thanks to seed 4, which b lacks; on seeds 0-3 b wins
    runs = runs_table(
        {"a": [0.050, 0.052, 0.048, 0.051, 0.000], "b": [0.045, 0.046, 0.044, 0.045]},
    )
    table = compare_conditions(runs, by=["optimizer"])
    assert list(table["verdict"]) == ["reference", "better"]
    assert table["mean_diff_vs_ref"].iloc[1] < 0
    claim = best_claim(table)
    assert "significantly lower test error than the reference: optimizer=b (Holm p" in claim


def test_higher_is_better_picks_the_highest_mean():
    runs = runs_table({"a": [0.90, 0.91, 0.92, 0.93], "b": [0.95, 0.96, 0.97, 0.985]})
    runs = runs.rename(columns={"test_error": "val_acc"})
    table = compare_conditions(
        runs, by=["optimizer"], metric="val_acc", lower_is_better=False, select_on="val_acc"
    )
    assert list(table["optimizer"]) == ["b", "a"] and list(table["verdict"]) == ["reference", "worse"]
    claim = best_claim(table)
    assert claim.startswith(
        "optimizer=b is the reference, chosen by validation accuracy (the highest mean val_acc"
    )
    assert "its mean val acc is 96.62% (n=4)" in claim and "significantly lower val acc" in claim


def test_by_values_of_mixed_types_and_missing_values_group_correctly():
    rows = []
    for augment, width, lr in [(True, 1, 0.1), (False, 1, 0.1), (None, np.int64(1), float("nan"))]:
        for seed in range(3):
            rows.append(
                {
                    "augment": augment,
                    "width": width,
                    "lr": lr,
                    "seed": seed,
                    "test_error": 0.25,
                    "best_val_acc": 0.5,
                }
            )
    # NaN groups with None; 0.5 is exact in binary, so every mean is exactly 0.5 and the first seen wins
    rows.append(
        {"augment": np.nan, "width": 1, "lr": None, "seed": 3, "test_error": 0.25, "best_val_acc": 0.5}
    )
    table = compare_conditions(pd.DataFrame(rows), by=["augment", "width", "lr"])
    assert len(table) == 3 and sorted(table["n"]) == [3, 3, 4]
    # identical errors everywhere: no significant difference, each at p = 1 (all differences zero)
    assert sorted(table["verdict"]) == ["no significant difference"] * 2 + ["reference"]
    assert (table.loc[table["verdict"] == "no significant difference", "p_vs_ref"] == 1.0).all()
    assert table["augment"].tolist()[0] is True and table["augment"].tolist()[2] is None
    assert best_claim(table).startswith(
        "[augment=True, width=1, lr=0.1] is the reference, chosen by validation accuracy (the highest "
        "mean best_val_acc of ok runs, 50.00%); its mean test error is 25.00% (n=3). Against it on test "
        "error (paired t-test over seeds, Holm over 2 comparisons): no significant difference at n = 3 "
        "from [augment=False, width=1, lr=0.1] (p = 1, Holm p = 1), [augment=None, width=1, lr=None] "
        "(p = 1, Holm p = 1)."
    )


def test_no_successful_run_at_all():
    runs = pd.DataFrame([{"optimizer": "x", "seed": 0, "test_error": 0.1, "status": "diverged"}])
    table = compare_conditions(runs, by=["optimizer"])
    assert table["verdict"].tolist() == ["failed"]
    assert (
        best_claim(table)
        == "No condition has a successful run. No successful run for optimizer=x (1 failed)."
    )


def test_missing_columns_are_reported():
    with pytest.raises(ValueError, match="seed"):
        compare_conditions(pd.DataFrame({"optimizer": ["a"], "test_error": [0.1]}), by=["optimizer"])


# --------------------------------------------------------------------------- equivalence (TOST)


def test_tost_against_the_closed_form_on_two_degrees_of_freedom():
    # differences [0.1, 0.2, 0.3]: mean 0.2, sd 0.1, se 0.1 / sqrt 3; margin 1 -> t = 1.2 / se and
    # -0.8 / se on 2 df; p = the larger one-sided p = 1 - F(0.8 / se) (the upper bound is nearer)
    se = 0.1 / math.sqrt(3)
    r = tost([0.1, 0.2, 0.3], [0.0, 0.0, 0.0], 1.0)
    p_lower = 1 - (0.5 + (1.2 / se) / (2 * math.sqrt(2 + (1.2 / se) ** 2)))
    p_upper = 0.5 + (-0.8 / se) / (2 * math.sqrt(2 + (0.8 / se) ** 2))
    assert r["n_pairs"] == 3 and r["mean_diff"] == pytest.approx(0.2) and r["margin"] == 1.0
    assert r["p_lower"] == pytest.approx(p_lower, abs=1e-9) and r["p_upper"] == pytest.approx(
        p_upper, abs=1e-9
    )
    assert r["p"] == pytest.approx(max(p_lower, p_upper), abs=1e-9)
    assert r["equivalent"] is True and r["verdict"] == "equivalent within ±1"
    # the 90% interval: t(0.95, 2) = 2.919986 from a t table
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((0.2 - 2.919986 * se, 0.2 + 2.919986 * se), abs=1e-6)


def test_tost_a_small_difference_is_not_equivalence_with_noisy_pairs():
    # mean difference 0.1, inside the margin 0.5, but the pairs scatter: equivalence is not shown
    r = tost([1.0, -0.8, 0.4], [0.0, 0.0, 0.3], 0.5)
    assert abs(r["mean_diff"]) < 0.5 and r["p"] > 0.05
    assert r["equivalent"] is False and r["verdict"] == "not shown equivalent within ±0.5"
    # identical differences: se 0, p 0 inside the margin and 1 outside it
    assert tost([0.3, 0.3], [0.0, 0.0], 0.5)["p"] == 0.0
    assert tost([0.7, 0.7], [0.0, 0.0], 0.5)["p"] == 1.0
    one = tost([0.1, np.nan], [0.0, 0.0], 0.5)  # one pair left: nothing to test
    assert one["n_pairs"] == 1 and math.isnan(one["p"]) and one["equivalent"] is False
    with pytest.raises(ValueError):
        tost([0.1, 0.2], [0.0, 0.0], 0.0)


# --------------------------------------------------------------------------- factorial ANOVA


def factorial_runs(
    *, effect_a: float, noise: float = 0.002, seeds: int = 6, rng_seed: int = 0
) -> pd.DataFrame:
    """A 2 x 3 grid (a in {x, y}, b in {p, q, r}) x seeds: test error 0.03 + effect_a where a = y,
    no effect of b, no interaction, a seed offset and Gaussian noise."""
    rng = np.random.default_rng(rng_seed)
    offsets = rng.normal(0, noise, seeds)
    rows = [
        {
            "a": a,
            "b": b,
            "seed": s,
            "status": "completed",
            "test_error": 0.03 + (effect_a if a == "y" else 0.0) + offsets[s] + rng.normal(0, noise),
        }
        for a in ("x", "y")
        for b in ("p", "q", "r")
        for s in range(seeds)
    ]
    return pd.DataFrame(rows)


def test_factorial_anova_finds_the_main_effect_and_no_interaction():
    runs = factorial_runs(effect_a=0.01)
    table = factorial_anova(runs, factors=["a", "b"]).set_index("factor")
    assert list(table.index) == ["a", "b", "seed", "a:b", "Residual"]
    assert table.loc["a", "df"] == 1 and table.loc["b", "df"] == 2 and table.loc["a:b", "df"] == 2
    assert table.loc["seed", "df"] == 5 and table.loc["Residual", "df"] == 36 - 1 - 1 - 2 - 2 - 5
    assert table.loc["a", "p"] < 1e-6
    assert table.loc["b", "p"] > 0.05 and table.loc["a:b", "p"] > 0.05
    # balanced: type II sums of squares are the classical ones, computed by hand
    y, grand = runs["test_error"], runs["test_error"].mean()
    ss_a = 18 * ((runs.groupby("a")["test_error"].mean() - grand) ** 2).sum()
    ss_b = 12 * ((runs.groupby("b")["test_error"].mean() - grand) ** 2).sum()
    ss_seed = 6 * ((runs.groupby("seed")["test_error"].mean() - grand) ** 2).sum()
    cells = runs.groupby(["a", "b"])["test_error"].transform("mean")
    ss_ab = ((cells - grand) ** 2).sum() - ss_a - ss_b
    ss_res = ((y - grand) ** 2).sum() - ss_a - ss_b - ss_ab - ss_seed
    assert table.loc["a", "sum_sq"] == pytest.approx(ss_a, rel=1e-9)
    assert table.loc["b", "sum_sq"] == pytest.approx(ss_b, rel=1e-9)
    assert table.loc["seed", "sum_sq"] == pytest.approx(ss_seed, rel=1e-9)
    assert table.loc["a:b", "sum_sq"] == pytest.approx(ss_ab, rel=1e-9)
    assert table.loc["Residual", "sum_sq"] == pytest.approx(ss_res, rel=1e-9)
    assert table.loc["a", "F"] == pytest.approx((ss_a / 1) / (ss_res / 25), rel=1e-9)
    claim = anova_claim(factorial_anova(runs, factors=["a", "b"]))
    assert claim.startswith(
        "Factorial ANOVA of test error over 36 ok runs (type II sums of squares, seed as a block)"
    )
    assert f"a F(1, 25) = {table.loc['a', 'F']:.2f}, p < 0.001" in claim
    assert "Significant at 0.05: a; no significant effect at this n of b, a:b." in claim


def test_factorial_anova_leaves_out_failed_runs_and_an_unestimable_interaction():
    runs = factorial_runs(effect_a=0.01)
    gone = (runs["a"] == "y") & (runs["b"] == "r")
    runs.loc[gone, "status"] = "collapsed"  # a whole cell fails: a:b cannot be estimated
    table = factorial_anova(runs, factors=["a", "b"])
    assert "a:b" not in set(table["factor"]) and table.attrs["order"] == 1
    assert table.attrs["n"] == 30 and table.attrs["empty_cells"] == ["a=y, b=r"]
    assert table.set_index("factor").loc["a", "p"] < 1e-6
    claim = anova_claim(table)
    assert "Every run failed in a=y, b=r: left out, so interactions of more than 1 factors" in claim
    # one seed per cell: no seed block would leave a residual, and the seed is not crossed
    single = factorial_runs(effect_a=0.01, seeds=1).assign(seed=range(6))
    assert factorial_anova(single, factors=["a", "b"]).empty


# --------------------------------------------------------------------------- two models on one test set


def test_mcnemar_exact_hand_examples():
    # 1 image only a gets right, 5 only b, 4 both: P(X <= 1 | n=6, 1/2) = 7/64, two-sided 14/64
    a = np.array([1, 0, 0, 0, 0, 0, 1, 1, 1, 1], bool)
    b = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 1], bool)
    assert mcnemar_exact(a, b) == pytest.approx(14 / 64)
    assert mcnemar_exact(b, a) == pytest.approx(14 / 64)
    assert mcnemar_exact(np.zeros(6, bool), np.ones(6, bool)) == pytest.approx(2 / 64)
    assert mcnemar_exact(a, a) == 1.0  # no discordant image


def test_wilson_interval_known_values():
    # published values: 0/10 -> (0, 0.2775), 5/10 -> (0.2366, 0.7634)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    # the formula: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    k, n, z = 81, 263, 1.959963985
    p = k / n
    center, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    expected = ((center - half) / (1 + z * z / n), (center + half) / (1 + z * z / n))
    assert wilson_interval(k, n) == pytest.approx(expected, abs=1e-7)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


# --------------------------------------------------------------------------- calibration


def test_nll_and_brier_hand_examples():
    proba = np.array([[0.5, 0.5], [0.8, 0.2]])
    labels = np.array([0, 1])
    assert nll(proba, labels) == pytest.approx((math.log(2) + math.log(5)) / 2)  # -(ln .5 + ln .2) / 2
    # (0.5-1)^2 + 0.5^2 = 0.5 and 0.8^2 + (0.2-1)^2 = 1.28 -> mean 0.89
    assert brier(proba, labels) == pytest.approx(0.89)
    # a zero probability on the true class is clipped at 1e-12, not infinite
    assert nll(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-math.log(1e-12))
    assert brier(np.array([[0.0, 1.0]]), np.array([1])) == 0.0


def test_ece_zero_when_perfectly_calibrated():
    # ten images at confidence 0.7, seven of them right
    proba = np.tile([0.7, 0.3], (10, 1))
    labels = np.array([0] * 7 + [1] * 3)
    assert expected_calibration_error(proba, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_overconfident_hand_example_and_reliability_curve():
    # 4 images at 0.95 with 2 right (gap 0.45), 4 at 0.65 with 3 right (gap 0.10): ECE = .5*.45 + .5*.10
    proba = np.array([[0.95, 0.05]] * 4 + [[0.35, 0.65]] * 4)
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 0])
    assert expected_calibration_error(proba, labels, bins=10) == pytest.approx(0.275)
    curve = reliability_curve(proba, labels, bins=10)
    assert len(curve) == 10 and curve["count"].sum() == 8
    used = curve[curve["count"] > 0]
    assert used["bin"].tolist() == [6, 9]  # (0.6, 0.7] and (0.9, 1.0]
    assert used["confidence"].tolist() == pytest.approx([0.65, 0.95])
    assert used["accuracy"].tolist() == pytest.approx([0.75, 0.5])
    assert curve.loc[0, "low"] == 0.0 and curve.loc[9, "high"] == 1.0
    # bins are (low, high]: confidence exactly 0.5 belongs to (0.4, 0.5], confidence 1 to the last bin
    edge = reliability_curve(np.array([[0.5, 0.5], [1.0, 0.0]]), np.array([0, 0]), bins=10)
    assert edge.loc[edge["count"] > 0, "bin"].tolist() == [4, 9]


def test_calibration_input_checks():
    with pytest.raises(ValueError):
        nll(np.array([[0.5, 0.5]]), np.array([2]))  # label out of range
    with pytest.raises(ValueError):
        brier(np.array([0.5, 0.5]), np.array([0]))  # not (N, C)


# --------------------------------------------------------------------------- tost in the bench's bf16 claim
