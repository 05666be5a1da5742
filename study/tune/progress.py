"""A Ray Tune callback that draws a progress bar of finished trials in the driver's terminal.

Its own module because it subclasses a Ray class: importing it imports Ray.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ray.tune import Callback
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from study.tune.run import METRIC


class TrialProgress(Callback):
    def __init__(self, total: int, on_trial_done: Callable[[int], None] | None = None) -> None:
        self.total = total
        self.best = -math.inf
        self.progress: Progress | None = None
        self.on_trial_done = on_trial_done  # called with the number of finished trials

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config with the experiment; a live display cannot travel.
        return {"total": self.total, "best": self.best, "progress": None, "on_trial_done": None}

    def _finished(self, trials: list[Any]) -> None:
        self._update(trials)
        if self.on_trial_done is not None:
            self.on_trial_done(sum(t.status in ("TERMINATED", "ERROR") for t in trials))

    def _update(self, trials: list[Any], result: dict[str, Any] | None = None) -> None:
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]trials"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self.task = self.progress.add_task("trials", total=self.total, info="")
            self.progress.start()
        value = (result or {}).get(METRIC)
        if isinstance(value, float) and math.isfinite(value):
            self.best = max(self.best, value)
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        running = sum(t.status == "RUNNING" for t in trials)
        best = f", best val acc {self.best:.4f}" if self.best > -math.inf else ""
        self.progress.update(self.task, completed=done, info=f"{running} running{best}")

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        self._update(trials, result)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._finished(trials)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._finished(trials)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._update(trials)
        if self.progress is not None:
            self.progress.stop()
