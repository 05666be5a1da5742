"""``Status``: the one set of names for how a run (a trial, a member, a sweep run) ended.

A ``StrEnum``, so a status compares equal to its text and tables (parquet, CSV) hold plain
strings that pandas users filter with ``trials["status"] == "completed"``.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    # Set by lenet_core.train: the history rows of a run still going, and how a run ended.
    RUNNING = "running"  # a history row before the last
    COMPLETED = "completed"  # ran to its end (epochs or patience) and learned something
    DIVERGED = "diverged"  # the loss blew up (NaN, or above DIVERGED_LOSS)
    COLLAPSED = "collapsed"  # validation accuracy no better than guessing the majority class
    STOPPED = "stopped"  # the report callback asked the run to stop (a scheduler, a budget)
    # Set by the study layer from what Ray Tune says of a trial.
    PRUNED = "pruned"  # ASHA stopped it early: a fair run, cut short, never tested
    ERRORED = "errored"  # its worker raised or died past the retries
    UNFINISHED = "unfinished"  # the study ended (interrupt, time budget) while it ran

    @property
    def failed(self) -> bool:
        """Ran, but learned nothing usable: never averaged in, always named."""
        return self in FAILED

    @property
    def ended(self) -> bool:
        """Trained to its own end and was tested (completed, diverged or collapsed)."""
        return self in ENDED


# Never averaged in with the others, and named wherever results are summarized.
FAILED = frozenset({Status.DIVERGED, Status.COLLAPSED})
# A run that trained to its own end: the only ones with test metrics of their kept weights.
ENDED = frozenset({Status.COMPLETED, *FAILED})


def failed_names() -> tuple[str, ...]:
    """The failed statuses as plain strings, for ``Series.isin``."""
    return tuple(sorted(str(s) for s in FAILED))
