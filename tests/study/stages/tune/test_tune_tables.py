"""study.stages.tune.tables: a trial's status from its last result, and the rows of its last attempt."""

from __future__ import annotations

import pandas as pd
import pytest

from study.stages.tune.tables import last_attempt, trial_status


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
