"""Starting or joining Ray, and the resource arithmetic shared by `study tune` and `ensemble`."""

from __future__ import annotations

import math
import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from lenet_core.errors import ConfigError, StudyError

T = TypeVar("T")
R = TypeVar("R")

LOOPBACK = "127.0.0.1"
DEFAULT_DASHBOARD_PORT = 8265
ADDRESS_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ResourcePlan:
    """What each trial asks Ray for, and how many trials fit side by side."""

    cpus_per_trial: int
    gpus_per_trial: float
    concurrent: int

    def as_ray_resources(self) -> dict[str, float]:
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}


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
    return ResourcePlan(cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, concurrent=fits)


@dataclass(frozen=True)
class ClusterOptions:
    """Where trials run; the same meaning in `study tune` and `study ensemble`."""

    gpus: float = 0.0
    gpus_per_trial: float | None = None
    cpus_per_trial: int = 1
    max_concurrent: int | None = None
    address: str | None = None
    dashboard_port: int | None = None
    dashboard_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.gpus_per_trial is not None:
            check_gpus_per_trial(self.gpus_per_trial)
        if self.cpus_per_trial < 1:
            raise ConfigError(f"--cpus-per-trial must be >= 1, got {self.cpus_per_trial}")
        if self.gpus < 0:
            raise ConfigError(f"--gpus must be >= 0, got {self.gpus}")


def check_address_reachable(address: str) -> None:
    """Fail fast with one line instead of Ray's long retry loop for a wrong --address."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r} must look like HOST:PORT (e.g. 127.0.0.1:6379)")
    try:
        with socket.create_connection((host, int(port)), timeout=ADDRESS_TIMEOUT_S):
            pass
    except OSError as exc:
        raise StudyError(f"cannot reach a Ray cluster at {address} ({exc.strerror or exc})") from exc


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def choose_dashboard_port(host: str, asked: int | None) -> int:
    """The asked port if free (else a clear error); by default 8265, or any free port."""
    if asked is not None:
        if not 1 <= asked <= 65535:
            raise ConfigError(f"--dashboard-port must be in 1..65535, got {asked}")
        if not port_is_free(host, asked):
            raise StudyError(f"--dashboard-port {asked} is already in use on {host}")
        return asked
    if port_is_free(host, DEFAULT_DASHBOARD_PORT):
        return DEFAULT_DASHBOARD_PORT
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def dashboard_warning(host: str) -> str | None:
    """A warning when the dashboard would listen beyond this machine's loopback interface."""
    if host in (LOOPBACK, "localhost"):
        return None
    return (
        f"warning: the Ray dashboard will listen on {host}; it accepts job submissions "
        f"(arbitrary code) from anyone who can reach it"
    )


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


@contextmanager
def ray_session(cluster: ClusterOptions) -> Iterator[RaySession]:
    """Join ``cluster.address``, or start Ray in-process with its dashboard on 127.0.0.1 by
    default; the session carries the resource plan for the cluster it found."""
    import ray

    # Tune's console output would fight our progress bar; the dashboard and files have it all.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    address, gpus = cluster.address, cluster.gpus
    dashboard_host = cluster.dashboard_host
    if address is not None:
        check_address_reachable(address)
        try:
            context = ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StudyError(
                f"cannot join the Ray cluster at {address} ({reason}); if it uses "
                f"token auth, set RAY_AUTH_MODE=token"
            ) from exc
    else:
        cuda = visible_cuda_gpus()
        if gpus > cuda:
            raise StudyError(
                f"--gpus {gpus:g} asked for, but CUDA sees {cuda} GPU(s) here; use --gpus {cuda} "
                f"or join a cluster that has them with --address"
            )
        warning = dashboard_warning(dashboard_host)
        if warning:
            print(warning, file=sys.stderr)
        port = choose_dashboard_port(dashboard_host, cluster.dashboard_port)
        context = ray.init(
            num_cpus=os.cpu_count(),
            num_gpus=gpus,
            include_dashboard=True,
            dashboard_host=dashboard_host,
            dashboard_port=port,
            log_to_driver=False,
            logging_level="ERROR",
            configure_logging=True,
        )
    try:
        resources = ray.cluster_resources()
        url = context.dashboard_url
        total_cpus = float(resources.get("CPU", 0))
        total_gpus = float(resources.get("GPU", 0))
        yield RaySession(
            dashboard_url=f"http://{url}" if url and not url.startswith("http") else url,
            total_cpus=total_cpus,
            total_gpus=total_gpus,
            token_auth=_token_auth_enabled(),
            plan=plan_resources(
                total_cpus=total_cpus,
                total_gpus=total_gpus,
                cpus_per_trial=cluster.cpus_per_trial,
                gpus_per_trial=cluster.gpus_per_trial,
                max_concurrent=cluster.max_concurrent,
            ),
        )
    finally:
        ray.shutdown()


def _token_auth_enabled() -> bool:
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        return bool(is_token_auth_enabled())
    except Exception:  # older or newer Ray without this module: say nothing
        return False


def map_on_ray(
    fn: Callable[[T, Any], R],
    items: list[T],
    *,
    data: Any,
    plan: ResourcePlan,
    label: str,
    name: Callable[[T], str],
    on_result: Callable[[T, R], str],
    already_done: int = 0,
) -> None:
    """Run ``fn(item, data)`` for every item as Ray tasks, ``plan.concurrent`` at a time.

    ``data`` goes into the object store once and every task reads it zero-copy. ``on_result``
    runs in the driver as each task finishes (to save it at once) and returns a progress note.
    A task that fails after Ray's retries ends the run with a one-line error naming the item.
    """
    import ray

    from study.common.console import progress_bar

    if not items:
        return
    data_ref = ray.put(data)
    task = ray.remote(fn).options(num_cpus=plan.cpus_per_trial, num_gpus=plan.gpus_per_trial, max_retries=2)
    queue, pending = list(items), {}
    with progress_bar(label, len(items) + already_done) as advance:
        advance("", steps=already_done)
        while queue or pending:
            while queue and len(pending) < plan.concurrent:
                item = queue.pop(0)
                pending[task.remote(item, data_ref)] = item
            ready, _ = ray.wait(list(pending), num_returns=1)
            item = pending.pop(ready[0])
            try:
                output = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                reason = str(exc).strip().splitlines()[-1]
                raise StudyError(f"{name(item)} failed: {reason}") from exc
            advance(on_result(item, output))
