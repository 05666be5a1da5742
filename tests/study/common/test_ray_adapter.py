"""The shapes of Ray's private modules that study/common/ray_adapter.py relies on.

Each test imports the private symbols one adapter function uses and checks what it relies on
(functions with the parameters passed, constants, attributes), so that a Ray upgrade that moves
or changes them fails here, by name, and not in the middle of a study. After checking a new Ray
here, widen the pin in pyproject.toml and the "Checked on" lines in the adapter.
"""

from __future__ import annotations

import inspect
import os

import pytest

from study.common import ray_adapter


def parameters(function) -> list[str]:
    """Parameter names, also for Cython functions (Ray's _raylet embeds their signature in the
    docstring where inspect cannot read one)."""
    try:
        return list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        first = (function.__doc__ or "").strip().splitlines()[0]
        inside = first[first.index("(") + 1 : first.rindex(")")]
        return [part.split(":")[0].split("=")[0].split()[-1] for part in inside.split(",") if part.strip()]


def test_ray_is_a_version_the_adapter_was_checked_on():
    import ray

    assert ray.__version__.startswith("2.60."), (
        f"Ray {ray.__version__}: check study/common/ray_adapter.py against it (this file), then "
        "widen the pin in pyproject.toml"
    )


def test_auth_token_check():
    from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled

    assert parameters(ensure_token_if_auth_enabled)[:2] == ["system_config", "create_token_if_missing"]


def test_gcs_client_and_node_table():
    from ray._raylet import InnerGcsClient, NodeID
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    assert parameters(InnerGcsClient.standalone)[:3] == ["gcs_address", "cluster_id", "timeout_ms"]
    assert {"timeout", "state_filter"} <= set(parameters(InnerGcsClient.get_all_node_info))
    assert isinstance(GcsNodeInfo.GcsNodeState.ALIVE, int)
    fields = {field.name for field in GcsNodeInfo.DESCRIPTOR.fields}
    assert {"is_head_node", "node_manager_address"} <= fields
    assert callable(NodeID.hex)  # the node table's keys


def test_raylets_running_here():
    from ray._private.services import find_node_ids

    assert all(
        p.default is not inspect.Parameter.empty for p in inspect.signature(find_node_ids).parameters.values()
    )
    assert isinstance(ray_adapter.node_ids_on_this_machine(), set)


def test_loopback_switch_sets_and_restores_the_constant_and_the_variable():
    from ray._private import ray_constants

    # the constant is the switch's variable as read at import
    assert ray_adapter.LOOPBACK_SWITCH_ENV in inspect.getsource(ray_constants)
    assert isinstance(ray_constants.ENABLE_RAY_CLUSTER, bool)
    before = (ray_constants.ENABLE_RAY_CLUSTER, os.environ.get(ray_adapter.LOOPBACK_SWITCH_ENV))
    with ray_adapter.loopback_as_this_machine():
        assert ray_constants.ENABLE_RAY_CLUSTER is False
        assert os.environ[ray_adapter.LOOPBACK_SWITCH_ENV] == "0"
    assert (ray_constants.ENABLE_RAY_CLUSTER, os.environ.get(ray_adapter.LOOPBACK_SWITCH_ENV)) == before


def test_dashboard_url_and_token_auth_of_this_process():
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    from ray._private.worker import get_dashboard_url

    assert parameters(get_dashboard_url) == [] and parameters(is_token_auth_enabled) == []
    assert isinstance(ray_adapter.token_auth_enabled(), bool)


def test_auth_token_cache_reset():
    from ray._private.authentication_test_utils import reset_auth_token_state

    assert parameters(reset_auth_token_state) == []


def test_default_dashboard_port_is_read_when_the_dashboard_starts():
    """tests/study/common/test_cluster.py moves Ray's default dashboard port to one it holds."""
    from ray._private import ray_constants, services

    assert ray_constants.DEFAULT_DASHBOARD_PORT == 8265
    assert "ray_constants.DEFAULT_DASHBOARD_PORT" in inspect.getsource(services.start_api_server)


def test_restored_tuner_gets_fresh_callbacks(tmp_path):
    from ray import tune
    from ray.tune.impl.tuner_internal import TunerInternal

    # No public way: Tuner.restore takes no RunConfig or callbacks. If this fails, Ray offers
    # one now: use it in study/stages/tune/run.py and drop set_restored_callbacks.
    assert not {"run_config", "callbacks"} & set(parameters(tune.Tuner.restore))
    assert "_local_tuner" in tune.Tuner.__annotations__
    # fit() reads the callbacks from the RunConfig that get_run_config() returns (not a copy)
    assert "callbacks=self._run_config.callbacks" in inspect.getsource(TunerInternal)
    tuner = tune.Tuner(lambda config: None, run_config=tune.RunConfig(storage_path=str(tmp_path)))
    marker = tune.Callback()
    ray_adapter.set_restored_callbacks(tuner, [marker])
    assert tuner._local_tuner.get_run_config().callbacks == [marker]


def test_restored_callbacks_refuse_a_tuner_without_a_local_one():
    class RemoteTuner:
        _local_tuner = None

    with pytest.raises(RuntimeError, match="no local TunerInternal"):
        ray_adapter.set_restored_callbacks(RemoteTuner(), [])
