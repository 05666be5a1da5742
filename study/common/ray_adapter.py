"""Every use of Ray's private modules and attributes, in one place.

Ray changes its internals between minor releases without notice. Each function here wraps one
private thing the study relies on, says what it does and the Ray versions it was checked on, and
``tests/study/common/test_ray_adapter.py`` imports every private symbol used below and checks the shape relied
on (names, parameters, constants, attributes), so that an upgrade of Ray fails there, loudly, and
not in the middle of a study. ``pyproject.toml`` pins Ray to the versions checked.

Checked on: Ray 2.60.0.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Ray's switch (meant for macOS and Windows) that makes it take 127.0.0.1 as this machine; Ray
# reads it once, at import, into ``ray._private.ray_constants.ENABLE_RAY_CLUSTER``.
LOOPBACK_SWITCH_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ensure_auth_token_present() -> None:
    """Raise (instead of Ray aborting the process) when token auth is on and no token exists.

    ``ray._private.authentication.authentication_token_setup.ensure_token_if_auth_enabled(
    system_config, create_token_if_missing)``. Checked on Ray 2.60.0. Raises ImportError where
    this Ray has no such function.
    """
    from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled

    ensure_token_if_auth_enabled(None, create_token_if_missing=False)


def gcs_client(address: str, timeout_ms: int) -> Any:
    """A client of the GCS at ``address`` (HOST:PORT) that gives up connecting after ``timeout_ms``.

    ``ray._raylet.InnerGcsClient.standalone(gcs_address, cluster_id, timeout_ms)``. Checked on
    Ray 2.60.0. Raises ImportError where this Ray has no such class.
    """
    from ray._raylet import InnerGcsClient

    return InnerGcsClient.standalone(address, None, timeout_ms)


def alive_nodes(client: Any, timeout_s: float) -> list[tuple[str, bool, str]]:
    """(node id in hex, is head, node manager address) of every live node ``client`` knows.

    ``InnerGcsClient.get_all_node_info(timeout=, state_filter=)`` with
    ``ray.core.generated.gcs_pb2.GcsNodeInfo.GcsNodeState.ALIVE``; it returns {NodeID: GcsNodeInfo}
    whose ``is_head_node`` and ``node_manager_address`` are read. Checked on Ray 2.60.0.
    """
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    nodes = client.get_all_node_info(timeout=timeout_s, state_filter=GcsNodeInfo.GcsNodeState.ALIVE)
    return [
        (node_id.hex(), bool(info.is_head_node), str(info.node_manager_address))
        for node_id, info in nodes.items()
    ]


def node_ids_on_this_machine() -> set[str]:
    """The ids (hex) of the Ray nodes whose raylet runs on this machine, read from the command
    lines of the running raylet processes.

    ``ray._private.services.find_node_ids()``. Checked on Ray 2.60.0.
    """
    from ray._private.services import find_node_ids

    return set(find_node_ids())


@contextmanager
def loopback_as_this_machine() -> Iterator[None]:
    """Make Ray take 127.0.0.1 as this machine's address, in this process and all it starts;
    both are restored on exit.

    The environment variable ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` reaches the processes Ray
    starts; ``ray._private.ray_constants.ENABLE_RAY_CLUSTER`` (the variable as read when Ray was
    imported) is set to False for this process. Checked on Ray 2.60.0.
    """
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(LOOPBACK_SWITCH_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_SWITCH_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(LOOPBACK_SWITCH_ENV, None)
        else:
            os.environ[LOOPBACK_SWITCH_ENV] = saved_env


def running_dashboard_url() -> str | None:
    """The dashboard URL of the Ray this process is connected to; None without one, or where
    this Ray has no such function (Ray keeps it private).

    ``ray._private.worker.get_dashboard_url()``. Checked on Ray 2.60.0.
    """
    try:
        from ray._private.worker import get_dashboard_url

        return get_dashboard_url() or None
    except Exception:  # another Ray version: the session then says "not available"
        return None


def token_auth_enabled() -> bool:
    """Whether Ray's token authentication is on in this process; False where this Ray cannot say.

    ``ray._private.authentication.authentication_utils.is_token_auth_enabled()``. Checked on
    Ray 2.60.0.
    """
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        return bool(is_token_auth_enabled())
    except Exception:  # older or newer Ray without this module: say nothing
        return False


def reset_auth_token_cache() -> None:
    """Forget the auth token Ray cached in this process (tests switch tokens between clusters).

    ``ray._private.authentication_test_utils.reset_auth_token_state()``. Checked on Ray 2.60.0.
    """
    from ray._private.authentication_test_utils import reset_auth_token_state

    reset_auth_token_state()


def set_restored_callbacks(tuner: Any, callbacks: list[Any]) -> None:
    """Give a Tuner made by ``tune.Tuner.restore`` these callbacks instead of the restored ones.

    ``Tuner.restore(path, trainable, resume_unfinished, resume_errored, restart_errored,
    param_space, storage_filesystem)`` takes no RunConfig and no callbacks (Ray 2.60.0): the
    restored RunConfig, callbacks included, comes from the pickled tuner state. This sets
    ``tuner._local_tuner.get_run_config().callbacks``: ``Tuner._local_tuner`` is the
    ``TunerInternal`` (None under Ray Client, which the study does not use) and ``get_run_config()``
    returns its RunConfig itself, not a copy, which ``fit()`` reads. Checked on Ray 2.60.0.
    """
    internal = getattr(tuner, "_local_tuner", None)
    if internal is None:
        raise RuntimeError("this Tuner has no local TunerInternal (Ray Client?): its callbacks cannot be set")
    internal.get_run_config().callbacks = callbacks
