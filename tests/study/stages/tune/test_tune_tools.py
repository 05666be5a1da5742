"""What other tools read from a `study tune` folder, and how a study ends and shows progress:
the Optuna storage (optuna.load_study), --time-budget, plain progress lines off a terminal,
Ray's ExperimentAnalysis and TensorBoard event files. All on the 8x8 digits.
"""

import io
import json
import math
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from lenet_core.config import TrialConfig
from study.cli import app

runner = CliRunner()
STUDY = [
    "tune",
    "--dataset",
    "digits",
    "--trials",
    "4",
    "--epochs",
    "2",
    "--seed",
    "2",
    "--max-concurrent",
    "2",
]
# the default space's fields, schedule and regularization included
PARAMS = (
    "optimizer",
    "lr",
    "activation",
    "pooling",
    "batch_size",
    "lr_schedule",
    "weight_decay",
    "label_smoothing",
    "augment",
)
STATE = {
    "completed": optuna.trial.TrialState.COMPLETE,
    "pruned": optuna.trial.TrialState.PRUNED,
    "diverged": optuna.trial.TrialState.FAIL,
    "collapsed": optuna.trial.TrialState.FAIL,
    "errored": optuna.trial.TrialState.FAIL,
    "unfinished": optuna.trial.TrialState.PRUNED,  # cut short by a spent time budget
}
FINISHED_LINE = re.compile(
    r"^trial (\d+) \((\w+)\) (\w+): best val acc (\S+), test acc (\S+) "
    r"\[(\d+)/(\d+) finished, (\d+:\d\d:\d\d)\]$",
    re.MULTILINE,
)
EPOCH_LINE = re.compile(r"^trial \d+ \((\w+)\) epoch (\d+)/(\d+): val acc (\S+)", re.MULTILINE)


@pytest.fixture(scope="module")
def study(shared_ray, tmp_path_factory):
    out = tmp_path_factory.mktemp("tools")
    result = runner.invoke(app, [*STUDY, "--out", str(out), "--name", "tools"])
    assert result.exit_code == 0, result.output
    folder = out / "tools" / "tune"
    return SimpleNamespace(
        folder=folder,
        stdout=result.stdout,
        trials=pd.read_parquet(folder / "trials.parquet"),
        epochs=pd.read_parquet(folder / "epochs.parquet"),
    )


def load_optuna(folder: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'optuna.db'}")


def same(a, b) -> bool:
    """Equal, with NaN equal to NaN and to None (a number that is not a result)."""
    missing = [x is None or (isinstance(x, float) and math.isnan(x)) for x in (a, b)]
    return all(missing) if any(missing) else a == b


def assert_storage_matches(study_: optuna.Study, trials: pd.DataFrame, epochs: pd.DataFrame) -> None:
    assert len(study_.trials) == len(trials)
    by_id = {t.user_attrs["trial_id"]: t for t in study_.trials}
    assert set(by_id) == set(trials["trial_id"])
    for row in trials.to_dict("records"):
        trial = by_id[row["trial_id"]]
        assert trial.number == row["trial"] - 1
        assert trial.state == STATE[row["status"]], row["status"]
        assert trial.user_attrs["status"] == row["status"]
        # the value is the trial's best validation accuracy, exactly as trials.parquet has it
        if trial.state == optuna.trial.TrialState.FAIL:
            assert trial.value is None
        else:
            assert trial.value == row["best_val_acc"]
        for attr, column in [("best_val_acc",) * 2, ("test_acc",) * 2, ("seconds", "wall_s")]:
            assert same(trial.user_attrs[attr], row[column]), attr
        assert trial.params == {p: row[p] for p in PARAMS}
        assert set(trial.distributions) == set(PARAMS)
        curve = epochs[epochs["trial_id"] == row["trial_id"]]
        assert sorted(trial.intermediate_values) == list(curve["epoch"])
        for epoch, val_acc in zip(curve["epoch"], curve["val_acc"], strict=True):
            assert same(trial.intermediate_values[epoch], val_acc)


@pytest.mark.slow
def test_optuna_storage_reproduces_the_trials_table(study):
    optuna_study = load_optuna(study.folder, "tools")
    assert optuna_study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert_storage_matches(optuna_study, study.trials, study.epochs)
    assert optuna.get_all_study_names(f"sqlite:///{study.folder / 'optuna.db'}") == ["tools"]
    assert optuna_study.user_attrs["stop_reason"] == "all 4 trials finished"
    best = json.loads((study.folder / "best.json").read_text())
    assert optuna_study.best_value == best["metrics"]["best_val_acc"]  # COMPLETE trials only, as best.json
    pruned = study.trials[study.trials["status"] == "pruned"]
    for trial in optuna_study.trials:
        if trial.user_attrs["trial_id"] in set(pruned["trial_id"]):
            assert trial.user_attrs["test_acc"] is None  # a pruned trial was never tested


@pytest.mark.slow
def test_resume_rebuilds_the_optuna_storage_without_duplicates(study, tmp_path):
    copy = tmp_path / "tools"
    shutil.copytree(study.folder.parent, copy)
    from study.stages.tune.optuna_store import write_optuna_study
    from study.stages.tune.results import OPTUNA_FILE
    from study.stages.tune.space import default_space

    for _ in range(2):  # the writer alone, twice
        write_optuna_study(
            copy / "tune" / OPTUNA_FILE,
            study_name="tools",
            trials=study.trials,
            epochs=study.epochs,
            distributions=default_space().optuna_distributions(),
            study_ended=True,
        )
    assert len(load_optuna(copy / "tune", "tools").trials) == 4
    result = runner.invoke(app, [*STUDY, "--out", str(tmp_path), "--name", "tools", "--resume"])
    assert result.exit_code == 0, result.output
    assert "study ended: all 4 trials finished" in result.stdout
    trials = pd.read_parquet(copy / "tune" / "trials.parquet")
    pd.testing.assert_frame_equal(
        trials[["trial_id", "best_val_acc"]], study.trials[["trial_id", "best_val_acc"]]
    )
    assert_storage_matches(load_optuna(copy / "tune", "tools"), trials, study.epochs)


# Epochs no machine trains in the budget (a digits epoch takes tens of milliseconds at best):
# the first trial is cut short by construction, and no other trial ever starts.
ENDLESS_EPOCHS = 100_000


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")  # one local Ray for the module (conftest.py)
def test_a_spent_time_budget_ends_the_study_normally(tmp_path):
    args = [
        *("tune", "--dataset", "digits", "--trials", "3", "--epochs", str(ENDLESS_EPOCHS)),
        *("--scheduler", "none", "--max-concurrent", "1", "--time-budget", "16s"),
        *("--out", str(tmp_path), "--name", "b"),
    ]
    result = runner.invoke(app, args)
    # (16 s: the first trial starts and trains its first epochs even on a loaded machine)
    assert result.exit_code == 0, result.output
    assert "interrupted" not in result.output
    folder = tmp_path / "b" / "tune"
    run = json.loads((folder / "run.json").read_text())
    trials = pd.read_parquet(folder / "trials.parquet")
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert run["budget_spent"] is True and run["time_budget_s"] == 16
    # one trial at a time, and it cannot end: the budget stopped it, and the other two never started
    assert run["trials_run"] == len(trials) == 1 and run["trials_finished"] == 0
    assert run["stop_reason"].startswith("time budget of 16 s spent after 1 of 3 trials")
    assert f"study ended: {run['stop_reason']}" in result.stdout
    assert f"Study ended: {run['stop_reason']}." in (folder / "summary.md").read_text()
    # trials the budget kept from starting are not in the tables; the one it cut short ran epochs
    assert set(epochs["trial_id"]) == set(trials["trial_id"])
    (cut,) = trials.itertuples()
    assert cut.status == "unfinished" and math.isnan(cut.test_acc)
    assert 1 <= cut.epochs_run < ENDLESS_EPOCHS and cut.epochs_run == len(epochs)
    assert_storage_matches(load_optuna(folder, "b"), trials, epochs)
    # the study ended: Tune's searcher is finished, so a resume has nothing to do
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 2 and "nothing to resume" in resumed.stderr
    assert resumed.stderr.count("\n") == 1


@pytest.mark.usefixtures("shared_ray")
def test_files_written_beside_ray_shutdown_are_complete_and_their_errors_surface(
    tmp_path, monkeypatch, digits
):
    """The study's files are written in a thread while Ray shuts down; run_study returns only
    once they are all there, and a failure to write one is raised, not lost in the thread."""
    from study.common.cluster import ClusterOptions
    from study.common.context import RunContext
    from study.stages.tune import figures
    from study.stages.tune.run import TuneSettings, run_study
    from study.stages.tune.space import parse_space

    space = parse_space({"space": {"lr": {"low": 1e-3, "high": 1e-2, "log": True}}}, source="test")
    kwargs = dict(
        base=TrialConfig(dataset="digits", epochs=1),
        space=space,
        settings=TuneSettings(trials=1, scheduler="none"),
    )
    context = RunContext(
        data=digits, out=tmp_path, name="ok", cluster=ClusterOptions(dashboard=False), progress=lambda _: None
    )
    folder = run_study(context=context, **kwargs).folder
    for name in ("trials.parquet", "epochs.parquet", "summary.md", "optuna.db", "run.json"):
        assert (folder / name).is_file(), name
    assert list(folder.glob("*.png"))

    def disk_full(*_, **__):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(figures, "write_tune_figures", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_study(context=context.but(name="full"), **kwargs)
    assert (tmp_path / "full" / "tune" / "trials.parquet").is_file()  # written before the figures
    assert not (tmp_path / "full" / "tune" / "run.json").exists()  # the run never claimed to end


@pytest.mark.usefixtures("shared_ray")
def test_work_started_as_a_ray_session_ends_is_waited_for_and_its_errors_kept():
    from study.common.cluster import ClusterOptions, ray_session_then

    cluster = ClusterOptions(dashboard=False)
    finished = []

    def slow_double(x):
        time.sleep(0.3)
        finished.append(x)
        return 2 * x

    with ray_session_then(cluster) as (session, then):
        assert session.total_cpus > 0
        doubled = then(slow_double, 21)
    assert finished == [21] and doubled.result(timeout=0) == 42  # done when the block ended
    with pytest.raises(KeyboardInterrupt), ray_session_then(cluster) as (_, then):
        then(slow_double, 1)
        raise KeyboardInterrupt  # a Ctrl-C in the session: the started work still completes
    assert finished == [21, 1]
    with ray_session_then(cluster) as (_, then):
        failed = then(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failed.result()


@pytest.mark.parametrize("text", ["abc", "0", "0s", "-5m", "1d", "30 m", ""])
def test_bad_time_budget_exits_2_with_one_line(text, tmp_path):
    args = ["tune", "--dataset", "digits", f"--time-budget={text}", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --time-budget") and result.stderr.count("\n") == 1
    assert not any(tmp_path.iterdir())  # refused before anything started


def test_time_budget_values():
    from study.stages.tune.run import parse_duration

    assert [parse_duration(t) for t in ("90", "90s", "30m", "1h", "1h30m", "2.5", "0.5h")] == [
        90,
        90,
        1800,
        3600,
        5400,
        2.5,
        1800,
    ]


def fake_trial(trial_id: str, tune_status: str, last: dict | None = None) -> SimpleNamespace:
    """What the callback reads of a Tune Trial."""
    return SimpleNamespace(trial_id=trial_id, status=tune_status, last_result=last or {})


def test_progress_clock_counts_from_the_study_start_not_the_first_result():
    from study.stages.tune.progress import TrialProgress

    hour_ago = time.monotonic() - 3665  # the study started 1:01:05 ago (Ray's start included)
    trial = fake_trial("abc", "RUNNING")
    # a terminal: the rich bar's clock
    screen = io.StringIO()
    progress = TrialProgress(1, epochs=2, started=hour_ago, console=Console(file=screen, force_terminal=True))
    progress.setup()
    progress.on_trial_result(0, [trial], trial, {"objective": 0.5, "val_acc": 0.5, "epoch": 1})
    progress.on_experiment_end([trial])
    assert "1:01:0" in screen.getvalue()
    # a pipe or a log: plain lines, one per epoch and one per finished trial
    log = io.StringIO()
    progress = TrialProgress(1, epochs=2, started=hour_ago, console=Console(file=log, force_terminal=False))
    progress.setup()
    progress.on_trial_result(
        0, [trial], trial, {"objective": 0.5, "val_acc": 0.5, "epoch": 1, "train_loss": 1.0}
    )
    pruned = fake_trial("abc", "RUNNING", {"done": True, "status": "running", "test_acc": 0.9})
    progress.on_trial_complete(0, [pruned], pruned)
    progress.on_experiment_end([pruned])
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("trial 1 (abc) epoch 1/2: val acc 0.5000, train loss 1.0000 [0/1 finished")
    assert lines[1].startswith("trial 1 (abc) pruned: best val acc 0.5000, test acc — [1/1 finished, 1:01:0")
    assert len(lines) == 2 and "\x1b" not in log.getvalue()  # no bar, no escape codes


def test_progress_names_a_trial_stopped_at_chance_collapsed_as_the_tables_do():
    from study.stages.tune.progress import TrialProgress

    def finished_line(chance: float, best: float) -> str:
        log = io.StringIO()
        progress = TrialProgress(1, epochs=9, console=Console(file=log, force_terminal=False), chance=chance)
        trial = fake_trial("abc", "RUNNING")
        progress.on_trial_result(0, [trial], trial, {"val_acc": best, "epoch": 3, "train_loss": 2.3})
        stopped = fake_trial("abc", "RUNNING", {"done": True, "status": "running"})
        progress.on_trial_complete(0, [stopped], stopped)
        return log.getvalue().splitlines()[-1]

    assert " collapsed: best val acc 0.1100" in finished_line(chance=0.13, best=0.11)
    assert " pruned: best val acc 0.4000" in finished_line(chance=0.13, best=0.40)


def test_chance_accuracy_is_the_validation_majority_plus_the_margin(digits):
    import numpy as np

    from lenet_core.config import TrialConfig
    from lenet_core.train import COLLAPSE_MARGIN, trial_split
    from study.stages.tune.run import chance_accuracy

    base = TrialConfig(dataset="digits")
    _, val_idx = trial_split(digits, base)
    majority = np.bincount(digits.train_labels[val_idx]).max() / len(val_idx)
    assert chance_accuracy(digits, base) == pytest.approx(majority + COLLAPSE_MARGIN)


@pytest.mark.slow
def test_plain_progress_lines_name_every_trial_and_epoch(study):
    finished = {m[1]: m for m in FINISHED_LINE.findall(study.stdout)}
    trials = study.trials.set_index("trial_id")
    assert set(finished) == set(trials.index) and len(FINISHED_LINE.findall(study.stdout)) == 4
    for trial_id, (_, _, status, best, test, _, total, _) in finished.items():
        row = trials.loc[trial_id]
        assert status == row["status"] and total == "4"
        assert best == f"{row['best_val_acc']:.4f}"
        assert test == ("—" if math.isnan(row["test_acc"]) else f"{row['test_acc']:.4f}")
    # the finished count climbs to 4, and every epoch Tune received has its line
    assert sorted(int(m[5]) for m in finished.values()) == [1, 2, 3, 4]
    epoch_lines = EPOCH_LINE.findall(study.stdout)
    assert len(epoch_lines) == len(study.epochs)
    assert {(i, int(e)) for i, e, _, _ in epoch_lines} == set(
        zip(study.epochs["trial_id"], study.epochs["epoch"], strict=True)
    )


@pytest.mark.slow
def test_ray_experiment_analysis_lists_every_trial(study):
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(study.folder / "ray"))
    assert {t.trial_id for t in analysis.trials} == set(study.trials["trial_id"])
    frame = analysis.dataframe()
    assert len(frame) == 4 and "val_acc" in frame.columns


@pytest.mark.slow
def test_tensorboard_event_files_hold_val_acc_per_epoch(study):
    event_files = list(study.folder.glob("ray/*/events.out.tfevents.*"))
    assert len(event_files) == 4 and all(p.stat().st_size > 0 for p in event_files)
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    for path in event_files:
        trial_id = json.loads((path.parent / "result.json").read_text().splitlines()[0])["trial_id"]
        events = accumulator.EventAccumulator(str(path.parent))
        events.Reload()
        scalars = events.Scalars("ray/tune/val_acc")
        curve = study.epochs[study.epochs["trial_id"] == trial_id]
        assert [s.step for s in scalars] == list(curve["epoch"])
        assert [s.value for s in scalars] == pytest.approx(list(curve["val_acc"]), rel=1e-6)  # float32


def test_a_trial_asha_stopped_at_chance_is_a_failed_optuna_trial(tmp_path, digits):
    """Optuna's view of a collapsed trial that ASHA stopped: FAIL, no value, never tested; the
    pruned one beside it stays PRUNED with its best validation accuracy."""
    from study.stages.tune.optuna_store import write_optuna_study
    from study.stages.tune.space import parse_space
    from study.stages.tune.tables import collect_results
    from tests.study.stages.tune.test_tune_tables import fake_result

    config = TrialConfig(dataset="digits", epochs=10, lr=0.01)
    grid = [
        fake_result("t_a", [0.1, 0.1, 0.1], status="running", done=True, config=config),
        fake_result("t_b", [0.4, 0.6, 0.7], status="running", done=True, config=config),
    ]
    trials, epochs = collect_results(grid, params=["lr"], data=digits, sampled=None)
    space = parse_space({"space": {"lr": {"low": 1e-3, "high": 1e-1, "log": True}}}, source="t")
    write_optuna_study(
        tmp_path / "optuna.db",
        study_name="s",
        trials=trials,
        epochs=epochs,
        distributions=space.optuna_distributions(),
        study_ended=True,
    )
    by_id = {t.user_attrs["trial_id"]: t for t in load_optuna(tmp_path, "s").trials}
    collapsed, pruned = by_id["t_a"], by_id["t_b"]
    assert collapsed.state == optuna.trial.TrialState.FAIL and collapsed.value is None
    assert collapsed.user_attrs["status"] == "collapsed" and collapsed.user_attrs["test_acc"] is None
    assert sorted(collapsed.intermediate_values) == [1, 2, 3]  # its curve is kept
    assert pruned.state == optuna.trial.TrialState.PRUNED and pruned.value == pytest.approx(0.7)
