"""A tune study and an ensemble on a two-node loopback cluster (ray.cluster_utils.Cluster, every
node on 127.0.0.1): work spreads over both nodes, results match a one-node run with the same
seeds, and losing the worker node mid-study loses and duplicates nothing.

Only the nodes these tests start are stopped (Cluster.remove_node / shutdown)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from lenet_core.config import TrialConfig
from lenet_core.data import load_dataset
from study.common.cluster import ClusterOptions, ray_session
from study.common.context import RunContext
from study.common.executor import map_on_ray
from study.common.selection import SELECTION_METRIC
from study.stages.ensemble.run import EnsemblePlan, run_ensemble
from study.stages.tune.run import TuneSettings, run_study
from study.stages.tune.space import parse_space
from tests.conftest import RUN_LIMIT_S, last_trial_reports, run_bounded, two_node_cluster
from tests.study.common.test_cluster import collect, node_of

pytestmark = pytest.mark.slow
SPACE = parse_space({"space": {"lr": {"choices": [0.001, 0.002, 0.003, 0.004]}}}, source="test")
BASE = TrialConfig(dataset="digits", epochs=2, optimizer="adam", seed=3)


def _context(cluster: ClusterOptions, out: Path, name: str) -> RunContext:
    return RunContext(
        data=load_dataset("digits"), out=out, name=name, cluster=cluster, progress=lambda *_: None
    )


def _study(cluster: ClusterOptions, out: Path, *, trials: int = 4, base: TrialConfig = BASE) -> pd.DataFrame:
    results = run_bounded(
        lambda: run_study(
            base=base,
            space=SPACE,
            settings=TuneSettings(trials=trials, scheduler="none"),
            context=_context(cluster, out, "m"),
        )
    )
    return results.trials


def _content(trials: pd.DataFrame) -> pd.DataFrame:
    """What a study found, independent of where and when each trial ran."""
    columns = ["lr", "status", "epochs_run", "best_val_acc", "final_val_acc", "test_acc"]
    return trials[columns].sort_values("lr").reset_index(drop=True)


def test_tune_trials_spread_over_both_nodes_and_match_a_one_node_run(loopback_cluster, tmp_path):
    cluster, worker = loopback_cluster
    spread = _study(ClusterOptions(address=cluster.address), tmp_path / "cluster")
    assert len(spread) == 4 and spread["trial_id"].is_unique
    assert set(spread["node_id"]) == {cluster.head_node.node_id, worker.node_id}
    assert set(spread["node_ip"]) == {"127.0.0.1"}
    # the dataset reached the worker node through the object store: it trained on the same data
    configs = [json.loads(c) for c in spread["config"]]
    assert {c["threads"] for c in configs} == {1} and {c["device"] for c in configs} == {"cpu"}
    local = _study(ClusterOptions(max_concurrent=2, dashboard=False), tmp_path / "local")
    pd.testing.assert_frame_equal(_content(spread), _content(local))


# Put on a node's PYTHONPATH: each Ray worker process there starts late, as on a cold or busy
# machine (importing torch there takes seconds). Agents and the raylet are not slowed.
LATE_WORKERS = """\
import os, sys, time
if os.environ.get("LATE_WORKER_S") and "default_worker" in (sys.argv[0] if sys.argv else ""):
    time.sleep(float(os.environ["LATE_WORKER_S"]))
"""


def test_tune_trials_spread_over_a_node_whose_workers_start_late(ray_env: Path, tmp_path: Path):
    """`study tune --address` on two 1-CPU nodes ran all 6 trials on one: with Tune's actor reuse,
    the head's actor, free again after a 1-epoch trial, took each trial waiting for an actor
    starting on the other node (and Tune cancelled that one). Reuse is for one node only."""
    late = tmp_path / "late"
    late.mkdir()
    (late / "sitecustomize.py").write_text(LATE_WORKERS)
    path = os.pathsep.join(filter(None, [str(late), os.environ.get("PYTHONPATH")]))
    with two_node_cluster(worker_env={"PYTHONPATH": path, "LATE_WORKER_S": "8"}) as (cluster, worker):
        command = [sys.executable, "-m", "study", "tune", "--dataset", "digits", "--trials", "4"]
        command += ["--epochs", "1", "--address", cluster.address, "--out", str(tmp_path), "--name", "s"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_LIMIT_S)
        assert done.returncode == 0, done.stdout + done.stderr
        head = cluster.head_node.node_id
    trials = pd.read_parquet(tmp_path / "s" / "tune" / "trials.parquet")
    assert len(trials) == 4 and set(trials["status"]) <= {"completed", "pruned", "diverged", "collapsed"}
    assert set(trials["node_id"]) == {head, worker.node_id}, trials[["trial_id", "node_id"]]


def test_tasks_spread_over_nodes_with_room_to_spare(ray_env: Path, tmp_path: Path):
    """Two tasks at once on two 4-CPU nodes: Ray's default put both on the driver's node (it
    fills a node to half first); the executor's tasks go one to each."""
    marks = tmp_path / "marks"
    marks.mkdir()
    results: list[tuple[int, str]] = []
    with two_node_cluster(cpus=4) as (cluster, worker):
        with ray_session(ClusterOptions(address=cluster.address, max_concurrent=2)) as session:
            assert session.plan.concurrent == 2 and session.plan.nodes == 2
            run_bounded(
                lambda: map_on_ray(
                    node_of,
                    [0, 1],
                    data={"marks": str(marks), "peers": 2},  # each waits for the other: both at once
                    plan=session.plan,
                    label="items",
                    name=str,
                    on_result=collect(results),
                )
            )
        assert {node for _, node in results} == {cluster.head_node.node_id, worker.node_id}


def _running_on(folder: Path, node_id: str) -> set[str]:
    """Trials whose last report says they are mid-way on ``node_id``."""
    return {
        trial_id
        for trial_id, last in last_trial_reports(folder).items()
        if last.get("node_id") == node_id and last.get("status") == "running" and last.get("epoch", 0) >= 2
    }


def _remove_when_busy(cluster, worker, folder: Path) -> dict[str, set[str]]:
    """Remove the worker node as soon as a trial is mid-way on it; returns {"lost": trial ids}."""
    lost: dict[str, set[str]] = {}

    def watch() -> None:
        deadline = time.monotonic() + RUN_LIMIT_S
        while time.monotonic() < deadline:
            busy = _running_on(folder, worker.node_id)
            if busy:
                cluster.remove_node(worker)  # the worker's raylet and the trial on it die
                lost["lost"] = busy
                return
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    return lost


def test_tune_study_survives_losing_the_worker_node(loopback_cluster, tmp_path, monkeypatch):
    cluster, worker = loopback_cluster
    # A trial's result.json reaches the study folder only when Tune saves its experiment state
    # (every 10 s by default, read when the study starts): save every 1 s so a trial is seen mid-way.
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Seconds per trial, so that the node goes while a trial is mid-way: 30 epochs of 101 steps
    # (batch 16) take about 10 s; at batch 64 a trial ended within 3 s, before it was seen running.
    epochs_per_trial = 30
    folder = tmp_path / "m" / "tune"
    lost = _remove_when_busy(cluster, worker, folder)
    base = BASE.replace(epochs=epochs_per_trial, batch_size=16)
    trials = _study(ClusterOptions(address=cluster.address), tmp_path, base=base)
    assert lost.get("lost"), "the worker node was never busy"
    assert len(trials) == 4 and trials["trial_id"].is_unique  # every trial, once
    assert set(trials["status"]) == {"completed"} and (trials["epochs_run"] == epochs_per_trial).all()
    by_id = trials.set_index("trial_id")
    for trial_id in lost["lost"]:  # the lost trial ran again, on the head, from its first epoch
        assert by_id.loc[trial_id, "node_id"] == cluster.head_node.node_id
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert not epochs.duplicated(["trial_id", "epoch"]).any()  # the lost attempt's rows are gone
    expected = list(range(1, epochs_per_trial + 1))
    assert all(list(e) == expected for e in epochs.groupby("trial_id")["epoch"].apply(list))


def _ensemble(cluster: ClusterOptions, out: Path) -> pd.DataFrame:
    config = TrialConfig(dataset="digits", epochs=1, seed=5)
    run_bounded(
        lambda: run_ensemble(
            [config],
            base=config,
            plan=EnsemblePlan(members=2, resample="bootstrap", resnet="none"),
            context=_context(cluster, out, "e"),
        )
    )
    return pd.read_parquet(out / "e" / "ensemble" / "members.parquet")


def test_ensemble_members_spread_over_both_nodes_and_match_a_one_node_run(loopback_cluster, tmp_path):
    cluster, worker = loopback_cluster
    spread = _ensemble(ClusterOptions(address=cluster.address), tmp_path / "cluster")
    assert len(spread) == 4 and spread["name"].is_unique
    assert set(spread["node_id"]) == {cluster.head_node.node_id, worker.node_id}
    local = _ensemble(ClusterOptions(dashboard=False), tmp_path / "local")
    columns = ["name", "seed", "bootstrap_seed", "status", SELECTION_METRIC, "test_acc"]
    pd.testing.assert_frame_equal(
        spread[columns].sort_values("name").reset_index(drop=True),
        local[columns].sort_values("name").reset_index(drop=True),
    )
    comparison = pd.read_parquet(tmp_path / "cluster" / "e" / "ensemble" / "comparison.parquet")
    local_comparison = pd.read_parquet(tmp_path / "local" / "e" / "ensemble" / "comparison.parquet")
    pd.testing.assert_series_equal(comparison["test_acc"], local_comparison["test_acc"])
