"""End-to-end `study tune` runs on the 8x8 digits: files, replay, concurrency, dashboard, a
`ray start` head, interrupt and resume.

Every process these tests stop is one they started, by its PID (or process group); Ray's files
and token live under the temporary HOME and RAY_TMPDIR that conftest.py sets.
"""

import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from lenet_core.config import TrialConfig, from_dict
from study.cli import app
from tests.conftest import digits_study_identity, last_trial_reports, started_study

runner = CliRunner()
SMALL_STUDY = ["tune", "--dataset", "digits", "--trials", "4", "--epochs", "2", "--seed", "1"]
STATUSES = {"completed", "pruned", "diverged", "collapsed", "errored"}


def study_cmd(*args):
    return [sys.executable, "-m", "study", *[str(a) for a in args]]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def small_study(shared_ray, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune")
    result = runner.invoke(app, [*SMALL_STUDY, "--max-concurrent", "2", "--out", str(out), "--name", "s"])
    assert result.exit_code == 0, result.output
    return out / "s" / "tune", result.output


def test_study_writes_every_table_and_figure(small_study):
    folder, output = small_study
    # the module's Ray (conftest.py's shared_ray) is used as it is, and left running
    assert "Ray dashboard: none in the Ray session this process already runs" in output
    import ray

    assert ray.is_initialized()
    trials = pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == 4 and trials["trial_id"].is_unique
    assert list(trials["trial"]) == [1, 2, 3, 4]
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
        "node_ip",
        "config",
    ):
        assert column in trials.columns
    assert pd.read_csv(folder / "trials.csv").shape[0] == 4
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert set(epochs["trial_id"]) == set(trials["trial_id"])
    assert epochs.groupby("trial_id")["epoch"].max().max() == 2
    summary = (folder / "summary.md").read_text()
    assert "Top 10 trials" in summary and "by optimizer (completed trials only)" in summary
    for png in ("optimization_history", "val_acc_vs_lr", "param_importance", "learning_curves_top5"):
        assert (folder / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(folder.glob("ray/*/events.out.tfevents.*")), "TensorBoard logs missing"


def test_config_column_is_the_json_config_each_trial_ran_with(small_study):
    folder, _ = small_study
    trials = pd.read_parquet(folder / "trials.parquet")
    for row in trials.itertuples():
        config = from_dict(json.loads(row.config))  # plain JSON, a whole valid TrialConfig
        assert isinstance(config, TrialConfig)
        assert (config.optimizer, config.lr, config.batch_size) == (row.optimizer, row.lr, row.batch_size)
        # placed by the worker: what ran, not "auto" / "0 threads"
        assert config.device == "cpu" and config.threads == 1
        assert config.dataset == "digits" and config.seed == 1 and config.epochs == 2


def test_pruned_trials_are_not_tested_and_failed_ones_are_named(small_study):
    folder, _ = small_study
    trials = pd.read_parquet(folder / "trials.parquet")
    assert trials.loc[trials["status"] == "pruned", "test_acc"].isna().all()
    finished = trials[trials["status"].isin(["completed", "diverged", "collapsed"])]
    # a trial ASHA stopped at chance is named collapsed but was never tested either
    stopped_at_chance = (finished["status"] == "collapsed") & (finished["epochs_run"] < 2)
    assert finished.loc[~stopped_at_chance, "test_acc"].notna().all()
    ran_every_epoch = trials["status"] == "completed"
    assert (trials.loc[ran_every_epoch, "epochs_run"] == 2).all()  # a diverged run stops where it blew up
    # ASHA's grace period (3) is clipped to the 2-epoch cap: no trial is stopped before the cap
    assert (trials.loc[trials["status"] != "diverged", "epochs_run"] == 2).all()
    summary = (folder / "summary.md").read_text()
    failed = trials[trials["status"].isin(["diverged", "collapsed"])]
    assert ("Failed trials" in summary) == (len(failed) > 0)


def test_best_json_replays_exactly_outside_ray(small_study, tmp_path):
    folder, _ = small_study
    best = json.loads((folder / "best.json").read_text())
    trials = pd.read_parquet(folder / "trials.parquet")
    completed = trials[trials["status"] == "completed"]
    assert best["metrics"]["best_val_acc"] == completed["best_val_acc"].max()
    result = runner.invoke(
        app, ["train", "--config", str(folder / "best.json"), "--out", str(tmp_path), "--name", "replay"]
    )
    assert result.exit_code == 0, result.output
    replay = json.loads((tmp_path / "replay" / "train" / "result.json").read_text())
    assert replay["best_val_acc"] == best["metrics"]["best_val_acc"]
    assert replay["test_acc"] == best["metrics"]["test_acc"]


def test_trials_run_exactly_as_many_at_a_time_as_planned(small_study):
    """Tune's own count: each plain epoch line says how many trials Tune had running when that
    result came in (its trial table, not clocks); the most is the plan."""
    folder, output = small_study
    planned = int(re.search(r"(\d+) at a time", output).group(1))
    assert planned == min(2, os.cpu_count())  # --max-concurrent 2, 1 CPU per trial
    epoch_line = re.compile(r"^trial \d+ \(\w+\) epoch .* (\d+) running, ", re.MULTILINE)
    running = [int(n) for n in epoch_line.findall(output)]
    assert len(running) == len(pd.read_parquet(folder / "epochs.parquet"))  # a line per epoch result
    assert max(running) == planned


def test_rerun_without_resume_is_refused_and_overwrite_replaces(small_study, tmp_path):
    folder, _ = small_study
    before = (folder / "trials.parquet").read_bytes()
    result = runner.invoke(app, [*SMALL_STUDY, "--out", str(folder.parent.parent), "--name", "s"])
    assert result.exit_code == 2 and "already holds results" in result.stderr
    assert "--resume" in result.stderr and "--overwrite" in result.stderr
    assert (folder / "trials.parquet").read_bytes() == before


def test_resume_with_a_different_space_is_refused(small_study):
    folder, _ = small_study
    out = folder.parent.parent
    result = runner.invoke(
        app, [*SMALL_STUDY, "--optimizer", "adam", "--out", str(out), "--name", "s", "--resume"]
    )
    assert result.exit_code == 2 and "different space" in result.stderr


def test_asha_settings_are_recorded_clipped_to_the_epoch_cap(small_study):
    folder, output = small_study
    identity = json.loads((folder / "study.json").read_text())
    run = json.loads((folder / "run.json").read_text())
    # the default grace period, 3 epochs, clipped to the study's 2-epoch cap, and Hyperband's 3
    assert (identity["grace_period"], identity["reduction_factor"]) == (2, 3.0)
    assert (run["scheduler"], run["grace_period"], run["reduction_factor"]) == ("asha", 2, 3.0)
    assert "ASHA: every trial trains 2 epochs before it may be stopped (--grace-period 3 clipped" in output


def test_resume_with_other_asha_settings_is_refused(small_study):
    folder, _ = small_study
    out = folder.parent.parent
    changes = [("--grace-period", "1", "grace period"), ("--reduction-factor", "4", "reduction factor")]
    for flag, value, what in changes:
        result = runner.invoke(app, [*SMALL_STUDY, flag, value, "--out", str(out), "--name", "s", "--resume"])
        assert result.exit_code == 2 and f"different {what}" in result.stderr, result.output


def test_a_study_json_from_before_the_asha_keys_resumes_only_with_what_it_ran(tmp_path):
    from lenet_core.errors import StudyError
    from study.stages.tune.run import TuneSettings, check_resume

    identity = digits_study_identity(TuneSettings(trials=4, grace_period=1, reduction_factor=4))
    old = {k: v for k, v in identity.items() if k not in ("grace_period", "reduction_factor")}
    folder = started_study(tmp_path / "old" / "tune", json.loads(json.dumps(old)))
    assert check_resume(folder, identity, resume=True)  # old studies ran ASHA at grace 1, factor 4
    new = digits_study_identity(TuneSettings(trials=4))
    with pytest.raises(StudyError, match="different grace period"):
        check_resume(folder, new, resume=True)
    fifo_identity = digits_study_identity(TuneSettings(trials=4, scheduler="none"))
    assert (fifo_identity["grace_period"], fifo_identity["reduction_factor"]) == (None, None)  # no rungs
    old_fifo = {k: v for k, v in fifo_identity.items() if k not in ("grace_period", "reduction_factor")}
    assert check_resume(started_study(tmp_path / "fifo" / "tune", old_fifo), fifo_identity, resume=True)


@pytest.mark.parametrize(
    ("name", "whole"),
    [
        ("searcher-state-2026-12-07_04-23-30.pkl", pickle.dumps({"counter": 3, "blob": bytes(5000)})),
        ("search_gen_state-2026-12-07_04-23-30.json", pickle.dumps({"counter": 3})),  # a pickle, so named
        ("experiment_state-2026-12-07_04-23-30.json", json.dumps({"trial_data": [["{}", "{}"]]}).encode()),
    ],
    ids=["searcher", "search-generator", "experiment"],
)
def test_a_resume_from_tune_state_cut_short_is_refused_naming_the_file(tmp_path, name, whole):
    """A study killed while Tune copied its state (before those copies were atomic) left a truncated
    file; Tune's restore fails on it, starts the study over inside the half-restored run and hangs."""
    from lenet_core.errors import StudyError
    from study.stages.tune.run import TuneSettings, check_resume

    identity = digits_study_identity(TuneSettings(trials=4))
    folder = started_study(tmp_path / "s" / "tune", identity)
    (folder / "ray" / name).write_bytes(whole)
    assert check_resume(folder, identity, resume=True)
    for cut in (whole[: len(whole) // 2], b""):
        (folder / "ray" / name).write_bytes(cut)
        with pytest.raises(StudyError, match=rf"--resume: Tune's saved state .*/ray/{name} is cut short"):
            check_resume(folder, identity, resume=True)


def test_resume_from_a_searcher_state_cut_short_exits_2_and_changes_nothing(small_study, tmp_path):
    folder, _ = small_study
    # Tune was given the atomic file system (study.common.tune_storage): its pickled Tuner names it
    assert b"study.common.tune_storage" in (folder / "ray" / "tuner.pkl").read_bytes()
    copy = tmp_path / "s" / "tune"
    shutil.copytree(folder, copy)
    (searcher_state,) = copy.glob("ray/searcher-state-*.pkl")
    searcher_state.write_bytes(searcher_state.read_bytes()[:1000])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    args = [*SMALL_STUDY, "--max-concurrent", "2", "--out", str(tmp_path), "--name", "s", "--resume"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"Tune's saved state {searcher_state.resolve()} is cut short" in result.stderr
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"} == {
        p: b for p, b in before.items() if p.name != ".lock"
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grace-period", "0"], "error: --grace-period must be a whole number of epochs >= 1, got 0"),
        (["--grace-period", "-2"], "error: --grace-period must be a whole number of epochs >= 1, got -2"),
        (["--reduction-factor", "1"], "error: --reduction-factor must be a number > 1"),
        (["--reduction-factor", "0.5"], "error: --reduction-factor must be a number > 1"),
        (["--reduction-factor", "inf"], "error: --reduction-factor must be a number > 1"),
    ],
)
def test_bad_asha_settings_exit_2_with_one_line(tmp_path, args, message):
    result = runner.invoke(app, [*SMALL_STUDY, *args, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_help_explains_the_asha_flags():
    result = runner.invoke(app, ["tune", "--help"], terminal_width=200)
    text = " ".join(result.stdout.split())
    assert "--grace-period" in text and "--reduction-factor" in text
    assert "epochs every trial trains before it may be stopped" in text
    assert "Default: 3, clipped to --epochs when larger" in text
    assert "only the top 1/F of the trials at a rung continue (> 1). Default: 3." in text


def test_the_cli_defaults_are_the_studys():
    from study.stages.tune.run import TuneSettings
    from study.stages.tune.space import GRACE_PERIOD, REDUCTION_FACTOR

    settings = TuneSettings(trials=1)
    assert (settings.grace_period, settings.reduction_factor) == (GRACE_PERIOD, REDUCTION_FACTOR) == (3, 3.0)
    assert settings.grace_epochs(20) == 3 and settings.grace_epochs(2) == 2


@pytest.mark.parametrize(
    ("grace", "factor", "epochs", "rungs"),
    [(3, 3, 20, [3, 9]), (1, 4, 20, [1, 4, 16]), (3, 3, 5, [3]), (3, 3, 2, []), (2, 2.5, 20, [2, 5, 12.5])],
)
def test_the_printed_rungs_are_the_ones_ray_asha_uses(grace, factor, epochs, rungs):
    from ray.tune.schedulers import ASHAScheduler

    from study.stages.tune.run import TuneSettings, asha_rungs

    settings = TuneSettings(trials=1, grace_period=grace, reduction_factor=factor)
    assert asha_rungs(settings, epochs) == rungs
    asha = ASHAScheduler(max_t=epochs, grace_period=settings.grace_epochs(epochs), reduction_factor=factor)
    # Ray keeps its rungs in a private list (largest first); a rung at the cap stops nothing
    ray_rungs = sorted(milestone for milestone, _ in asha._brackets[0]._rungs)
    assert [r for r in ray_rungs if r < epochs] == rungs


@pytest.mark.usefixtures("shared_ray")  # one local Ray for the module (conftest.py)
def test_a_process_already_running_ray_cannot_join_another_cluster(tmp_path):
    args = ["tune", "--dataset", "digits", "--trials", "1", "--epochs", "1", "--address", "127.0.0.1:6379"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "Ray already runs in this process" in result.stderr and result.stderr.count("\n") == 1
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_first_trial_is_the_default_config_when_the_space_holds_it():
    from study.stages.tune.run import default_point
    from study.stages.tune.space import default_space, parse_space

    base = TrialConfig(dataset="digits", epochs=1)
    assert default_point(base, default_space()) == [
        {
            "optimizer": "adam",
            "lr": 1e-3,
            "activation": "relu",
            "pooling": "max",
            "batch_size": 32,
            "lr_schedule": "constant",
            # no weight decay (Adam's PyTorch default, 0) is the log range's tiny low end
            "weight_decay": 1e-6,
            "label_smoothing": 0.0,
            "augment": "none",
        }
    ]
    adamw = parse_space({"space": {"weight_decay": {"low": 1e-6, "high": 1e-1, "log": True}}}, source="t")
    assert default_point(TrialConfig(optimizer="adamw"), adamw) == [{"weight_decay": 0.01}]  # AdamW's own
    steps = parse_space({"space": {"lr_step_size": {"low": 2, "high": 8}}}, source="t")
    assert default_point(TrialConfig(epochs=12), steps) == [{"lr_step_size": 4}]  # a third of 12 epochs
    assert default_point(TrialConfig(epochs=30, lr_schedule="step"), steps) == []  # 10 lies outside
    # under any other schedule step's fields change nothing: the nearest value in range will do
    assert default_point(TrialConfig(epochs=30), steps) == [{"lr_step_size": 8}]
    assert default_point(TrialConfig(epochs=1), steps) == [{"lr_step_size": 2}]
    narrow = parse_space({"space": {"lr": {"low": 0.01, "high": 0.1}}}, source="t")
    assert default_point(base, narrow) == []  # 1e-3 lies outside: no point forced
    classic = TrialConfig(dataset="digits", variant="classic", activation="tanh", pooling="avg")
    assert default_point(classic, default_space())[0]["activation"] == "tanh"
    # the 1998 net's own scaled tanh is not among the searched activations: nothing forced
    assert default_point(TrialConfig(dataset="digits", variant="classic"), default_space()) == []


def test_config_file_fills_only_unsearched_fields_and_flags_fix_searched_ones():
    from study.stages.tune.space import default_space, split_base_and_space

    best = {
        "dataset": "digits",
        "optimizer": "sgd",
        "lr": 0.5,
        "epochs": 7,
        "device": "cpu",
        "threads": 4,
        "weight_decay": 1e-4,
        "patience": 2,
        "seed": 3,
    }
    base, space = split_base_and_space(default_space(), best, {"pooling": "avg"})
    assert set(space.params) == set(default_space().params) - {"pooling"}
    assert (base.epochs, base.patience, base.pooling, base.seed) == (7, 2, "avg", 3)
    # the file's optimizer, lr and weight decay are searched, its device and threads give way to
    # Ray's placement
    default = TrialConfig()
    assert (base.optimizer, base.lr, base.weight_decay) == (default.optimizer, default.lr, None)
    assert (base.device, base.threads) == (default.device, default.threads)


def _authorized(request):
    token = Path.home() / ".ray" / "auth_token"  # Ray's token auth, when enabled (temporary HOME)
    if token.is_file():
        request.add_header("Authorization", f"Bearer {token.read_text().strip()}")
    return request


@pytest.mark.slow
def test_dashboard_answers_http_while_the_study_runs_and_ctrl_c_exits_130(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        study_cmd(
            # far longer than the test: it is stopped by Ctrl-C once the dashboard has answered
            *("tune", "--dataset", "digits", "--trials", "2", "--epochs", "10000", "--scheduler", "none"),
            *("--dashboard", "--dashboard-port", port, "--out", tmp_path, "--name", "d"),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    answer = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and answer is None:
            request = _authorized(urllib.request.Request(f"http://127.0.0.1:{port}/api/version"))
            try:
                with urllib.request.urlopen(request, timeout=2) as r:
                    answer = json.loads(r.read())
            except OSError:
                time.sleep(0.2)
        # Ctrl-C once a trial is training (Tune's own handler is in place by then)
        while (
            time.time() < deadline and proc.poll() is None and not last_trial_reports(tmp_path / "d" / "tune")
        ):
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # the study is not under test: stop it (our own child)
        stdout, stderr = proc.communicate(timeout=120)
    assert answer is not None, stdout + stderr
    assert "ray_version" in answer
    assert f"Ray dashboard: http://127.0.0.1:{port}" in stdout
    assert proc.returncode == 130, stdout + stderr
    assert "continue with: study tune" in stderr and "--resume" in stderr


def _wait_until_the_head_node_is_up(address: str, env: dict) -> str:
    """The GCS port opens before the head's raylet registers: wait for a live node here."""
    from lenet_core.errors import StudyError
    from study.common.cluster import probe_ray_cluster

    deadline = time.time() + 90
    while True:
        try:
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("RAY_AUTH_MODE", env["RAY_AUTH_MODE"])
                probe_ray_cluster(address)
            return address
        except StudyError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture
def ray_head(tmp_path):
    """A `ray start --head` cluster with 2 logical GPUs, in its own process group; only that
    group is stopped afterwards."""
    port = free_port()
    ray_bin = str(Path(sys.executable).parent / "ray")
    # RAY_AUTH_MODE=token: the head requires Ray's token ($HOME/.ray/auth_token), so drivers send it.
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    if not (Path.home() / ".ray" / "auth_token").is_file():
        subprocess.run([ray_bin, "get-auth-token", "--generate"], check=True, capture_output=True, env=env)
    head = subprocess.Popen(
        [
            ray_bin,
            "start",
            "--head",
            "--block",
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
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        yield _wait_until_the_head_node_is_up(f"127.0.0.1:{port}", env), env
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the head's own process group: its GCS, raylet, workers
        head.wait(timeout=30)


@pytest.mark.slow
def test_study_joins_a_ray_head_started_with_ray_start(ray_head, tmp_path):
    address, env = ray_head
    # Logical GPUs only: trials ask for half a GPU each but train on the CPU (--device cpu).
    done = subprocess.run(
        study_cmd(
            *("tune", "--dataset", "digits", "--trials", "3", "--epochs", "1", "--address", address),
            *("--gpus-per-trial", "0.5", "--device", "cpu", "--out", tmp_path, "--name", "a"),
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
    assert {json.loads(c)["device"] for c in trials["config"]} == {"cpu"}  # --device cpu is kept


def _saved_trial_statuses(folder: Path) -> dict[str, str]:
    """Tune's status of every trial in its newest saved experiment state (what a resume restores)."""
    states = sorted(folder.glob("ray/experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not states:
        return {}
    try:
        trial_data = json.loads(states[-1].read_text())["trial_data"]
    except (OSError, ValueError, KeyError):  # being replaced right now: read it on the next poll
        return {}
    return {t["trial_id"]: t["status"] for t in (json.loads(state) for state, _ in trial_data)}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_study_resumes_without_losing_or_repeating_trials(tmp_path, sig):
    args = (
        *("tune", "--dataset", "digits", "--trials", "4", "--epochs", "8", "--scheduler", "none"),
        *("--optimizer", "adam", "--lr", "0.001", "--max-concurrent", "1"),
        *("--out", tmp_path, "--name", "r"),
        # 101 steps an epoch: a trial lasts a few seconds, longer than Tune's 2 s between saves
        # (at batch 64 two trials could end between two saves, and the study before the interrupt)
        *("--batch-size", "16"),
    )
    folder = tmp_path / "r" / "tune"
    # Tune saves its experiment state every 2 s instead of every 10 s: the events below come sooner
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "2"}
    proc = subprocess.Popen(
        study_cmd(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=env,
    )
    # Interrupt on events, never after a sleep: Tune has saved a state in which at least two trials
    # finished and at least one has not (the study is mid-way). A resume must keep those two as
    # they were; trials that finish after that save may legitimately run again after a SIGKILL.
    finished_before: dict[str, dict] = {}
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        saved = _saved_trial_statuses(folder)
        ended = [trial_id for trial_id, status in saved.items() if status == "TERMINATED"]
        rows = last_trial_reports(folder) if 2 <= len(ended) < 4 else {}
        # each ended trial's copied result.json must hold its last epoch: Tune copies the files
        # from its staging folder every 2 s, so a read can lag behind the saved state
        if rows and all(rows.get(trial_id, {}).get("epoch") == 8 for trial_id in ended):
            finished_before = {trial_id: rows[trial_id] for trial_id in ended}
            break
        time.sleep(0.1)
    assert proc.poll() is None and finished_before, proc.communicate()[0]
    if sig == signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGKILL)  # the study's own process group: driver and its workers
    else:
        proc.send_signal(sig)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), output
    if sig == signal.SIGINT:  # (a SIGKILL may lose what the pipe's buffer held)
        assert "Ray dashboard: off (--no-dashboard)" in output  # STUDY_DASHBOARD=0 (conftest.py)
    resumed = subprocess.run(study_cmd(*args, "--resume"), capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    trials = pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == 4 and trials["trial_id"].is_unique
    assert set(trials["status"]) == {"completed"}
    by_id = trials.set_index("trial_id")
    for trial_id, row in finished_before.items():
        assert by_id.loc[trial_id, "final_val_acc"] == row["val_acc"]  # kept, not re-run
        assert by_id.loc[trial_id, "start_time"] == row["started_at"]
