"""One executor for the work that is not a Tune trial: ensemble members and sweep runs.

Every unit is a Ray task, placed where Ray has room; the dataset goes into the object store once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from lenet_core.errors import StudyError
from study.common.cluster import ResourcePlan

T = TypeVar("T")
R = TypeVar("R")

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
        num_cpus=plan.cpus_per_trial,
        num_gpus=plan.gpus_per_trial,
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
