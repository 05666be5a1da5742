import pytest

from lenet_core.errors import ConfigError
from study.common.cluster import plan_resources


@pytest.mark.parametrize(
    ("cpus", "gpus", "cpt", "gpt", "cap", "concurrent", "gpu_each"),
    [
        (2, 0, 1, None, None, 2, 0.0),  # this machine: two 1-thread trials side by side
        (2, 0, 2, None, None, 1, 0.0),
        (16, 2, 1, None, None, 2, 1.0),  # one whole GPU per trial by default
        (16, 2, 1, 0.25, None, 8, 0.25),  # four trials packed per GPU
        (16, 1, 1, 0.5, None, 2, 0.5),
        (4, 2, 1, 0.25, None, 4, 0.25),  # CPUs bind before GPUs do
        (16, 4, 2, 2, None, 2, 2.0),  # whole multi-GPU trials
        (16, 2, 1, 0.25, 3, 3, 0.25),  # --max-concurrent caps it
        (16, 1, 1, 1 / 3, None, 3, 1 / 3),  # float rounding must not lose a slot
    ],
)
def test_trials_that_fit_at_once(cpus, gpus, cpt, gpt, cap, concurrent, gpu_each):
    plan = plan_resources(
        total_cpus=cpus, total_gpus=gpus, cpus_per_trial=cpt, gpus_per_trial=gpt, max_concurrent=cap
    )
    assert plan.concurrent == concurrent
    assert plan.gpus_per_trial == pytest.approx(gpu_each)
    assert plan.as_ray_resources() == {"cpu": cpt, "gpu": plan.gpus_per_trial}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gpus_per_trial": 0.0}, "fraction in \\(0, 1\\]"),
        ({"gpus_per_trial": 1.5, "total_gpus": 4}, "whole number"),
        ({"gpus_per_trial": 1.0, "total_gpus": 0}, "needs at least that many GPUs"),
        ({"cpus_per_trial": 0}, "--cpus-per-trial must be >= 1"),
        ({"cpus_per_trial": 3}, "exceeds the 2 CPUs"),
        ({"max_concurrent": 0}, "--max-concurrent"),
    ],
)
def test_impossible_resource_requests(kwargs, message):
    args = {
        "total_cpus": 2,
        "total_gpus": 0,
        "cpus_per_trial": 1,
        "gpus_per_trial": None,
        "max_concurrent": None,
        **kwargs,
    }
    with pytest.raises(ConfigError, match=message):
        plan_resources(**args)


def test_tasks_spread_over_nodes_and_tune_reuses_actors_on_one_node_only():
    plan = plan_resources(
        total_cpus=8, total_gpus=2, cpus_per_trial=2, gpus_per_trial=0.5, max_concurrent=None
    )
    assert plan.task_options() == {"num_cpus": 2, "num_gpus": 0.5, "scheduling_strategy": "SPREAD"}
    assert plan.nodes == 1 and plan.reuse_actors
    on_two = plan_resources(
        total_cpus=8, total_gpus=0, cpus_per_trial=1, gpus_per_trial=None, max_concurrent=None, nodes=2
    )
    assert on_two.nodes == 2 and not on_two.reuse_actors


@pytest.mark.slow
def test_ray_places_fractional_gpu_trials_on_logical_gpus():
    """Ray's logical GPUs (no CUDA needed): 0.5 GPU tasks run four at a time on two 'GPUs'.

    Four tasks wait at a gate: all four started while every GPU was taken and the rest waited;
    the gate opens and the other four do the same."""
    import ray

    from tests.conftest import wait_until

    # address="local": a new Ray of our own, never another cluster running on this machine
    ray.init(address="local", num_cpus=8, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        plan = plan_resources(
            total_cpus=8, total_gpus=2, cpus_per_trial=1, gpus_per_trial=0.5, max_concurrent=None
        )

        @ray.remote(num_cpus=0)
        class Gate:
            """Counts the tasks running (and the most at once) and holds them until opened."""

            def __init__(self) -> None:
                import asyncio

                self.running, self.most, self.opened = 0, 0, asyncio.Event()

            async def enter(self) -> None:
                self.running += 1
                self.most = max(self.most, self.running)
                await self.opened.wait()
                self.running -= 1

            def open(self) -> None:
                self.opened.set()

            def state(self) -> tuple[int, int]:
                return self.running, self.most

        @ray.remote
        def occupy(gate) -> list:
            ray.get(gate.enter.remote())
            return ray.get_runtime_context().get_accelerator_ids()["GPU"]

        gate = Gate.remote()
        refs = [occupy.options(**plan.task_options()).remote(gate) for _ in range(8)]
        wait_until(lambda: ray.get(gate.state.remote())[0] == plan.concurrent, "four tasks at the gate")
        # Ray's own books: the four hold every GPU, so no fifth task can start
        wait_until(lambda: ray.available_resources().get("GPU", 0) == 0, "every GPU taken")
        assert ray.get(gate.state.remote()) == (plan.concurrent, plan.concurrent) == (4, 4)
        gate.open.remote()
        ids = ray.get(refs)
        assert ray.get(gate.state.remote()) == (0, 4)  # never more than four at once
        assert all(len(i) == 1 and i[0] in ("0", "1") for i in ids)
    finally:
        ray.shutdown()


def test_gpus_flag_is_auto_by_default_and_parses_numbers():
    from lenet_core.errors import StudyError
    from study.cli import CLUSTER_FLAGS, parse_gpus

    assert CLUSTER_FLAGS["gpus"][1] == "auto"
    assert parse_gpus("auto") is None and parse_gpus("AUTO") is None
    assert parse_gpus("0") == 0.0 and parse_gpus("2") == 2.0
    with pytest.raises(StudyError, match="--gpus must be auto or a number"):
        parse_gpus("many")


@pytest.mark.slow
def test_auto_uses_the_gpus_ray_reports_and_a_number_caps_them(ray_env):
    """On a cluster with 2 logical GPUs: auto gives each trial a GPU; --gpus 0 keeps trials on CPUs.
    Locally, auto is what CUDA sees (none on a CPU machine)."""
    from ray.cluster_utils import Cluster

    from study.common.cluster import ClusterOptions, ray_session, visible_cuda_gpus

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "num_gpus": 2,
            "node_ip_address": "127.0.0.1",
            "include_dashboard": False,
        },
    )
    try:
        with ray_session(ClusterOptions(address=cluster.address)) as session:
            assert (session.total_gpus, session.plan.gpus_per_trial, session.plan.concurrent) == (2.0, 1.0, 2)
        with ray_session(ClusterOptions(address=cluster.address, gpus=0)) as session:
            assert (session.total_gpus, session.plan.gpus_per_trial) == (0.0, 0.0)
    finally:
        cluster.shutdown()
    with ray_session(ClusterOptions(dashboard=False)) as session:
        assert session.total_gpus == visible_cuda_gpus()
