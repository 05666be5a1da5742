"""One executor for the work that is not a Tune trial: ensemble members and sweep runs.

Tune trials are placed by Ray Tune (``study.stages.tune.run``); every other unit of work goes through
``run_units`` here, with one placement rule and one resume rule:

- placement: each unit is a Ray task; in the worker, ``place()`` turns the unit's config into the
  one that runs there (device and threads from what Ray granted), the unit trains, and the node
  it ran on is added to its summary;
- resume: a unit whose store holds an output saved from the same identity (its config less
  where it ran, and whatever else the stage says decides the result) is read back instead of
  trained; a saved output that cannot be read is named and trained again; anything else trains.
  Each output is saved the moment it arrives, so an interrupted run loses only what was running;
- packing: of the units still to train, those whose configs share a ``lenet_core.packed.pack_key``
  (one architecture, batch size, split, device and precision; seeds, optimizers and training
  indices may differ) train together as packs of at most ``pack`` in one task, through the
  stage's ``work_pack`` (``train_packed``: one vectorized step for the pack). A unit that cannot
  pack (a ResNet, fp16) or has no partner trains alone through ``work``, exactly as unpacked.
  Every output of a pack is saved as soon as its pack returns.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol, TypeVar

from lenet_core.config import TrialConfig
from lenet_core.data import ImageData
from lenet_core.errors import StudyError
from study.common.cluster import ResourcePlan
from study.common.context import RunContext, check_pack

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


# One task: (the work, its units); a list of one trains through ``work``, longer ones are a pack.
Item = tuple[Callable[..., Any], list[Any]]


def run_units(
    units: list[U],
    *,
    work: Callable[[U, ImageData], Out],
    store: UnitStore[U, Out],
    context: RunContext,
    label: str,
    then: Callable[[dict[str, Out]], T],
    pack: int = 1,
    work_pack: Callable[[list[U], ImageData], list[Out]] | None = None,
) -> T:
    """Train every unit that ``store`` does not already hold, ``plan.concurrent`` tasks at a time on
    the cluster, and return ``then(outputs by unit name)``; ``then`` (tables and figures) starts
    in a thread as Ray shuts down (``ray_session_then``), and has finished when this returns.

    With ``pack`` > 1 and a ``work_pack``, the units still to train that can share a pack train
    as packs of at most ``pack`` (``pack_units``), one task each; the others one per task."""
    from study.common.cluster import ray_session_then

    check_pack(pack)
    outputs, todo = reuse_saved(units, store, context.progress)
    with ray_session_then(context.cluster) as (session, start):
        plan = session.plan
        batches = pack_units(todo, pack if work_pack is not None else 1, concurrent=plan.concurrent)
        packs = [batch for batch in batches if len(batch) > 1]
        packed = (
            f"; {sum(map(len, packs))} of them in {len(packs)} pack{'s' * (len(packs) > 1)} of up to "
            f"{max(map(len, packs))}"
            if packs
            else ""
        )
        context.progress(
            f"{session.dashboard_text}; {len(todo)} {label} to train, {len(outputs)} read back, "
            f"{plan.concurrent} at a time{packed}"
        )

        def keep(item: Item, produced: list[Out]) -> str:
            notes = []
            for unit, output in zip(item[1], produced, strict=True):
                store.save(unit, output)  # at once, so a resume can skip it
                outputs[unit.name] = output
                notes.append(store.note(unit, output))
            return "; ".join(notes)

        items: list[Item] = [(work_pack if len(b) > 1 else work, b) for b in batches]
        map_on_ray(
            placed_units,
            items,
            data=context.data,
            plan=plan,
            label=label,
            name=lambda item: ", ".join(unit.name for unit in item[1]),
            on_result=keep,
            already_done=len(outputs),
            steps=lambda item: len(item[1]),
        )
        finished = start(then, outputs)
    return finished.result()


def packable(config: TrialConfig) -> bool:
    """Whether a unit of this config may train in a pack (``lenet_core.packed.check_packable``):
    a LeNet-5 in fp32 or bf16 with no field packed training does not know."""
    from lenet_core.errors import ConfigError
    from lenet_core.packed import check_packable

    try:
        check_packable([config])
    except ConfigError:
        return False
    return True


def pack_units(
    units: Sequence[U],
    pack: int,
    *,
    concurrent: int = 1,
    key: Callable[[TrialConfig], Hashable] | None = None,
) -> list[list[U]]:
    """The tasks that train ``units``: lists of one unit, or packs of units whose configs share
    ``key`` (``lenet_core.packed.pack_key``), in the order of each task's first unit.

    A group of n packable units of one key trains as ceil(n / size) packs of near-equal sizes
    (10 at size 4: 4, 3, 3), where size is ``pack``, or less when that would leave fewer tasks than
    the cluster runs at once (``concurrent``): 5 units on 2 cores train as packs of 3 and 2, not as
    one pack of 5 beside an idle core. Units that cannot pack (``packable``) train alone.
    """
    from lenet_core.packed import pack_key

    if pack <= 1:
        return [[unit] for unit in units]
    key = key or pack_key
    groups: dict[Hashable, list[int]] = {}
    alone: list[int] = []
    for i, unit in enumerate(units):
        if packable(unit.config):
            groups.setdefault(key(unit.config), []).append(i)
        else:
            alone.append(i)
    size = min(pack, max(1, math.ceil(sum(map(len, groups.values())) / max(concurrent, 1))))
    tasks = [[i] for i in alone]
    for members in groups.values():
        count = math.ceil(len(members) / size)
        bigger = len(members) % count  # the first ``bigger`` packs take one unit more
        start = 0
        for j in range(count):
            end = start + len(members) // count + (j < bigger)
            tasks.append(members[start:end])
            start = end
    return [[units[i] for i in task] for task in sorted(tasks)]


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


def placed_units(item: Item, data: ImageData) -> list[Any]:
    """One task of ``run_units``, in the Ray worker: the units' configs as they run here (one
    placement: one task), the stage's work (``work`` for a unit alone, ``work_pack`` for a pack),
    and where each ran and with how many (``pack_size``; a packed unit's seconds are its share)."""
    from study.common.placement import place

    fn, units = item
    _, placement = place(units[0].config)
    placed = [
        dataclasses.replace(unit, config=placement.apply(unit.config))  # type: ignore[type-var]
        for unit in units
    ]
    outputs = [fn(placed[0], data)] if len(placed) == 1 else fn(placed, data)
    for output in outputs:
        output.summary.update(placement.as_columns())
        output.summary["pack_size"] = len(units)
    return outputs


def placed_work(item: tuple[Callable[[U, ImageData], Out], U], data: ImageData) -> Out:
    """One unit alone, as ``placed_units`` runs it."""
    work, unit = item
    return placed_units((work, [unit]), data)[0]


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
    steps: Callable[[T], int] | None = None,
) -> None:
    """Run ``fn(item, data)`` for every item as Ray tasks, ``plan.concurrent`` at a time.

    ``data`` goes into the object store once and every task reads it zero-copy. ``on_result``
    runs in the driver as each task finishes (to save it at once) and returns a progress note.
    A task whose worker or node dies is run again elsewhere (up to TASK_MAX_RETRIES times);
    each item's result is taken once, from the attempt that finished. A task that still fails
    ends the run with a one-line error naming the item. ``steps(item)`` is how far an item moves
    the progress bar (a pack: its units; default 1).
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
    size = steps or (lambda _: 1)
    with progress_bar(label, sum(map(size, items)) + already_done) as advance:
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
            advance(on_result(item, output), steps=size(item))
