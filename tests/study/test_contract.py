"""The stage contract: one status enum mapped everywhere, one selection metric, and the Python
API (keyword-only, each call returning its stage's results type, readable back by study.load)."""

from __future__ import annotations

import inspect
import math

import pandas as pd
import pytest

import study
from lenet_core.config import TrialConfig
from lenet_core.status import ENDED, FAILED, Status
from study.common.selection import SELECTION_METRIC, running_best


def test_every_status_has_an_optuna_state():
    from optuna.trial import TrialState

    from study.stages.tune.optuna_store import optuna_state

    for status in Status:
        for ended in (True, False):
            assert isinstance(optuna_state(status, study_ended=ended), TrialState), status
    assert optuna_state(Status.STOPPED, study_ended=True) == TrialState.PRUNED  # raised KeyError once
    assert optuna_state(Status.UNFINISHED, study_ended=False) == TrialState.RUNNING


def test_statuses_are_plain_text_and_failed_ones_are_named_once():
    assert Status("collapsed") is Status.COLLAPSED and Status.COLLAPSED == "collapsed"
    assert FAILED == {Status.DIVERGED, Status.COLLAPSED} and FAILED < ENDED
    assert pd.Series([Status.COMPLETED, "completed"]).eq("completed").all()


def test_the_running_best_is_what_searchers_see():
    assert running_best([0.5, math.nan, 0.7, 0.6]) == 0.7
    assert running_best([math.nan]) == 0.0  # a run that diverged to NaN scores 0 for the searcher
    assert running_best([]) == 0.0


def trials_table(rows: list[tuple[int, str, float, float]]) -> pd.DataFrame:
    import json

    return pd.DataFrame(
        [
            {
                "trial_id": f"t{trial}",
                "trial": trial,
                "status": status,
                SELECTION_METRIC: best,
                "final_val_acc": final,
                "test_acc": 0.9,
                "config": json.dumps(TrialConfig(dataset="digits", lr=trial / 1000).to_dict()),
            }
            for trial, status, best, final in rows
        ]
    )


def test_best_json_and_top_k_rank_by_the_same_metric():
    """Trial 2 has the better best epoch, trial 1 the better last epoch: both views pick trial 2
    (before, --top-k ranked by the last epoch and could pick another config than best.json)."""
    from study.stages.tune.results import StudyEnd, TuneResults

    trials = trials_table(
        [(1, "completed", 0.90, 0.89), (2, "completed", 0.95, 0.80), (3, "diverged", 0.99, 0.1)]
    )
    results = TuneResults(
        trials=trials,
        epochs=pd.DataFrame(),
        identity={"space": {"space": {}, "fixed": {}}, "data_checksum": "x", "dataset": "digits"},
        end=StudyEnd(asked=3, ran=3, finished=3),
    )
    assert results.best["trial"] == 2
    assert results.top_configs(1) == [results.best_config]
    assert [c.lr for c in results.top_configs(2)] == [0.002, 0.001]  # the diverged trial is never picked


def test_the_api_is_keyword_only():
    for function in (study.tune, study.ensemble):
        params = inspect.signature(function).parameters.values()
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params), function.__name__
    path, *rest = inspect.signature(study.run_experiment).parameters.values()
    assert path.name == "path" and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in rest)
    assert callable(study.load) and callable(study.tune)  # the stage packages never shadow them


@pytest.mark.usefixtures("shared_ray")
def test_study_tune_returns_its_results_and_load_reads_the_same(tmp_path, digits):
    lines: list[str] = []
    results = study.tune(
        fixed={"dataset": "digits", "epochs": 1, "optimizer": "adam"},
        trials=2,
        scheduler="none",
        data=digits,
        out=tmp_path,
        name="api",
        cluster=study.ClusterOptions(dashboard=False),
        progress=lines.append,
    )
    assert isinstance(results, study.TuneResults) and results.folder == tmp_path / "api" / "tune"
    assert len(results.trials) == 2 and "config.lr" in results.trials
    assert any("study ended" in line for line in lines)
    loaded = study.load(tmp_path / "api")
    pd.testing.assert_frame_equal(loaded.tune.trials, results.trials)
    assert loaded.best_config == results.best_config
    assert loaded.best_config.optimizer == "adam"


def test_writing_a_study_leaves_optunas_logging_as_it_was(tmp_path):
    """The store quiets Optuna while it writes, then puts the caller's verbosity back."""
    import optuna

    from study.stages.tune.optuna_store import write_optuna_study
    from study.stages.tune.space import default_space

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.DEBUG)
    try:
        write_optuna_study(
            tmp_path / "optuna.db",
            study_name="s",
            trials=pd.DataFrame(columns=["trial", "trial_id", "status", SELECTION_METRIC]),
            epochs=pd.DataFrame(columns=["trial_id", "epoch", "val_acc"]),
            distributions=default_space().optuna_distributions(),
            study_ended=True,
        )
        assert optuna.logging.get_verbosity() == optuna.logging.DEBUG
    finally:
        optuna.logging.set_verbosity(before)
    assert (tmp_path / "optuna.db").is_file()
