"""A Ray Tune callback that shows the study's progress in the driver's output.

In a terminal: a rich bar of finished trials whose clock is the study's wall time. Anywhere else
(CI logs, pipes, files): one plain line per epoch result and per finished trial, which a log keeps
where a redrawn bar would leave escape codes or nothing.

Its own module because it subclasses a Ray class: importing it imports Ray.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
from rich.text import Text

from lenet_core.status import Status
from study.common.console import clock
from study.stages.tune.tables import trial_status
from study.stages.tune.trial import METRIC

ENDED = ("TERMINATED", "ERROR")  # Tune's statuses of a trial that will not run again


class StudyClockColumn(ProgressColumn):
    """Time since the study started (Ray's start included), not since the bar was first drawn."""

    def __init__(self, started: float) -> None:
        super().__init__()
        self.started = started

    def render(self, task: Any) -> Text:
        return Text(clock(time.monotonic() - self.started), style="progress.elapsed")


class TrialProgress(Callback):
    def __init__(
        self,
        total: int,
        on_trial_done: Callable[[int], None] | None = None,
        *,
        epochs: int = 0,
        started: float | None = None,
        console: Console | None = None,
        chance: float = -math.inf,
    ) -> None:
        self.total = total
        self.epochs = epochs
        # a stopped trial whose best validation accuracy is at most this (the split's majority
        # class + the collapse margin) is named collapsed, as the tables will name it
        self.chance = chance
        self.started = time.monotonic() if started is None else started  # time.monotonic() clock
        self.best = -math.inf
        self.trial_best: dict[str, float] = {}  # best val acc of each trial so far, by Tune id
        self.on_trial_done = on_trial_done  # called with the number of finished trials
        self.console = console
        self.progress: Progress | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config with the experiment; a live display cannot travel.
        return {
            "total": self.total,
            "epochs": self.epochs,
            "chance": self.chance,
            "started": self.started,
            "best": self.best,
            "trial_best": {},
            "on_trial_done": None,
            "console": None,
            "progress": None,
        }

    @property
    def plain(self) -> bool:
        return self.console is None or not self.console.is_terminal

    def _say(self, line: str) -> None:
        if self.console is None:
            print(line, flush=True)
        else:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _counts(self, trials: list[Any], ending: Any = None) -> tuple[int, int]:
        """(ended, running); Tune calls on_trial_complete before it marks ``ending`` TERMINATED."""
        ended = sum(t.status in ENDED or t is ending for t in trials)
        return ended, sum(t.status == "RUNNING" and t is not ending for t in trials)

    def setup(self, **info: Any) -> None:
        # Start the bar with the experiment, not at the first result (a worker's start and first
        # epoch would otherwise be missing from it).
        if not self.plain:
            self._bar()

    def _bar(self) -> Progress:
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]trials"),
                BarColumn(),
                MofNCompleteColumn(),
                StudyClockColumn(self.started),
                TextColumn("{task.fields[info]}"),
                console=self.console,
            )
            self.task = self.progress.add_task("trials", total=self.total, info="")
            self.progress.start()
        return self.progress

    def _update_bar(self, trials: list[Any], ending: Any = None) -> None:
        done, running = self._counts(trials, ending)
        best = f", best val acc {self.best:.4f}" if self.best > -math.inf else ""
        self._bar().update(self.task, completed=done, info=f"{running} running{best}")

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        value = result.get(METRIC)
        if isinstance(value, float) and math.isfinite(value):
            self.best = max(self.best, value)
        val_acc = result.get("val_acc")
        if isinstance(val_acc, float) and math.isfinite(val_acc):
            self.trial_best[trial.trial_id] = max(self.trial_best.get(trial.trial_id, -math.inf), val_acc)
        if not self.plain:
            self._update_bar(trials)
            return
        done, running = self._counts(trials)
        of = f"/{self.epochs}" if self.epochs else ""
        self._say(
            f"trial {trials.index(trial) + 1} ({trial.trial_id}) epoch {result.get('epoch')}{of}: "
            f"val acc {_number(val_acc)}, train loss {_number(result.get('train_loss'))} "
            f"[{done}/{self.total} finished, {running} running, {clock(time.monotonic() - self.started)}]"
        )

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._finished(trials, trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._finished(trials, trial, errored=True)

    def _finished(self, trials: list[Any], trial: Any, *, errored: bool) -> None:
        done, _ = self._counts(trials, trial)
        if self.plain:
            last = dict(trial.last_result or {})
            status = trial_status(last, errored=errored)
            if status == Status.PRUNED and self.trial_best.get(trial.trial_id, math.inf) <= self.chance:
                status = Status.COLLAPSED  # stopped by ASHA at chance: collapsed, as in trials.parquet
            test = last.get("test_acc") if status.ended else None  # a pruned trial is untested
            self._say(
                f"trial {trials.index(trial) + 1} ({trial.trial_id}) {status}: best val acc "
                f"{_number(self.trial_best.get(trial.trial_id))}, test acc {_number(test)} "
                f"[{done}/{self.total} finished, {clock(time.monotonic() - self.started)}]"
            )
        else:
            self._update_bar(trials, trial)
        if self.on_trial_done is not None:
            self.on_trial_done(done)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        if self.progress is not None:
            self._update_bar(trials)
            self.progress.stop()
            self.progress = None


def _number(value: Any) -> str:
    """A metric to 4 places; a missing one (a pruned trial's test accuracy) as a dash."""
    if isinstance(value, int | float) and math.isfinite(value):
        return f"{value:.4f}"
    return "—"
