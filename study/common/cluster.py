"""Starting or joining Ray, and the resource arithmetic shared by `study tune` and `ensemble`.

Ray rewrites 127.0.0.1 to this machine's interface address, both in ``ray.init(address=...)``
and for the processes it starts, so by default a local session listens on every interface and
a cluster whose nodes all sit on 127.0.0.1 cannot be joined: ``ray.init(address=...)`` retries
a loopback-only GCS forever, and ``_node_ip_address`` no longer keeps the GCS, raylet and agents
on loopback (they listen on 127.0.0.1 only when that is the node's address). A session on
loopback therefore switches that rewrite off (``ray_adapter.loopback_as_this_machine``).

Ray's private modules are used through ``study.common.ray_adapter`` only. A session restores on
exit everything global it changed: environment variables (ours and those ``ray.init`` sets), the
loopback switch, and the "ray" logger's level and formats.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lenet_core.errors import ConfigError, StudyError
from study.common import ray_adapter

LOOPBACK = "127.0.0.1"
ALL_INTERFACES = ("0.0.0.0", "::")
ADDRESS_TIMEOUT_S = 3.0
# The whole look at a cluster before joining it: a port that accepts and never answers must
# end in one line well within 30 s. Ray spends up to 3 connection phases of GCS_CONNECT_TIMEOUT_MS.
PROBE_TIMEOUT_S = 20.0
GCS_CONNECT_TIMEOUT_MS = 3000
GCS_CALL_TIMEOUT_S = 5
LOCAL_NODE_WAIT_S = 5.0
# Ray's switch (meant for macOS and Windows) that makes it take 127.0.0.1 as this machine.
LOOPBACK_SWITCH_ENV = ray_adapter.LOOPBACK_SWITCH_ENV
AUTH_HINT = "if it uses token auth, set RAY_AUTH_MODE=token"


@dataclass(frozen=True)
class ResourcePlan:
    """What each trial asks Ray for, how many trials fit side by side, and on how many nodes."""

    cpus_per_trial: int
    gpus_per_trial: float
    concurrent: int
    nodes: int = 1  # live nodes of the cluster when the session began

    def as_ray_resources(self) -> dict[str, float]:
        """A Tune trial's request: Tune makes it a one-bundle placement group per trial. Ray places
        each such group on the node with the most room left, whatever its strategy (PACK or
        SPREAD only matter between the bundles of one group), so trials spread by themselves."""
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}

    @property
    def reuse_actors(self) -> bool:
        """Whether Tune may reuse a finished trial's actor for the next trial (Tune's
        ``reuse_actors``): only on one node. On several, a reused actor stays on its node and
        Tune hands it the trials already waiting for an actor starting elsewhere (and cancels
        that one): short trials on a node that starts workers first then all run there."""
        return self.nodes <= 1

    def task_options(self) -> dict[str, Any]:
        """Ray task options for one unit of work (``ray.remote(fn).options(**...)``).

        SPREAD: Ray's default places a task on the driver's node until half of it is busy, so two
        1-CPU tasks on a cluster of 4-CPU nodes both ran on the head; SPREAD puts each on the next
        node that has room (on one node it changes nothing)."""
        return {
            "num_cpus": self.cpus_per_trial,
            "num_gpus": self.gpus_per_trial,
            "scheduling_strategy": "SPREAD",
        }


def check_gpus_per_trial(value: float) -> None:
    """Fractions in (0, 1] pack trials on one GPU; above 1 only whole GPUs make sense."""
    if not math.isfinite(value) or value <= 0 or (value > 1 and value != int(value)):
        raise ConfigError(
            f"--gpus-per-trial must be a fraction in (0, 1] or a whole number of GPUs, got {value}"
        )


def plan_resources(
    *,
    total_cpus: float,
    total_gpus: float,
    cpus_per_trial: int,
    gpus_per_trial: float | None,
    max_concurrent: int | None,
    nodes: int = 1,
) -> ResourcePlan:
    """How many trials run at once given the cluster's CPUs and GPUs and what a trial needs.

    With GPUs and no --gpus-per-trial, each trial takes one whole GPU.
    """
    if cpus_per_trial < 1:
        raise ConfigError(f"--cpus-per-trial must be >= 1, got {cpus_per_trial}")
    if total_gpus < 0:
        raise ConfigError(f"--gpus must be >= 0, got {total_gpus}")
    if max_concurrent is not None and max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1, got {max_concurrent}")
    if gpus_per_trial is None:
        gpus_per_trial = 1.0 if total_gpus > 0 else 0.0
    else:
        check_gpus_per_trial(gpus_per_trial)
        if gpus_per_trial > total_gpus:
            raise ConfigError(
                f"--gpus-per-trial {gpus_per_trial:g} needs at least that many GPUs; --gpus is {total_gpus:g}"
            )
    if cpus_per_trial > total_cpus:
        raise ConfigError(f"--cpus-per-trial {cpus_per_trial} exceeds the {total_cpus:g} CPUs available")
    fits = int(total_cpus // cpus_per_trial)
    if gpus_per_trial > 0:
        # a small epsilon: 4 x 0.25 must fit in 1.0 despite float rounding
        fits = min(fits, int(total_gpus / gpus_per_trial + 1e-9))
    if max_concurrent is not None:
        fits = min(fits, max_concurrent)
    return ResourcePlan(
        cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, concurrent=fits, nodes=max(1, nodes)
    )


@dataclass(frozen=True)
class ClusterOptions:
    """Where trials run; the same meaning in `study tune` and `study ensemble`.

    ``bind`` is the interface a local session's Ray listens on (GCS, raylet, object manager,
    agents, workers); the dashboard keeps its own ``dashboard_host``. Joining ignores both.
    """

    gpus: float | None = None  # None ("auto"): every GPU CUDA sees here, or what the cluster has
    gpus_per_trial: float | None = None
    cpus_per_trial: int = 1
    max_concurrent: int | None = None
    address: str | None = None
    dashboard: bool = True  # False: a local Ray without its dashboard (saves ~1.5 s and a process)
    dashboard_port: int | None = None
    dashboard_host: str = LOOPBACK
    bind: str = LOOPBACK

    def __post_init__(self) -> None:
        if self.gpus_per_trial is not None:
            check_gpus_per_trial(self.gpus_per_trial)
        if self.cpus_per_trial < 1:
            raise ConfigError(f"--cpus-per-trial must be >= 1, got {self.cpus_per_trial}")
        if self.gpus is not None and (not math.isfinite(self.gpus) or self.gpus < 0):
            raise ConfigError(f"--gpus must be auto or a number >= 0, got {self.gpus}")
        if self.dashboard_port is not None and not self.dashboard:
            raise ConfigError(
                "--dashboard-port needs the dashboard: drop --no-dashboard (or STUDY_DASHBOARD=0)"
            )


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, IPv4-mapped loopback (how Ray's IPv6 sockets show it) or localhost."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return (mapped or ip).is_loopback


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT (or [IPv6]:PORT) into its parts, with a one-line error for anything else."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"--address {address!r} must look like HOST:PORT (e.g. 127.0.0.1:6379)")
    return host, int(port)


def _probes_address(address: str) -> bool:
    """Whether we check --address ourselves; "auto" and ray:// (Ray Client) are Ray's business."""
    return address != "auto" and not address.startswith("ray://")


def check_address_reachable(address: str) -> None:
    """Fail fast with one line instead of Ray's long retry loop for a wrong --address."""
    if not _probes_address(address):
        return
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=ADDRESS_TIMEOUT_S):
            pass
    except OSError as exc:
        raise StudyError(f"cannot reach a Ray cluster at {address} ({exc.strerror or exc})") from exc


def _first_line(exc: BaseException) -> str:
    """The first sentence of an error: Ray's go on for lines of advice."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return text.splitlines()[0].split(". ")[0].rstrip(".")[:300]


def probe_main(address: str) -> None:
    """Run in a child process: print one JSON line on what the GCS at ``address`` answers.

    Ray's connect loops log to the terminal and, for a port that never answers, block for
    minutes; in a child they are silent and bounded. The answer lists the addresses of the
    cluster's live nodes that run on this machine, head first: the driver attaches to one.
    """
    from ray.exceptions import AuthenticationError

    try:
        # Ray aborts the process when token auth is on and no token exists; this raises instead.
        ray_adapter.ensure_auth_token_present()
        client = ray_adapter.gcs_client(address, GCS_CONNECT_TIMEOUT_MS)
        local = _local_node_ips(client)
        deadline = time.monotonic() + LOCAL_NODE_WAIT_S
        while not local and time.monotonic() < deadline:  # a node just started may not be registered
            time.sleep(0.5)
            local = _local_node_ips(client)
    except ImportError as exc:  # a Ray without these internals: let ray.init do its own checks
        print(json.dumps({"unsupported": _first_line(exc)}))
        return
    except Exception as exc:
        auth = isinstance(exc, AuthenticationError) or "token" in str(exc).lower()
        print(json.dumps({"error": _first_line(exc), "auth": auth}))
        return
    print(json.dumps({"local_ips": local}))


def _local_node_ips(client: Any) -> list[str]:
    """Addresses of the live nodes of ``client``'s cluster whose raylet runs on this machine."""
    here = ray_adapter.node_ids_on_this_machine()
    nodes = ray_adapter.alive_nodes(client, GCS_CALL_TIMEOUT_S)
    local = sorted((not head, address) for node_id, head, address in nodes if node_id in here)
    return [address for _, address in local]


def probe_ray_cluster(address: str) -> str | None:
    """The address of the cluster's node on this machine that a driver would attach to.

    None when this Ray cannot be probed (then ``ray.init`` checks on its own); a StudyError
    when nothing Ray-like answers, the token is missing or wrong, or no node runs here.
    """
    root = str(Path(__file__).resolve().parents[2])  # so the child imports this very module
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    command = [
        sys.executable,
        "-c",
        "import sys; from study.common.cluster import probe_main; probe_main(sys.argv[1])",
        address,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired as exc:
        raise StudyError(f"no Ray cluster answered at {address} within {PROBE_TIMEOUT_S:g} s") from exc
    answer = _last_json_line(done.stdout)
    if answer is None:
        raise StudyError(
            f"cannot join the Ray cluster at {address} (its check exited with code {done.returncode}); "
            f"{AUTH_HINT}"
        )
    if "unsupported" in answer:
        return None
    if "error" in answer:
        if answer.get("auth"):
            raise StudyError(f"cannot join the Ray cluster at {address} ({answer['error']}); {AUTH_HINT}")
        raise StudyError(f"no Ray cluster answers at {address} ({answer['error']})")
    if not answer["local_ips"]:
        raise StudyError(
            f"the Ray cluster at {address} has no node on this machine; a study runs on one of its "
            f"nodes (start one here with `ray start --address {address}`)"
        )
    return str(answer["local_ips"][0])


def _last_json_line(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        if isinstance(answer, dict):
            return answer
    return None


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def choose_dashboard_port(host: str, asked: int | None) -> int | None:
    """The asked port if free (else a clear error). Not asked: None, and Ray binds 8265 or the next
    free port itself: a port checked free here could be taken by a study starting beside this one
    before Ray binds it, and Ray does not retry a port it was given."""
    if asked is None:
        return None
    if not 1 <= asked <= 65535:
        raise ConfigError(f"--dashboard-port must be in 1..65535, got {asked}")
    if not port_is_free(host, asked):
        raise StudyError(f"--dashboard-port {asked} is already in use on {host}")
    return asked


def dashboard_warning(host: str) -> str | None:
    """A warning when the dashboard would listen beyond this machine's loopback interface."""
    if is_loopback(host):
        return None
    return (
        f"warning: the Ray dashboard will listen on {host}; it accepts job submissions "
        f"(arbitrary code) from anyone who can reach it"
    )


def bind_warning(host: str) -> str | None:
    """A warning when Ray's own ports would listen beyond this machine's loopback interface."""
    if is_loopback(host):
        return None
    # Ray's servers listen on 127.0.0.1 alone or on every interface: another address is only
    # what the node advertises, so say what really happens.
    return (
        f"warning: with --bind {host}, Ray (GCS, raylet, object manager, agents, workers) listens "
        f"on every interface; anyone who can reach those ports can run code in this study"
    )


def check_bind(host: str) -> str:
    """``--bind`` as Ray takes it: loopback, all interfaces, or one address of this machine."""
    if is_loopback(host):
        return LOOPBACK
    if host in ALL_INTERFACES:
        return host
    import psutil

    own = {entry.address for entries in psutil.net_if_addrs().values() for entry in entries}
    if host not in own:
        raise ConfigError(
            f"--bind {host!r} is not an address of this machine; use 127.0.0.1, 0.0.0.0 or one of "
            f"{', '.join(sorted(a for a in own if _is_ip(a)))}"
        )
    return host


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def visible_cuda_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True)
class RaySession:
    dashboard_url: str | None
    total_cpus: float
    total_gpus: float
    token_auth: bool  # Ray's token authentication guards the dashboard
    plan: ResourcePlan  # what each trial asks for on this cluster, and how many fit at once
    no_dashboard: str = "not available"  # why there is no dashboard URL, when there is none

    @property
    def dashboard_text(self) -> str:
        """The line naming the dashboard's URL (with the token hint when Ray asks for one), or
        why there is none."""
        if self.dashboard_url:
            return f"Ray dashboard: {self.dashboard_url}" + (
                " (token: `ray get-auth-token`)" if self.token_auth else ""
            )
        return f"Ray dashboard: {self.no_dashboard}"


# Loggers whose level and formats ``ray.init(logging_level=..., configure_logging=True)`` sets.
RAY_LOGGERS = ("ray",)


@contextmanager
def _globals_restored() -> Iterator[None]:
    """On exit, put back what a session changed in this process: every environment variable
    (ours, such as RAY_AIR_NEW_OUTPUT, and those ``ray.init`` sets: PYTHONBREAKPOINT,
    RAY_USAGE_STATS_ENABLED, RAY_AUTH_MODE) to its value on entry, and Ray's loggers' levels and
    formats. (The loopback switch restores itself: ``ray_adapter.loopback_as_this_machine``.)"""
    environment = dict(os.environ)
    loggers = [logging.getLogger(name) for name in RAY_LOGGERS]
    levels = [(logger, logger.level, [(h, h.formatter) for h in logger.handlers]) for logger in loggers]
    try:
        yield
    finally:
        for key in [k for k in os.environ if k not in environment]:
            del os.environ[key]
        for key, value in environment.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        for logger, level, formats in levels:
            logger.setLevel(level)
            for handler, formatter in formats:
                handler.setFormatter(formatter)


def _join(address: str, stack: ExitStack) -> Any:
    """Connect to the cluster at ``address`` after checking, in bounded time, that it is one."""
    import ray

    check_address_reachable(address)
    if _probes_address(address):
        host, port = split_address(address)
        node_ip = probe_ray_cluster(address)
        # The driver takes the address of the node it attaches to; guess from --address if unknown.
        if is_loopback(node_ip if node_ip is not None else host):
            stack.enter_context(ray_adapter.loopback_as_this_machine())
            if is_loopback(host):
                address = f"{LOOPBACK}:{port}"  # localhost or ::1 would miss a GCS on 127.0.0.1
    stack.callback(ray.shutdown)  # also after a half-made connection
    try:
        return ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, TimeoutError) as exc:
        reason = _first_line(exc)
        raise StudyError(f"cannot join the Ray cluster at {address} ({reason}); {AUTH_HINT}") from exc


def _start_local(cluster: ClusterOptions, stack: ExitStack) -> Any:
    """Start Ray in-process, every port on ``cluster.bind`` (loopback by default)."""
    import ray

    cuda = visible_cuda_gpus()
    gpus = float(cuda) if cluster.gpus is None else cluster.gpus
    if gpus > cuda:
        raise StudyError(
            f"--gpus {gpus:g} asked for, but CUDA sees {cuda} GPU(s) here; use --gpus {cuda} "
            f"or join a cluster that has them with --address"
        )
    bind = check_bind(cluster.bind)
    warnings, port = [bind_warning(bind)], None
    if cluster.dashboard:
        warnings.append(dashboard_warning(cluster.dashboard_host))
        port = choose_dashboard_port(cluster.dashboard_host, cluster.dashboard_port)
    for warning in filter(None, warnings):
        print(warning, file=sys.stderr)
    if bind == LOOPBACK:
        stack.enter_context(ray_adapter.loopback_as_this_machine())
    stack.callback(ray.shutdown)  # also after a half-started node
    return ray.init(
        # "local": always a new instance of our own; without it Ray would attach to the last
        # cluster `ray start` left on this machine (RAY_ADDRESS or its ray_current_cluster file)
        address="local",
        num_cpus=os.cpu_count(),
        num_gpus=gpus,
        include_dashboard=cluster.dashboard,
        dashboard_host=cluster.dashboard_host,
        dashboard_port=port,
        log_to_driver=False,
        logging_level="ERROR",
        configure_logging=True,
        # None: Ray picks this machine's interface address and listens on all interfaces
        _node_ip_address=None if bind in ALL_INTERFACES else bind,
    )


@contextmanager
def ray_session(cluster: ClusterOptions) -> Iterator[RaySession]:
    """Join ``cluster.address``, or start Ray in-process listening on ``cluster.bind`` (127.0.0.1
    by default); the session carries the resource plan for the cluster it found.

    Where this process already runs Ray (a notebook's ``ray.init()``, or an enclosing
    ``ray_session``), that session is used as it is and left running, as Ray Tune does.
    """
    import ray

    # The stack unwinds last-in first: Ray shuts down, then the loopback switch is undone, then
    # the environment and loggers are put back as they were.
    with ExitStack() as stack:
        stack.enter_context(_globals_restored())
        # Tune's console output would fight our progress bar; the dashboard and files have it all.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        joining = cluster.address not in (None, "local")
        if ray.is_initialized():
            if joining:
                raise StudyError(
                    f"Ray already runs in this process; --address {cluster.address} cannot join "
                    "another cluster (call ray.shutdown() first)"
                )
            no_dashboard = "none in the Ray session this process already runs"
            yield _describe(ray_adapter.running_dashboard_url(), cluster, no_dashboard=no_dashboard)
            return
        context = _join(str(cluster.address), stack) if joining else _start_local(cluster, stack)
        no_dashboard = "off (--no-dashboard)" if not (joining or cluster.dashboard) else "not available"
        yield _describe(context.dashboard_url, cluster, no_dashboard=no_dashboard)


@contextmanager
def ray_session_then(cluster: ClusterOptions) -> Iterator[tuple[RaySession, Callable[..., Future[Any]]]]:
    """``ray_session``, plus ``then(fn, *args)``: start the local work that follows the Ray work
    (tables, figures) in a thread, so that it runs while the session shuts down. Ray gives each
    of its processes up to a second to exit; that time would otherwise add to the command's.

    The thread is waited for on the way out, even when the session's end raised (a Ctrl-C), so
    no file is left half-written; ``fn``'s result, or its error, comes from the returned
    Future's ``result()``.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="after-ray") as pool:
        with ray_session(cluster) as session:
            yield session, pool.submit


def _describe(url: str | None, cluster: ClusterOptions, *, no_dashboard: str) -> RaySession:
    """The session's resources and plan; ``no_dashboard`` says why, where ``url`` is None."""
    import ray

    resources = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    total_cpus = float(resources.get("CPU", 0))
    total_gpus = float(resources.get("GPU", 0))
    if cluster.gpus is not None:  # a number caps what a joined cluster offers (--gpus 0: CPU only)
        total_gpus = min(total_gpus, cluster.gpus)
    return RaySession(
        dashboard_url=f"http://{url}" if url and not url.startswith("http") else url,
        total_cpus=total_cpus,
        total_gpus=total_gpus,
        token_auth=ray_adapter.token_auth_enabled(),
        no_dashboard=no_dashboard,
        plan=plan_resources(
            total_cpus=total_cpus,
            total_gpus=total_gpus,
            cpus_per_trial=cluster.cpus_per_trial,
            gpus_per_trial=cluster.gpus_per_trial,
            max_concurrent=cluster.max_concurrent,
            nodes=nodes,
        ),
    )
