"""One placement rule for every stage: device "auto" becomes cuda when Ray granted a GPU, threads
0 become the CPUs Ray granted, and what the user chose is kept. Tested with Ray's logical GPUs."""

import json

import pytest

from lenet_core.config import TrialConfig
from study.common.placement import Placement, current_placement, place, without_placement

GPU = Placement(cpus=3, gpu_ids=("0",), node_ip="127.0.0.1", node_id="n")
CPU_ONLY = Placement(cpus=1, gpu_ids=(), node_ip="127.0.0.1", node_id="n")


def test_auto_device_and_threads_follow_what_ray_granted():
    config = TrialConfig(dataset="digits")
    assert (config.device, config.threads) == ("auto", 0)
    assert (GPU.apply(config).device, GPU.apply(config).threads) == ("cuda", 3)
    assert (CPU_ONLY.apply(config).device, CPU_ONLY.apply(config).threads) == ("cpu", 1)
    forced = config.replace(device="cpu", threads=2)
    assert GPU.apply(forced) == forced  # the user's choice is kept
    assert without_placement(GPU.apply(config).to_dict()) == without_placement(config.to_dict())


class FakeResult:
    """What the stages read from a TrialResult; the placed config is what we check."""

    def __init__(self, config):
        self.config = config
        self.history = [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "status": "completed"}]
        self.state_dict = {}

    def summary(self):
        return {"config": self.config.to_dict(), "status": "completed", "test_acc": 0.5}


@pytest.fixture
def granted_a_gpu(monkeypatch):
    """Every stage's worker entry point, run here as if Ray had granted 3 CPUs and one GPU."""
    seen = []

    def fake_train(config, data, **_):
        seen.append(config)
        return FakeResult(config)

    monkeypatch.setattr("study.common.placement.current_placement", lambda: GPU)
    # each stage's worker calls train_trial
    for module in ("study.stages.sweep.run", "study.stages.tune.trial"):
        monkeypatch.setattr(f"{module}.train_trial", fake_train)
    return seen


def test_sweep_runs_are_placed_in_the_worker(granted_a_gpu, digits):
    from study.common.executor import placed_work
    from study.stages.sweep.run import SweepRun, train_run

    output = placed_work((train_run, SweepRun(0, TrialConfig(dataset="digits", epochs=1))), digits)
    assert (granted_a_gpu[0].device, granted_a_gpu[0].threads) == ("cuda", 3)
    assert output.summary["config"]["device"] == "cuda" and output.summary["node_ip"] == "127.0.0.1"


def test_tune_trials_are_placed_in_the_worker_and_report_the_config_they_ran(
    granted_a_gpu, digits, monkeypatch
):
    from ray import tune

    from study.stages.tune.trial import tune_trainable

    monkeypatch.setattr(tune, "report", lambda metrics: None)
    tune_trainable({"lr": 0.01}, data=digits, base=TrialConfig(dataset="digits", epochs=1))
    assert (granted_a_gpu[0].device, granted_a_gpu[0].threads, granted_a_gpu[0].lr) == ("cuda", 3, 0.01)


def test_ensemble_members_are_placed_in_the_worker(granted_a_gpu, digits, monkeypatch):
    from study.stages.ensemble import run as ensemble_run

    captured = {}

    def fake_member(spec, data):
        captured["config"] = spec.config
        return ensemble_run.MemberOutput(
            spec=spec, summary={}, state_dict={}, test_proba=None, oob_idx=None, oob_proba=None
        )

    from study.common.executor import placed_work

    spec = ensemble_run.member_specs([TrialConfig(dataset="digits", epochs=1)], 2, seed=0)[0]
    output = placed_work((fake_member, spec), digits)
    assert (captured["config"].device, captured["config"].threads) == ("cuda", 3)
    assert output.summary["node_ip"] == "127.0.0.1"
    # where a member ran is no part of what it is: a checkpoint from a CPU run is reused
    assert (
        spec.identity() == ensemble_run.MemberSpec(**{**vars(spec), "config": captured["config"]}).identity()
    )


@pytest.mark.slow
def test_ray_logical_gpus_reach_the_placement(tmp_path):
    """A real Ray task asking for half a logical GPU is placed on cuda with its one CPU."""
    import ray

    # address="local": a new Ray of our own, never another cluster running on this machine
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
    )
    try:

        @ray.remote(num_cpus=1, num_gpus=0.5)
        def placed_config() -> str:
            config, placement = place(TrialConfig(dataset="digits"))
            return json.dumps({"config": config.to_dict(), "gpus": list(placement.gpu_ids)})

        @ray.remote(num_cpus=1)
        def cpu_config() -> str:
            return json.dumps(current_placement().apply(TrialConfig(dataset="digits")).to_dict())

        on_gpu = json.loads(ray.get(placed_config.remote()))
        on_cpu = json.loads(ray.get(cpu_config.remote()))
    finally:
        ray.shutdown()
    assert on_gpu["config"]["device"] == "cuda" and on_gpu["config"]["threads"] == 1 and on_gpu["gpus"]
    assert on_cpu["device"] == "cpu" and on_cpu["threads"] == 1
