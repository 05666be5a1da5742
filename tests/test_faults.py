"""Faults a long study meets: a trial worker killed mid-trial, unwritable output, many trials."""

import json
import signal
import subprocess
import sys
import time

import pandas as pd
import psutil
import pytest
from typer.testing import CliRunner

from study.cli import app

runner = CliRunner()


def _trial_workers():
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline.startswith("ray::ImplicitFunc"):  # Ray's process title for a running trial
            yield proc


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
            "4",
            "--epochs",
            "12",
            "--scheduler",
            "none",
            "--out",
            str(tmp_path),
            "--name",
            "k",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    killed = None
    deadline = time.time() + 120
    while killed is None and time.time() < deadline and proc.poll() is None:
        results = list((tmp_path / "k" / "tune" / "ray").glob("*/result.json"))
        if any(p.read_text().strip() for p in results):  # a trial is past its first epoch
            for worker in _trial_workers():
                worker.send_signal(signal.SIGKILL)
                killed = worker.pid
                break
        time.sleep(0.05)
    output = proc.communicate(timeout=300)[0]
    assert killed is not None, "no trial worker was found to kill\n" + output
    assert proc.returncode == 0, output
    trials = pd.read_parquet(tmp_path / "k" / "tune" / "trials.parquet")
    assert len(trials) == 4 and trials["trial_id"].is_unique
    assert set(trials["status"]) == {"completed"}, trials[["status", "error"]]
    assert (trials["epochs_run"] == 12).all()


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
def test_two_hundred_trials_complete_and_driver_memory_stays_flat(tmp_path):
    """Ray has an open report of driver memory growing with trial count: measure ours."""
    from lenet_core.data import load_dataset
    from study.raycluster import ClusterOptions
    from study.space import default_space
    from study.tune import TuneSettings, run_study

    samples = {}

    def record(done):
        samples[done] = psutil.Process().memory_info().rss / 2**20

    trials, _, _ = run_study(
        base={
            "dataset": "digits",
            "epochs": 1,
            "seed": 0,
            "threads": 1,
            "device": None,
            "train_fraction": 0.25,
        },
        space=default_space(),
        settings=TuneSettings(trials=200, seed=0, scheduler="none"),
        cluster=ClusterOptions(),
        data=load_dataset("digits"),
        out=tmp_path,
        name="load",
        resume=False,
        say=lambda *_: None,
        on_trial_done=record,
    )
    assert len(trials) == 200 and trials["trial_id"].is_unique
    after_20, at_end = samples[20], samples[max(samples)]
    (tmp_path / "memory.json").write_text(json.dumps({"after_20_mb": after_20, "at_end_mb": at_end}))
    print(f"driver RSS after 20 trials {after_20:.0f} MB, after 200 {at_end:.0f} MB")
    assert at_end <= 1.2 * after_20
