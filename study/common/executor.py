"""One executor for the work that is not a Tune trial: ensemble members and sweep runs.

Tune trials are placed by Ray Tune (``study.stages.tune.run``); every other unit of work goes through
``run_units`` here, with one placement rule and one resume rule:

- placement: each unit is a Ray task; in the worker, ``place()`` turns the unit's config into the
  one that runs there (device and threads from what Ray granted), the unit trains, and the node
  it ran on is added to its summary;
- resume: a unit whose store holds an output saved from the same identity (its config less
  where it ran, and whatever else the stage says decides the result) is read back instead of
  trained; a saved output that cannot be read is named and trained again; anything else trains.
  Each output is saved the moment it arrives, so an interrupted run loses only what was running.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from lenet_core.config import TrialConfig
from lenet_core.data import ImageData
from lenet_core.errors import StudyError
from study.common.cluster import ResourcePlan
from study.common.context import RunContext

T = TypeVar("T")
R = TypeVar("R")
U = TypeVar("U", bound="WorkUnit")
Out = TypeVar("Out", bound="UnitOutput")


class WorkUnit(Protocol):
    """One model to train: a frozen dataclass with a unique ``name`` and the ``config`` it trains."""

    @property
    def name(self) -> str: ...

    @property
    def config(self) -> TrialConfig: ...


class UnitOutput(Protocol):
    summary: dict[str, Any]  # TrialResult.summary() and where it ran


class UnreadableOutput(Exception):
    """A saved output exists but cannot be read back; the executor says so and trains again."""


class UnitStore(Protocol[U, Out]):
    """Where a stage keeps its finished units, so a resume can skip them."""

    def load(self, unit: U) -> Out | None:
        """The output saved for exactly this unit; None if none, or saved from another identity.
        Raises ``UnreadableOutput`` when it is damaged."""
        ...

    def save(self, unit: U, output: Out) -> None: ...

    def note(self, unit: U, output: Out) -> str:
        """The progress line of a finished unit."""
        ...


def run_units(
    units: list[U],
    *,
    work: Callable[[U, ImageData], Out],
    store: UnitStore[U, Out],
    context: RunContext,
    label: str,
    then: Callable[[dict[str, Out]], T],
) -> T:
    """Train every unit that ``store`` does not already hold, ``plan.concurrent`` at a time on
    the cluster, and return ``then(outputs by unit name)``; ``then`` (tables and figures) starts
    in a thread as Ray shuts down (``ray_session_then``), and has finished when this returns."""
    from study.common.cluster import ray_session_then

    outputs, todo = reuse_saved(units, store, context.progress)
    with ray_session_then(context.cluster) as (session, start):
        plan = session.plan
        context.progress(
            f"{session.dashboard_text}; {len(todo)} {label} to train, {len(outputs)} read back, "
            f"{plan.concurrent} at a time"
        )

        def keep(item: tuple[Callable[[U, ImageData], Out], U], output: Out) -> str:
            unit = item[1]
            store.save(unit, output)  # at once, so a resume can skip it
            outputs[unit.name] = output
            return store.note(unit, output)

        map_on_ray(
            placed_work,
            [(work, unit) for unit in todo],
            data=context.data,
            plan=plan,
            label=label,
            name=lambda item: item[1].name,
            on_result=keep,
            already_done=len(outputs),
        )
        finished = start(then, outputs)
    return finished.result()


def reuse_saved(
    units: list[U], store: UnitStore[U, Out], say: Callable[[str], None]
) -> tuple[dict[str, Out], list[U]]:
    """(outputs read back by unit name, units still to train): the one resume rule."""
    outputs: dict[str, Out] = {}
    todo: list[U] = []
    for unit in units:
        try:
            saved = store.load(unit)
        except UnreadableOutput as exc:
            say(f"warning: {unit.name}'s saved output cannot be read ({exc}); training it again")
            saved = None
        if saved is None:
            todo.append(unit)
        else:
            outputs[unit.name] = saved
    return outputs, todo


def placed_work(item: tuple[Callable[[U, ImageData], Out], U], data: ImageData) -> Out:
    """In the Ray worker: the unit's config as it runs here, then the stage's work, then where."""
    from study.common.placement import place

    work, unit = item
    config, placement = place(unit.config)
    output = work(dataclasses.replace(unit, config=config), data)  # type: ignore[type-var]
    output.summary.update(placement.as_columns())
    return output


# Retries of a task after a system failure (its worker or node died); an exception raised by
# the task's own code is not retried (Ray's retry_exceptions stays off).
TASK_MAX_RETRIES = 3


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
    A task whose worker or node dies is run again elsewhere (up to TASK_MAX_RETRIES times);
    each item's result is taken once, from the attempt that finished. A task that still fails
    ends the run with a one-line error naming the item.
    """
    import ray

    from study.common.console import progress_bar

    if not items:
        return
    data_ref = ray.put(data)
    task = ray.remote(fn).options(
        **plan.task_options(),  # CPUs, GPUs, and spread over the nodes that have room
        max_retries=TASK_MAX_RETRIES,
        retry_exceptions=False,
    )
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
