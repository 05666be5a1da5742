"""`study tune --seeds-per-trial S`: each trial trains its config on S seeds as one pack and is
judged by their mean; the tables carry the means and their spreads over the seeds."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from lenet_core.config import from_dict
from lenet_core.errors import StudyError
from study.cli import app
from study.stages.tune.trial import METRIC, SeedMeans
from tests.conftest import digits_study_identity, started_study

runner = CliRunner()


def _row(epoch, val_acc, status="running", test_acc=math.nan):
    return {
        "epoch": epoch,
        "lr": 1e-3,
        "train_loss": 1.0,
        "train_acc": 0.5,
        "val_loss": 1.0,
        "val_acc": val_acc,
        "test_loss": math.nan if math.isnan(test_acc) else 0.5,
        "test_acc": test_acc,
        "seconds": 1.0,
        "images_per_s": 100.0,
        "status": status,
    }


def test_seed_means_rank_by_the_mean_of_each_seeds_best_and_end_when_every_seed_has():
    means = SeedMeans(3)
    first = means.row({0: _row(1, 0.8), 1: _row(1, 0.6), 2: _row(1, 0.7)})
    assert first["val_acc"] == pytest.approx(0.7) and first["val_acc_std"] == pytest.approx(0.1)
    assert first["best_val_acc"] == first[METRIC] == pytest.approx(0.7)
    assert first["status"] == "running" and first["seeds"] == 3 and "test_acc_std" not in first
    assert first["seconds"] == 3.0  # the epoch's wall time: the seeds' shares added up
    # seed 2 ends (patience) at epoch 2; seeds 0 and 1 go on: its last row still counts
    second = means.row({0: _row(2, 0.7), 1: _row(2, 0.9), 2: _row(2, 0.65, "completed", 0.75)})
    assert second["val_acc"] == pytest.approx(0.75)
    # the selection metric is the mean of each seed's best so far (0.8, 0.9, 0.7), not the best
    # of the mean curve (0.75): each seed keeps its own best epoch's weights
    assert second["best_val_acc"] == second[METRIC] == pytest.approx(0.8)
    assert second["status"] == "running" and math.isnan(second["test_acc"])  # not every seed tested
    third = means.row({0: _row(3, 0.85, "completed", 0.8), 1: _row(3, 0.9, "diverged", 0.3)})
    assert third["epoch"] == 3 and third["status"] == "diverged"  # completed only if every seed did
    assert third["test_acc"] == pytest.approx((0.8 + 0.3 + 0.75) / 3)
    assert third["test_acc_std"] == pytest.approx(np.std([0.8, 0.3, 0.75], ddof=1))
    assert third["best_val_acc"] == pytest.approx((0.85 + 0.9 + 0.7) / 3)
    assert third["seconds"] == 2.0  # two seeds trained in it


def test_seed_means_score_a_seed_without_accuracy_as_zero():
    means = SeedMeans(2)
    row = means.row({0: _row(1, math.nan, "diverged", math.nan), 1: _row(1, 0.9, "completed", 0.9)})
    assert row["best_val_acc"] == pytest.approx(0.45) and math.isnan(row["val_acc"])
    assert row["status"] == "diverged"


def test_seeds_per_trial_is_part_of_a_study_and_old_studies_ran_one(tmp_path):
    from study.stages.tune.run import TuneSettings, check_resume

    one = digits_study_identity(TuneSettings(trials=4))
    three = digits_study_identity(TuneSettings(trials=4, seeds_per_trial=3))
    assert (one["seeds_per_trial"], three["seeds_per_trial"]) == (1, 3)
    old = {k: v for k, v in one.items() if k != "seeds_per_trial"}
    folder = started_study(tmp_path / "old" / "tune", json.loads(json.dumps(old)))
    assert check_resume(folder, one, resume=True)  # a study.json without the key ran one seed
    with pytest.raises(StudyError, match="different seeds per trial"):
        check_resume(folder, three, resume=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds-per-trial", "0"], "error: --seeds-per-trial must be a whole number >= 1, got 0"),
        (
            ["--seeds-per-trial", "2", "--precision", "fp16"],
            "error: --seeds-per-trial 2 trains the seeds as one pack: train_packed trains in fp32 or bf16",
        ),
    ],
)
def test_bad_seeds_per_trial_exits_2_with_one_line(tmp_path, args, message):
    cmd = ["tune", "--dataset", "digits", "--trials", "1", "--epochs", "1", *args, "--out", str(tmp_path)]
    result = runner.invoke(app, cmd)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")
def test_three_seeds_per_trial_write_means_and_spreads_and_optuna_keeps_the_mean(tmp_path, digits):
    import optuna

    from lenet_core.packed import train_packed

    args = [
        *("tune", "--dataset", "digits", "--trials", "2", "--epochs", "2", "--seed", "4"),
        *("--seeds-per-trial", "3", "--out", str(tmp_path), "--name", "s"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "each trial trains its config on 3 seeds as one pack" in result.output
    folder = tmp_path / "s" / "tune"
    assert json.loads((folder / "study.json").read_text())["seeds_per_trial"] == 3
    trials = pd.read_parquet(folder / "trials.parquet")
    for column in ("best_val_acc", "best_val_acc_std", "test_acc", "test_acc_std", "seeds"):
        assert column in trials.columns, column
    assert (trials["seeds"] == 3).all()
    ended = trials[trials["status"].isin(["completed", "diverged", "collapsed"])]
    assert len(ended) and ended[["best_val_acc_std", "test_acc_std"]].notna().all().all()
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert "val_acc_std" in epochs.columns and epochs["val_acc_std"].notna().all()
    # Optuna's value is the trials table's selection metric: the mean over the seeds
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{folder / 'optuna.db'}")
    by_id = {t.user_attrs["trial_id"]: t for t in study.trials}
    for _, row in trials.iterrows():
        trial = by_id[row["trial_id"]]
        assert trial.user_attrs["seeds"] == 3 and trial.user_attrs["best_val_acc"] == row["best_val_acc"]
        if row["status"] in ("completed", "pruned"):  # a failed trial keeps no value in Optuna
            assert trial.value == pytest.approx(row["best_val_acc"])
    completed = trials[trials["status"] == "completed"]
    assert len(completed)  # the library's default config, evaluated first, at least
    # ... which is the mean of the seeds' own best validation accuracy: replay a completed trial's
    # pack outside Ray (seeds 4, 5, 6 of the config it ran)
    first = completed.iloc[0]
    config = from_dict(json.loads(first["config"]), source="trials")
    assert config.seed == 4
    replay = train_packed([config.replace(seed=4 + i) for i in range(3)], digits)
    assert first["best_val_acc"] == pytest.approx(np.mean([r.best_val_acc for r in replay]))
    assert first["best_val_acc_std"] == pytest.approx(np.std([r.best_val_acc for r in replay], ddof=1))
    assert first["test_acc"] == pytest.approx(np.mean([r.test_acc for r in replay]))
    report = runner.invoke(app, ["report", str(tmp_path / "s")])
    assert report.exit_code == 0, report.output
    assert "(means over its 3 seeds, std " in (tmp_path / "s" / "REPORT.md").read_text()
    # resuming it with another number of seeds is refused
    again = runner.invoke(app, [*args[:-6], "--seeds-per-trial", "1", *args[-4:], "--resume"])
    assert again.exit_code == 2 and "different seeds per trial" in again.stderr, again.output
