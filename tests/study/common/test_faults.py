"""Faults a long study meets: a trial worker killed mid-trial, unwritable output, many trials."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import psutil
import pytest
from typer.testing import CliRunner

from study.cli import app
from tests.conftest import last_trial_reports

runner = CliRunner()


def _running_trial_worker(folder, study):
    """The PID of a worker now running one of *our* study's trials (Tune reports each trial's pid),
    checked to descend from the study process we started."""
    ours = {p.pid for p in psutil.Process(study.pid).children(recursive=True)}
    for row in last_trial_reports(folder).values():
        if row["status"] == "running" and row["pid"] in ours:
            return row["pid"]
    return None


@pytest.mark.slow
def test_trial_worker_killed_mid_trial_is_retried_and_the_study_completes(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "study",
            "tune",
            "--dataset",
            "digits",
            "--trials",
            "2",
            "--epochs",
            "20",
            "--scheduler",
            "none",
            "--optimizer",  # a stable optimizer: every trial should complete all its epochs
            "adam",
            "--lr",
            "0.001",
            "--out",
            str(tmp_path),
            "--name",
            "k",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # result.json reaches the study folder only when Tune saves its experiment state, every
        # 10 s by default: a trial of 20 digits epochs (about 8 s) could end unseen. Save every 1 s.
        env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"},
    )
    killed = None
    deadline = time.time() + 120
    while killed is None and time.time() < deadline and proc.poll() is None:
        worker = _running_trial_worker(tmp_path / "k" / "tune", proc)  # past its first epoch
        if worker is not None:
            os.kill(worker, signal.SIGKILL)
            killed = worker
        time.sleep(0.05)
    output = proc.communicate(timeout=300)[0]
    assert killed is not None, "no trial worker was found to kill\n" + output
    assert proc.returncode == 0, output
    trials = pd.read_parquet(tmp_path / "k" / "tune" / "trials.parquet")
    assert len(trials) == 2 and trials["trial_id"].is_unique
    assert set(trials["status"]) == {"completed"}, trials[["status", "error"]]
    assert (trials["epochs_run"] == 20).all()


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--dataset", "digits", "--epochs", "1"],
        ["tune", "--dataset", "digits", "--trials", "1", "--epochs", "1"],
        ["ensemble", "--dataset", "digits", "--members", "2", "--epochs", "1", "--resnet", "none"],
    ],
)
def test_output_folder_that_cannot_be_written(tmp_path, command):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, [*command, "--out", str(blocker / "results")])
    assert result.exit_code == 2 and "is not writable" in result.stderr, result.output
    assert result.stderr.count("\n") == 1
    assert blocker.read_text() == "not a folder"


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")  # one local Ray for the module (conftest.py)
def test_two_hundred_trials_complete_and_driver_memory_stays_flat(tmp_path):
    """Ray has an open report of driver memory growing with trial count: measure ours."""
    from lenet_core.config import TrialConfig
    from lenet_core.data import load_dataset
    from study.common.cluster import ClusterOptions
    from study.common.context import RunContext
    from study.stages.tune.run import TuneSettings, run_study
    from study.stages.tune.space import default_space

    samples = {}

    def record(done):
        samples[done] = psutil.Process().memory_info().rss / 2**20

    context = RunContext(
        data=load_dataset("digits"),
        out=tmp_path,
        name="load",
        cluster=ClusterOptions(dashboard=False),
        progress=lambda _: None,
    )
    trials = run_study(
        base=TrialConfig(dataset="digits", epochs=1, train_fraction=0.25),
        space=default_space(),
        settings=TuneSettings(trials=200, scheduler="none"),
        context=context,
        on_trial_done=record,
    ).trials
    assert len(trials) == 200 and trials["trial_id"].is_unique
    after_20, at_end = samples[20], samples[max(samples)]
    (tmp_path / "memory.json").write_text(json.dumps({"after_20_mb": after_20, "at_end_mb": at_end}))
    print(f"driver RSS after 20 trials {after_20:.0f} MB, after 200 {at_end:.0f} MB")
    assert at_end <= 1.2 * after_20


def test_dashboard_beyond_loopback_gets_a_warning():
    from study.common.cluster import dashboard_warning

    assert dashboard_warning("127.0.0.1") is None
    assert "accepts job submissions" in dashboard_warning("0.0.0.0")


class Payload:
    """Stands in for code hidden in a pickle someone hands you."""


def test_weights_are_loaded_without_unpickling_code(tmp_path):
    import torch

    from lenet_core.errors import StudyError
    from study.common.files import load_weights, save_weights

    save_weights({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_weights(tmp_path / "ok.pt")["w"], torch.ones(2))
    torch.save({"w": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(StudyError, match="not a readable weights file"):
        load_weights(tmp_path / "evil.pt")


def test_atomic_writes_leave_the_old_file_when_writing_fails(tmp_path):
    from study.common.files import write_json, write_via_temp

    path = tmp_path / "result.json"
    write_json(path, {"v": 1})

    def crash(tmp):
        tmp.write_text('{"v": 2, "trunc')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_via_temp(path, crash)
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temp file left


def test_trial_reports_read_mid_copy_skip_the_partial_line(tmp_path):
    """The helper the fault tests watch Tune with: plain Tune copies result.json in place, so a read
    may end in half a line; the last whole line stands, and a file with none yet is not a report."""
    for trial, text in {
        "a": '{"trial_id": "a", "epoch": 1}\n{"trial_id": "a", "ep',
        "b": "",
        "c": '{"tri',
    }.items():
        (tmp_path / "ray" / trial).mkdir(parents=True)
        (tmp_path / "ray" / trial / "result.json").write_text(text)
    assert last_trial_reports(tmp_path) == {"a": {"trial_id": "a", "epoch": 1}}
