"""study.stages.tune.tables: a trial's status from its last result, and the rows of its last attempt."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from lenet_core.config import TrialConfig
from study.stages.tune.tables import (
    last_attempt,
    searched_setting,
    trial_status,
    validation_gap_sentence,
)


@pytest.mark.parametrize(
    ("last", "errored", "expected"),
    [
        ({"status": "completed", "done": True}, False, "completed"),
        ({"status": "diverged", "done": True}, False, "diverged"),
        ({"status": "collapsed", "done": True}, False, "collapsed"),
        # Tune marks done on its cached last result in place; a study restored from a state saved
        # just before that has a finished trial without it: the worker's final status decides.
        ({"status": "completed"}, False, "completed"),
        ({"status": "diverged"}, False, "diverged"),
        ({"status": "running", "done": True}, False, "pruned"),  # ASHA stopped it mid-way
        ({"status": "running"}, False, "unfinished"),  # interrupted, or cut by the time budget
        ({}, False, "unfinished"),  # never reported
        ({"status": "completed", "done": True}, True, "errored"),
    ],
)
def test_trial_status_trusts_the_workers_final_status(last, errored, expected):
    assert trial_status(last, errored=errored) == expected


def test_last_attempt_keeps_the_rows_of_a_restarted_trials_last_run():
    history = pd.DataFrame({"epoch": [1, 2, 3, 1, 2, 3, 4], "val_acc": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]})
    kept = last_attempt(history)
    assert kept["epoch"].tolist() == [1, 2, 3, 4]
    assert kept["val_acc"].tolist() == [0.4, 0.5, 0.6, 0.7]
    once = history.iloc[:3]
    assert last_attempt(once).equals(once)


# ------------------------------------------------------------------ a trial at chance is collapsed


def fake_result(trial_id: str, val_accs: list[float], *, status: str, done: bool, config: TrialConfig):
    """What Tune's ResultGrid yields for one trial: its last result and its per-epoch rows."""
    from types import SimpleNamespace

    rows = [
        {
            "epoch": e,
            "lr": config.lr,
            "val_acc": acc,
            "test_acc": math.nan,
            "images_per_s": 100.0,
            "status": status if e == len(val_accs) else "running",
            "trial_id": trial_id,
            "trial_config": json.dumps(config.to_dict()),
            "started_at": float(ord(trial_id[-1])),
        }
        for e, acc in enumerate(val_accs, start=1)
    ]
    return SimpleNamespace(
        metrics={**rows[-1], "done": done},
        metrics_dataframe=pd.DataFrame(rows),
        path=f"/tmp/ray/{trial_id}",
        error=None,
        config={},
    )


def chance_and_margin(digits, config):
    from lenet_core.train import COLLAPSE_MARGIN, majority_fraction, trial_split

    _, val_idx = trial_split(digits, config)
    return majority_fraction(digits.train_labels[val_idx]), COLLAPSE_MARGIN


def test_a_trial_asha_stopped_at_chance_is_collapsed_not_pruned(digits):
    from study.stages.tune.tables import collect_results

    config = TrialConfig(dataset="digits", epochs=10)
    chance, margin = chance_and_margin(digits, config)
    grid = [
        fake_result("t_a", [chance, chance], status="running", done=True, config=config),  # ASHA, at chance
        fake_result("t_b", [0.09, chance + margin], status="running", done=True, config=config),  # just at it
        fake_result("t_c", [chance, chance + margin + 0.01], status="running", done=True, config=config),
        fake_result("t_d", [0.5, 0.9], status="completed", done=True, config=config),
        fake_result("t_e", [chance], status="running", done=False, config=config),  # still running: kept
    ]
    trials, _ = collect_results(grid, params=["lr"], data=digits, sampled=None)
    status = dict(zip(trials["trial_id"], trials["status"], strict=True))
    assert status == {
        "t_a": "collapsed",
        "t_b": "collapsed",
        "t_c": "pruned",
        "t_d": "completed",
        "t_e": "unfinished",
    }
    collapsed = trials[trials["status"] == "collapsed"]
    assert collapsed["test_acc"].isna().all()  # stopped early, so never tested
    from study.stages.tune.tables import best_trial, summary_markdown

    assert best_trial(trials)["trial_id"] == "t_d"
    summary = summary_markdown(trials, ["lr"])
    failed = summary.split("## Failed trials", 1)[1].split("##", 1)[0]
    assert "collapsed" in failed and failed.count("| collapsed") == 2
    # the schedules and augmentations searched get their own table over completed trials
    searched = trials.assign(lr_schedule=["cosine", "step", "step", "onecycle", "step"], augment="crop")
    summary = summary_markdown(searched, ["lr", "lr_schedule", "augment"])
    by_schedule = summary.split("## Validation accuracy by lr_schedule (completed trials only)", 1)[1]
    assert "onecycle" in by_schedule.split("##", 1)[0] and "## Validation accuracy by augment" in summary


def test_the_majority_is_that_of_each_trials_own_validation_split(digits):
    from study.stages.tune.tables import mark_collapsed

    # 44 validation images (5 of the most frequent class) against 898 (about a tenth of each)
    small, large = (TrialConfig(dataset="digits", val_fraction=f) for f in (0.025, 0.5))
    (high, margin), (low, _) = chance_and_margin(digits, small), chance_and_margin(digits, large)
    assert high > low + 0.005
    acc = high + margin - 0.002  # at chance on the small split, above it on the large one
    trials = pd.DataFrame(
        {
            "trial_id": ["small", "large"],
            "status": ["pruned", "pruned"],
            "best_val_acc": [acc, acc],
            "config": [json.dumps(c.to_dict()) for c in (small, large)],
        }
    )
    marked = mark_collapsed(trials, data=digits)
    assert marked["status"].tolist() == ["collapsed", "pruned"]
    assert trials["status"].tolist() == ["pruned", "pruned"]  # the input is left as it was


def test_unfinished_trials_at_chance_are_collapsed_only_once_a_budget_ended_the_study(digits):
    from study.stages.tune.run import TuneSettings, study_identity, study_results
    from study.stages.tune.space import default_space

    config = TrialConfig(dataset="digits", epochs=10)
    chance, _ = chance_and_margin(digits, config)
    trials = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c"],
            "trial": [1, 2, 3],
            "status": ["completed", "unfinished", "unfinished"],
            "best_val_acc": [0.9, chance, 0.7],
            "test_acc": [0.9, math.nan, math.nan],
            "config": [json.dumps(config.to_dict())] * 3,
        }
    )
    epochs = pd.DataFrame({"trial_id": ["a", "b", "c"], "epoch": [1, 1, 1], "val_acc": [0.9, chance, 0.7]})
    settings = TuneSettings(trials=5, time_budget_s=60, grace_period=4, reduction_factor=2)
    identity = study_identity(config, default_space(), settings, digits)

    def run(spent: bool):
        return study_results(
            trials, epochs, identity=identity, settings=settings, budget_spent=spent, data=digits
        )

    spent = run(True)
    assert spent.trials["status"].tolist() == ["completed", "collapsed", "unfinished"]
    # how the study ended counts the trials the budget cut short, whatever they are named
    assert spent.end.budget_spent and spent.end.finished == 1 and "2 cut short" in spent.end.reason
    assert (spent.run["scheduler"], spent.run["grace_period"], spent.run["reduction_factor"]) == (
        "asha",
        4,
        2.0,
    )
    interrupted = run(False)  # an interrupt: the unfinished trials run again on --resume
    assert interrupted.trials["status"].tolist() == ["completed", "unfinished", "unfinished"]
    assert interrupted.end.interrupted


# ------------------------------------------------------------------ report sentences


def test_searched_setting_names_only_the_searched_fields_in_the_spaces_order():
    config = TrialConfig(optimizer="adam", lr=0.000818, weight_decay=6.7e-4, batch_size=128)
    text = searched_setting(config, ["optimizer", "lr", "batch_size", "weight_decay"])
    assert text == "adam, lr 0.00082, batch size 128, weight decay 0.00067"
    assert "patience" not in text  # fixed fields live in run.json, not in the sentence


def _trials(val: list[float], test: list[float], status: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {"trial": range(1, len(val) + 1), "best_val_acc": val, "test_acc": test, "status": status}
    )


def test_validation_gap_sentence_measures_completed_trials_only():
    trials = _trials(
        [0.92, 0.91, 0.90, 0.50],
        [0.91, 0.905, 0.88, math.nan],
        ["completed", "completed", "completed", "pruned"],
    )
    text = validation_gap_sentence(trials)
    # gaps +1.0, +0.5, +2.0 points: mean 1.17; the pruned trial (no test score) is left out
    assert text is not None
    assert "above test accuracy by 1.17 points" in text
    assert "over the 3 completed trials (from +0.50 to +2.00; 3 of 3 on that side)" in text


def test_validation_gap_sentence_says_below_when_test_is_higher_and_needs_two_trials():
    below = _trials([0.90, 0.91], [0.92, 0.905], ["completed", "completed"])
    assert "below test accuracy by 0.75 points" in validation_gap_sentence(below)
    assert "1 of 2 on that side" in validation_gap_sentence(below)
    one = _trials([0.90, 0.91], [0.92, 0.90], ["completed", "diverged"])
    assert validation_gap_sentence(one) is None


def test_searched_setting_shows_gamma_and_step_size_only_under_the_step_schedule():
    params = ["lr_schedule", "lr_gamma", "lr_step_size"]
    cosine = TrialConfig(lr_schedule="cosine", lr_gamma=0.35, lr_step_size=5)
    assert searched_setting(cosine, params) == "lr schedule cosine"
    step = TrialConfig(lr_schedule="step", lr_gamma=0.35, lr_step_size=5)
    assert searched_setting(step, params) == "lr schedule step, lr gamma 0.35, lr step size 5"
