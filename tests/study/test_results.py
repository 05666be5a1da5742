"""Every stage's results type reads back what it wrote: ``study.load`` round-trips every committed
results folder (read, write elsewhere, read again: the same tables, configs and run info), and
expands each row's config into ``config.<field>`` columns."""

from __future__ import annotations

import pandas as pd
import pytest

import study
from lenet_core.config import FIELD_NAMES, TrialConfig
from lenet_core.errors import StudyError
from study.reader import StudyResults
from tests.conftest import PROJECT_ROOT

ROOT = PROJECT_ROOT
COMMITTED = sorted(p for p in (ROOT / "results").iterdir() if p.is_dir() and p.name != "bench")


def frames_of(results: StudyResults) -> dict[str, pd.DataFrame]:
    found = {}
    for stage in results.stages():
        for name, value in vars(stage).items():
            if isinstance(value, pd.DataFrame):
                found[f"{type(stage).__name__}.{name}"] = value
            elif (
                isinstance(value, dict) and value and all(isinstance(v, pd.DataFrame) for v in value.values())
            ):
                found.update({f"{type(stage).__name__}.{name}.{k}": v for k, v in value.items()})
    return found


def plain_fields(stage: object) -> dict[str, object]:
    """A stage's fields other than its tables and its folder."""
    return {
        k: v
        for k, v in vars(stage).items()
        if k != "folder" and not isinstance(v, pd.DataFrame) and not (isinstance(v, dict) and name_frames(v))
    }


def name_frames(value: dict) -> bool:
    return bool(value) and all(isinstance(v, pd.DataFrame) for v in value.values())


def test_there_are_committed_results_to_check():
    assert {"fashion", "ensemble", "optimizers"} <= {p.name for p in COMMITTED}


@pytest.mark.parametrize("folder", COMMITTED, ids=lambda p: p.name)
def test_load_round_trips_every_committed_results_folder(folder, tmp_path):
    first = study.load(folder)
    assert first.stages(), f"{folder} loaded no stage"
    first.write(tmp_path / folder.name)
    again = study.load(tmp_path / folder.name)
    assert [type(s) for s in again.stages()] == [type(s) for s in first.stages()]
    before, after = frames_of(first), frames_of(again)
    assert before.keys() == after.keys()
    for name, frame in before.items():
        pd.testing.assert_frame_equal(frame, after[name], obj=name)
    for one, two in zip(first.stages(), again.stages(), strict=True):
        assert plain_fields(one) == plain_fields(two)  # run info, identity, how it ended, ...
    assert again.best_config == first.best_config
    assert isinstance(first.best_config, TrialConfig)


def test_config_columns_are_expanded_and_typed():
    results = study.load(ROOT / "results" / "fashion")
    trials = results.tune.trials
    assert {f"config.{name}" for name in FIELD_NAMES} <= set(trials.columns)
    assert "config" in trials.columns  # the stored JSON stays beside them
    completed = trials[trials["status"] == "completed"]
    assert (completed["config.optimizer"] == completed["optimizer"]).all()
    assert results.best_config == results.tune.best_config
    assert (
        results.tune.best["trial_id"]
        == pd.read_json(ROOT / "results" / "fashion" / "tune" / "best.json", typ="series")["trial_id"]
    )


def test_a_stage_folder_loads_its_whole_study():
    whole = study.load(ROOT / "results" / "fashion")
    via_stage = study.load(ROOT / "results" / "fashion" / "tune")
    assert via_stage.folder == whole.folder and via_stage.ensemble is not None


def test_a_folder_without_results_is_one_clear_error(tmp_path):
    with pytest.raises(StudyError, match="holds no"):
        study.load(tmp_path)
    with pytest.raises(StudyError, match="is not a results folder"):
        study.load(tmp_path / "missing")
