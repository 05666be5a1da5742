"""End-to-end `study tune` runs on the 8x8 digits: files, replay, dashboard, cluster, resume."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from study.cli import app

runner = CliRunner()
SMALL_STUDY = ["tune", "--dataset", "digits", "--trials", "4", "--epochs", "2", "--seed", "1", "--out"]
STATUSES = {"completed", "pruned", "diverged", "errored"}


def study_cmd(*args):
    return [sys.executable, "-m", "study", *[str(a) for a in args]]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune")
    result = runner.invoke(
        app,
        [
            *SMALL_STUDY,
            str(out),
            "--name",
            "s",
        ],
    )
    assert result.exit_code == 0, result.output
    return out / "s" / "tune", result.output


def test_study_writes_every_table_and_figure(small_study):
    folder, output = small_study
    assert "Ray dashboard: http://127.0.0.1:" in output
    trials = pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == 4 and trials["trial_id"].is_unique
    assert set(trials["status"]) <= STATUSES
    for column in (
        "optimizer",
        "lr",
        "activation",
        "pooling",
        "batch_size",
        "epochs_run",
        "best_val_acc",
        "final_val_acc",
        "test_acc",
        "wall_s",
        "images_per_s",
        "seed",
        "data_checksum",
    ):
        assert column in trials.columns
    assert pd.read_csv(folder / "trials.csv").shape[0] == 4
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert set(epochs["trial_id"]) == set(trials["trial_id"])
    assert epochs.groupby("trial_id")["epoch"].max().max() == 2
    summary = (folder / "summary.md").read_text()
    assert "Top 10 trials" in summary and "by optimizer" in summary and "by batch_size" in summary
    for png in ("optimization_history", "val_acc_vs_lr", "param_importance", "learning_curves_top5"):
        assert (folder / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(folder.glob("ray/*/events.out.tfevents.*")), "TensorBoard logs missing"


def test_best_json_replays_exactly_outside_ray(small_study, tmp_path):
    folder, _ = small_study
    best = json.loads((folder / "best.json").read_text())
    trials = pd.read_parquet(folder / "trials.parquet")
    completed = trials[trials["status"] == "completed"]
    assert best["metrics"]["final_val_acc"] == completed["final_val_acc"].max()
    result = runner.invoke(
        app, ["train", "--config", str(folder / "best.json"), "--out", str(tmp_path), "--name", "replay"]
    )
    assert result.exit_code == 0, result.output
    replay = json.loads((tmp_path / "replay" / "train" / "result.json").read_text())
    assert replay["val_acc"] == best["metrics"]["final_val_acc"]
    assert replay["test_acc"] == best["metrics"]["test_acc"]


def test_two_one_thread_trials_run_side_by_side(small_study):
    folder, _ = small_study
    trials = pd.read_parquet(folder / "trials.parquet")
    spans = list(zip(trials["start_time"], trials["end_time"], strict=True))
    peak = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert peak >= 2  # trials overlapped in time: 2 cores, --cpus-per-trial 1
    _, output = small_study
    assert "2 at a time (1 CPU, 0 GPU each)" in output  # the plan Ray was given


def test_dashboard_answers_http_while_the_study_runs(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        study_cmd(
            "tune",
            "--dataset",
            "digits",
            "--trials",
            "6",
            "--epochs",
            "15",
            "--scheduler",
            "none",
            "--dashboard-port",
            port,
            "--out",
            tmp_path,
            "--name",
            "d",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    answer = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and answer is None:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/api/version")
            token = Path.home() / ".ray" / "auth_token"  # Ray's token auth, when enabled
            if token.is_file():
                request.add_header("Authorization", f"Bearer {token.read_text().strip()}")
            try:
                with urllib.request.urlopen(request, timeout=2) as r:
                    answer = json.loads(r.read())
            except OSError:
                time.sleep(0.2)
    finally:
        output, _ = proc.communicate(timeout=300)
    assert answer is not None, output
    assert "ray_version" in answer
    assert proc.returncode == 0, output


@pytest.mark.slow
def test_study_joins_a_ray_head_started_with_ray_start(tmp_path):
    port = free_port()
    ray_bin = str(Path(sys.executable).parent / "ray")
    # Ray's unix sockets live under RAY_TMPDIR and must stay under 108 characters.
    # RAY_AUTH_MODE=token: the head requires Ray's token (~/.ray/auth_token), so drivers send it.
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="rt", dir="/tmp"), "RAY_AUTH_MODE": "token"}
    if not (Path.home() / ".ray" / "auth_token").is_file():
        subprocess.run([ray_bin, "get-auth-token", "--generate"], check=True, capture_output=True, env=env)
    subprocess.run(
        [
            ray_bin,
            "start",
            "--head",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--num-gpus",
            "2",
            "--include-dashboard",
            "false",
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    try:
        # Logical GPUs only: trials ask for half a GPU each but train on the CPU (--device cpu).
        done = subprocess.run(
            study_cmd(
                "tune",
                "--dataset",
                "digits",
                "--trials",
                "3",
                "--epochs",
                "1",
                "--address",
                f"127.0.0.1:{port}",
                "--gpus-per-trial",
                "0.5",
                "--device",
                "cpu",
                "--out",
                tmp_path,
                "--name",
                "a",
            ),
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0.5 GPU each" in done.stdout
        trials = pd.read_parquet(tmp_path / "a" / "tune" / "trials.parquet")
        assert len(trials) == 3 and set(trials["status"]) <= STATUSES
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, env=env)


def _finished_trials(folder: Path) -> int:
    count = 0
    for result in folder.glob("ray/*/result.json"):
        lines = result.read_text().splitlines()
        if lines and json.loads(lines[-1]).get("status") in ("completed", "diverged"):
            count += 1
    return count


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_study_resumes_without_losing_or_repeating_trials(tmp_path, sig):
    args = (
        "tune",
        "--dataset",
        "digits",
        "--trials",
        "6",
        "--epochs",
        "3",
        "--scheduler",
        "none",
        "--max-concurrent",
        "1",
        "--batch-size",
        "32",
        "--out",
        tmp_path,
        "--name",
        "r",
    )
    folder = tmp_path / "r" / "tune"
    proc = subprocess.Popen(
        study_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    deadline = time.time() + 180
    while time.time() < deadline and _finished_trials(folder) < 2 and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    time.sleep(3)  # let Tune write its experiment state after those trials
    finished_before = {
        json.loads(p.read_text().splitlines()[-1])["trial_id"]: json.loads(p.read_text().splitlines()[-1])
        for p in folder.glob("ray/*/result.json")
        if p.read_text().strip() and json.loads(p.read_text().splitlines()[-1])["status"] == "completed"
    }
    if sig == signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.send_signal(sig)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0, output
    resumed = subprocess.run(study_cmd(*args, "--resume"), capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    trials = pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == 6 and trials["trial_id"].is_unique
    assert set(trials["status"]) <= STATUSES
    by_id = trials.set_index("trial_id")
    for trial_id, metrics in finished_before.items():
        assert by_id.loc[trial_id, "final_val_acc"] == metrics["val_acc"]  # kept, not re-run
    assert len(finished_before) >= 2


def test_resume_with_a_different_space_is_refused(small_study, tmp_path):
    folder, _ = small_study
    out = folder.parent.parent
    result = runner.invoke(
        app,
        [
            "tune",
            "--dataset",
            "digits",
            "--trials",
            "4",
            "--epochs",
            "2",
            "--seed",
            "1",
            "--optimizer",
            "adam",
            "--out",
            str(out),
            "--name",
            "s",
            "--resume",
        ],
    )
    assert result.exit_code == 2 and "different space" in result.stderr


def test_rerun_without_resume_does_not_overwrite(small_study):
    folder, _ = small_study
    before = (folder / "trials.parquet").read_bytes()
    result = runner.invoke(
        app,
        [
            *SMALL_STUDY,
            str(folder.parent.parent),
            "--name",
            "s",
        ],
    )
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert (folder / "trials.parquet").read_bytes() == before


def test_first_trial_is_the_default_config_when_the_space_holds_it():
    from study.tune.run import default_point
    from study.tune.space import default_space, parse_space

    base = {"dataset": "digits", "epochs": 1, "seed": 0, "threads": 1, "device": None}
    assert default_point(base, default_space()) == [
        {"optimizer": "adam", "lr": 1e-3, "activation": "relu", "pooling": "max", "batch_size": 32}
    ]
    narrow = parse_space({"space": {"lr": {"low": 0.01, "high": 0.1}}}, source="t")
    assert default_point(base, narrow) == []  # 1e-3 lies outside: no point forced
    classic = {**base, "variant": "classic"}
    assert default_point(classic, default_space())[0]["activation"] == "tanh"


def test_config_file_fills_only_unsearched_fields_and_flags_fix_searched_ones():
    from study.common.cluster import ClusterOptions
    from study.tune.run import split_base_and_space
    from study.tune.space import default_space

    best = {
        "dataset": "digits",
        "optimizer": "sgd",
        "lr": 0.5,
        "epochs": 7,
        "device": "cpu",
        "threads": 4,
        "weight_decay": 1e-4,
    }
    base, space = split_base_and_space(
        default_space(), best, {"pooling": "avg"}, seed=3, cluster=ClusterOptions(cpus_per_trial=1)
    )
    assert set(space.params) == {"optimizer", "lr", "activation", "batch_size"}
    assert base["epochs"] == 7 and base["weight_decay"] == 1e-4 and base["pooling"] == "avg"
    assert "optimizer" not in base and base["threads"] == 1 and base["device"] is None
    assert base["seed"] == 3
