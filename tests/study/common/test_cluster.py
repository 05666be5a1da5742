"""Ray sessions stay on loopback, join a loopback multi-node cluster, survive losing a node,
and refuse a port that is not Ray in one line."""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from lenet_core.errors import ConfigError
from study.common.cluster import (
    ADDRESS_TIMEOUT_S,
    LOOPBACK,
    LOOPBACK_SWITCH_ENV,
    PROBE_TIMEOUT_S,
    ClusterOptions,
    bind_warning,
    check_bind,
    choose_dashboard_port,
    is_loopback,
    ray_session,
)
from study.common.executor import map_on_ray
from tests.conftest import RUN_LIMIT_S, run_bounded, wait_until


def listening_sockets() -> list[tuple[str, int, str]]:
    """(address, port, process name) of every listening socket of this process and its
    descendants: the driver and every process Ray started for it."""
    me = psutil.Process()
    ours = {me.pid, *(child.pid for child in me.children(recursive=True))}
    found = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in ours:
            try:
                name = psutil.Process(conn.pid).name()
            except psutil.NoSuchProcess:
                continue
            found.append((conn.laddr.ip, conn.laddr.port, name))
    return found


def ipv4(address: str) -> str:
    """Ray's IPv6 sockets show 127.0.0.1 as ::ffff:127.0.0.1."""
    ip = ipaddress.ip_address(address)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped or ip)


def node_of(item: int, data: dict[str, Any]) -> tuple[int, str]:
    """A task: leave a mark (item, node, pid) when it starts, then wait until ``data["peers"]``
    marks exist (so that many tasks ran at once) and, if ``data["release"]`` names a file, until
    it exists; say where it ran."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    marks = Path(data["marks"])
    (marks / f"{item}.{node}.{os.getpid()}").touch()
    release = Path(data["release"]) if data.get("release") else None
    wait_until(
        lambda: len(list(marks.iterdir())) >= data.get("peers", 0) and (release is None or release.exists()),
        f"{data.get('peers', 0)} tasks at once and the release",
    )
    return item, node


def collect(results: list[tuple[int, str]]) -> Callable[[int, tuple[int, str]], str]:
    def on_result(item: int, output: tuple[int, str]) -> str:
        results.append(output)
        return f"{item} done"

    return on_result


# The ports a node's entry in ray.nodes() names (-1: not started).
NODE_PORTS = (
    "NodeManagerPort",
    "ObjectManagerPort",
    "MetricsExportPort",
    "MetricsAgentPort",
    "DashboardAgentListenPort",
    "RuntimeEnvAgentPort",
)


@pytest.mark.slow
def test_local_session_listens_only_on_loopback(ray_env: Path) -> None:
    import ray

    with ray_session(ClusterOptions()) as session:
        # a task, so that a worker process is running and listening too
        assert ray.get(ray.remote(lambda: 1).remote()) == 1
        dashboard_port = int(session.dashboard_url.rsplit(":", 1)[1])
        # agents finish opening their ports after ray.init returns: wait for every port Ray
        # says this node listens on (and the dashboard's) before looking at where they listen
        node = ray.nodes()[0]
        ports = {int(node[key]) for key in NODE_PORTS if int(node.get(key, -1)) > 0}
        ports |= {dashboard_port, int(ray.get_runtime_context().gcs_address.rsplit(":", 1)[1])}
        sockets = wait_until(
            lambda: (found := listening_sockets()) and ports <= {port for _, port, _ in found} and found,
            f"Ray's ports {sorted(ports)} to listen",
        )
    names = {name for _, _, name in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets
    assert any(name.startswith("ray::") for name in names), sockets  # workers and agents
    assert dashboard_port in {port for _, port, _ in sockets}
    assert all(ipv4(address) == LOOPBACK for address, _, _ in sockets), sockets
    assert LOOPBACK_SWITCH_ENV not in os.environ  # the switch ends with the session


@pytest.mark.slow
def test_a_taken_default_dashboard_port_moves_the_dashboard_to_the_next_free_one(
    ray_env: Path, monkeypatch
) -> None:
    """Two studies starting in the same second both found 8265 free, and the second failed inside
    ray.init. Unasked, the port is left to Ray, which binds its default port or the next free one
    itself. Here Ray's default is a port this test holds (never the real 8265)."""
    import ray
    from ray._private import ray_constants  # the constant is checked in test_ray_adapter.py

    assert choose_dashboard_port(LOOPBACK, None) is None
    with socket.socket() as holder:  # the other study's dashboard
        holder.bind((LOOPBACK, 0))
        holder.listen()
        taken = holder.getsockname()[1]
        monkeypatch.setattr(ray_constants, "DEFAULT_DASHBOARD_PORT", taken)
        with ray_session(ClusterOptions()) as session:
            assert ray.get(ray.remote(lambda: 1).remote()) == 1
            port = int(session.dashboard_url.rsplit(":", 1)[1])
    assert taken < port <= taken + 50  # Ray's 50 retries, upwards from its default


def process_globals() -> dict[str, Any]:
    """What a Ray session could leave changed in this process: the environment, Ray's constants,
    and the levels and formats of Ray's logger."""
    import logging

    from ray._private import ray_constants

    ray_logger = logging.getLogger("ray")
    return {
        "environment": dict(os.environ),
        "constants": {k: repr(v) for k, v in vars(ray_constants).items() if k.isupper()},
        "ray logger": (ray_logger.level, [h.formatter for h in ray_logger.handlers]),
    }


@pytest.mark.slow
def test_a_session_leaves_the_environment_constants_and_loggers_as_it_found_them(ray_env: Path) -> None:
    """Ours (RAY_AIR_NEW_OUTPUT, the loopback switch) and what ray.init sets in the driver
    (PYTHONBREAKPOINT, RAY_USAGE_STATS_ENABLED, the "ray" logger's level), also when a session
    runs inside one that is already running."""
    import ray

    before = process_globals()
    with ray_session(ClusterOptions(dashboard=False)):
        assert ray.get(ray.remote(lambda: 1).remote()) == 1
        during = process_globals()
        assert during["environment"] != before["environment"]  # the session did change some
        with ray_session(ClusterOptions(dashboard=False)):
            pass
        assert process_globals() == during
    assert process_globals() == before


def test_bind_accepts_loopback_all_interfaces_or_an_own_address_and_warns_beyond_loopback() -> None:
    assert check_bind("localhost") == LOOPBACK and check_bind("0.0.0.0") == "0.0.0.0"
    with pytest.raises(ConfigError, match="not an address of this machine"):
        check_bind("203.0.113.9")  # TEST-NET-3: never this machine's
    assert bind_warning(LOOPBACK) is None
    assert "can run code" in bind_warning("0.0.0.0")
    assert is_loopback("::ffff:127.0.0.1") and is_loopback("[::1]") and not is_loopback("192.0.2.2")


@pytest.mark.slow
def test_joins_a_loopback_cluster_and_runs_items_on_both_nodes(loopback_cluster, ray_env: Path) -> None:
    import ray

    cluster, worker = loopback_cluster
    marks = ray_env / "marks"
    marks.mkdir()
    results: list[tuple[int, str]] = []
    before = process_globals()
    with ray_session(ClusterOptions(address=cluster.address)) as session:
        assert ray.util.get_node_ip_address() == LOOPBACK  # the driver's node address
        assert session.total_cpus == 2 and session.plan.concurrent == 2
        run_bounded(
            lambda: map_on_ray(
                node_of,
                list(range(4)),
                data={"marks": str(marks), "peers": 2},  # the first two run at once
                plan=session.plan,
                label="items",
                name=str,
                on_result=collect(results),
            )
        )
    assert sorted(item for item, _ in results) == [0, 1, 2, 3]
    assert {node for _, node in results} == {cluster.head_node.node_id, worker.node_id}
    assert LOOPBACK_SWITCH_ENV not in os.environ
    assert process_globals() == before  # joining changes nothing for good either


@pytest.mark.slow
def test_item_on_a_lost_node_runs_again_on_the_other_and_completes_once(
    loopback_cluster, ray_env: Path
) -> None:
    cluster, worker = loopback_cluster
    marks = ray_env / "marks"
    marks.mkdir()
    release = ray_env / "release"  # every task waits for it: the one on the worker is mid-way
    removed = threading.Event()

    def remove_worker_once_busy() -> None:
        wait_until(
            lambda: any(mark.name.split(".")[1] == worker.node_id for mark in marks.iterdir()),
            "a task on the worker node",
        )
        cluster.remove_node(worker)  # its raylet, and the task waiting on it, die
        removed.set()
        release.touch()

    results: list[tuple[int, str]] = []
    with ray_session(ClusterOptions(address=cluster.address)) as session:
        killer = threading.Thread(target=remove_worker_once_busy, daemon=True)
        killer.start()
        run_bounded(
            lambda: map_on_ray(
                node_of,
                list(range(4)),
                data={"marks": str(marks), "release": str(release)},
                plan=session.plan,
                label="items",
                name=str,
                on_result=collect(results),
            )
        )
        killer.join(RUN_LIMIT_S)
    assert removed.is_set()
    assert sorted(item for item, _ in results) == [0, 1, 2, 3]  # none lost, none twice
    assert {node for _, node in results} == {cluster.head_node.node_id}
    starts: dict[int, list[str]] = {}
    for mark in marks.iterdir():
        item, node, _ = mark.name.split(".")
        starts.setdefault(int(item), []).append(node)
    lost = [item for item, nodes in starts.items() if worker.node_id in nodes]
    assert len(lost) == 1, starts
    assert sorted(starts[lost[0]]) == sorted([worker.node_id, cluster.head_node.node_id])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts connections and never says a word."""
    server = socket.socket()
    server.bind((LOOPBACK, 0))
    server.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        server.close()


@pytest.mark.slow
def test_port_that_is_not_ray_fails_within_30_s_in_one_line(
    ray_env: Path, silent_port: int, tmp_path, capfd, monkeypatch
) -> None:
    """The whole wait, through the CLI (one test: the wait is ~14 s). Within 30 s by construction:
    only our own bounded checks wait (a connect, then the probe child, killed at its timeout);
    ray.init, whose connect loop retries for minutes, is never reached."""
    import ray
    from typer.testing import CliRunner

    from study.cli import app

    assert ADDRESS_TIMEOUT_S + PROBE_TIMEOUT_S < 30

    def no_ray_init(*_, **__):
        raise AssertionError("ray.init was called for a port that is not Ray")

    monkeypatch.setattr(ray, "init", no_ray_init)
    address = f"{LOOPBACK}:{silent_port}"
    args = ["tune", "--dataset", "digits", "--trials", "1", "--epochs", "1", "--out", str(tmp_path / "out")]
    result = run_bounded(lambda: CliRunner().invoke(app, [*args, "--address", address]), limit_s=RUN_LIMIT_S)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert address in result.stderr
    output = capfd.readouterr()
    assert "Failed to connect" not in output.out + output.err  # Ray's retry loop stayed silent
    assert LOOPBACK_SWITCH_ENV not in os.environ
    assert not (tmp_path / "out").exists() or not any(p.is_file() for p in (tmp_path / "out").rglob("*"))
