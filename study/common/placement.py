"""Where a trial runs: the one placement rule that tune trials, ensemble members and sweep runs share.

It runs inside the Ray worker, after Ray has granted the task its resources, and readies the
worker to train (its allocator keeps freed memory, ``lenet_core.allocator``). So the config that
trains (and is written to every table) says what really ran: ``device="auto"`` becomes ``cuda``
when Ray gave the task a GPU and ``cpu`` otherwise, and ``threads=0`` becomes the number of CPUs
Ray gave it. A device or thread count the user chose is kept as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lenet_core.allocator import keep_freed_memory
from lenet_core.config import TrialConfig

# Fields that say where a trial runs, not what it trains: a saved config's values give way to
# what Ray grants, and they are no part of an ensemble member's identity.
PLACEMENT_FIELDS = ("device", "threads")


def without_placement(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in PLACEMENT_FIELDS}


@dataclass(frozen=True)
class Placement:
    """The resources Ray granted one task, and the node it runs on."""

    cpus: float
    gpu_ids: tuple[str, ...]
    node_ip: str
    node_id: str

    def apply(self, config: TrialConfig) -> TrialConfig:
        changes: dict[str, Any] = {}
        if config.device == "auto":
            changes["device"] = "cuda" if self.gpu_ids else "cpu"
        if config.threads == 0:
            changes["threads"] = max(1, int(self.cpus))
        return config.replace(**changes) if changes else config

    def as_columns(self) -> dict[str, str]:
        """What tables record about where a trial ran."""
        return {"node_ip": self.node_ip, "node_id": self.node_id}


def current_placement() -> Placement:
    """This Ray worker's granted resources (call inside a task or trial)."""
    import ray

    context = ray.get_runtime_context()
    granted = context.get_assigned_resources()
    return Placement(
        cpus=float(granted.get("CPU", 1.0)),
        gpu_ids=tuple(str(i) for i in context.get_accelerator_ids().get("GPU", [])),
        node_ip=ray.util.get_node_ip_address(),
        node_id=context.get_node_id(),
    )


def place(config: TrialConfig) -> tuple[TrialConfig, Placement]:
    """The config as it will run in this worker, and where that is.

    The worker is about to train, so its allocator keeps freed memory for reuse from here on
    (``lenet_core.allocator``), as the ``study`` command's own process does.
    """
    keep_freed_memory()
    placement = current_placement()
    return placement.apply(config), placement
