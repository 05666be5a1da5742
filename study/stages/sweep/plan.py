"""``SweepPlan``: what a sweep or data-fraction stage trains and how its tables are cut.

An experiment file builds one (``study.experiments.Experiment.sweep_plan``); the sweep stage
never sees the file format, so imports run one way: experiments -> sweep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lenet_core.config import TrialConfig


@dataclass(frozen=True)
class Planned:
    """One row of the runs table: the condition's column values and the config that runs it."""

    labels: dict[str, Any]
    config: TrialConfig


@dataclass(frozen=True)
class SweepPlan:
    name: str
    kind: str  # "sweep" or "data-fraction"
    planned: tuple[Planned, ...]  # every (condition, seed) row, in table order
    swept: tuple[str, ...]  # the condition columns
    within: tuple[str, ...] = ()  # compare within each group of these (data-fraction: budget)
    description: str = ""
    curve: str = "train_loss"  # per-epoch metric of the curves figure
    select: str = ""  # a swept field chosen by validation per group of the others; "" = none
    compare_at: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)  # a published number to print beside ours
    file: dict[str, Any] = field(default_factory=dict)  # the experiment file as run, for run.json

    def configs(self) -> list[TrialConfig]:
        """Every distinct run to train, in table order (rows with the same config share one run)."""
        return list(dict.fromkeys(p.config for p in self.planned))
