"""Every tune study as an Optuna study in an SQLite storage, ``tune/optuna.db``, for Optuna's own
tools: ``optuna.load_study``, ``optuna.visualization`` and optuna-dashboard.

The storage is rebuilt from the study's tables each time they are written, instead of being
filled by OptunaSearch while trials run: Ray's searcher tells Optuna COMPLETE for a trial that
ASHA stopped or that diverged (both end with a result), never hears of a trial that the time
budget cut short, and keeps no test accuracy. Rebuilding from the tables also makes a resume
idempotent: the file holds each trial once, however often it is written.

One Optuna trial per row of trials.parquet, numbered in the same order (Optuna's number is the
table's ``trial`` - 1):

- value: the trial's best validation accuracy (``best_val_acc``, the epoch whose weights it
  kept and tested, which is also what ranks trials for best.json);
- intermediate values: validation accuracy of every epoch, keyed by epoch;
- state: COMPLETE (completed), PRUNED (stopped by ASHA; or cut short by a spent time budget),
  FAIL (diverged, collapsed, errored: no value), RUNNING (unfinished in an interrupted study,
  which a resume runs again);
- user attrs: trial_id (Tune's), trial, status, test_acc, best_val_acc, final_val_acc,
  epochs_run, seconds, and error when there was one; with ``--seeds-per-trial`` the value,
  best_val_acc and test_acc are means over the seeds, and seeds, best_val_acc_std and
  test_acc_std are there too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from lenet_core.status import Status
from study.common.selection import SELECTION_METRIC

DIRECTION = "maximize"
VALUE = SELECTION_METRIC  # what an Optuna trial's value is
# The Optuna state of every status a trial can have (a test checks that none is missing).
# "stopped" is a run whose report callback asked it to stop: for a trial that is a scheduler's
# early stop, as pruned; "running" is a trial seen mid-way, as an unfinished one.
STATES = {
    Status.COMPLETED: "COMPLETE",
    Status.PRUNED: "PRUNED",
    Status.STOPPED: "PRUNED",
    Status.DIVERGED: "FAIL",
    Status.COLLAPSED: "FAIL",
    Status.ERRORED: "FAIL",
}
LIVE = (Status.UNFINISHED, Status.RUNNING)  # RUNNING in an interrupted study, else PRUNED


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's logger at WARNING for the block, then back to what it was: a study's searcher and
    storage would log a line per trial, and a notebook's own Optuna logging is left as it was."""
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def storage_url(path: Path) -> str:
    """The SQLAlchemy URL Optuna's tools take: ``sqlite:///`` and an absolute path."""
    return f"sqlite:///{path.resolve()}"


def optuna_state(status: str, *, study_ended: bool) -> Any:
    """The Optuna state of a trial's status.

    An unfinished trial of a study that ended (its time budget was spent) never runs again: like
    a pruned one it was stopped early with a partial curve. In an interrupted study it is still
    RUNNING: a resume runs it again.
    """
    from optuna.trial import TrialState

    if status in LIVE:
        return TrialState.PRUNED if study_ended else TrialState.RUNNING
    return TrialState[STATES[Status(status)]]


def write_optuna_study(
    path: Path,
    *,
    study_name: str,
    trials: pd.DataFrame,
    epochs: pd.DataFrame,
    distributions: dict[str, Any],
    study_ended: bool,
    study_attrs: dict[str, Any] | None = None,
) -> None:
    """Write ``path`` anew: a temporary SQLite file, renamed over the old one when complete, so
    a dashboard reading it sees the old study or the new one, never half of it."""
    from study.common.files import write_via_temp

    frozen = [
        frozen_trial(row, epochs, distributions=distributions, study_ended=study_ended)
        for row in trials.to_dict("records")
    ]

    def build(tmp: Path) -> None:
        import optuna
        from optuna.storages import RDBStorage

        storage = RDBStorage(storage_url(tmp))
        try:
            study = optuna.create_study(storage=storage, study_name=study_name, direction=DIRECTION)
            for key, value in {
                "value": f"{VALUE}: validation accuracy of the best validation epoch",
                **(study_attrs or {}),
            }.items():
                study.set_user_attr(key, _plain(value))
            study.add_trials(frozen)
        finally:
            storage.engine.dispose()  # close SQLite before the file is renamed into place

    with quiet_optuna():
        write_via_temp(path, build)


def frozen_trial(
    row: dict[str, Any], epochs: pd.DataFrame, *, distributions: dict[str, Any], study_ended: bool
) -> Any:
    """One row of trials.parquet as a finished (or running) Optuna trial."""
    from optuna.trial import TrialState, create_trial

    state = optuna_state(row["status"], study_ended=study_ended)
    value = _plain(row[VALUE])
    curve = epochs[epochs["trial_id"] == row["trial_id"]]
    params = {name: _plain(row[name]) for name in distributions if _plain(row.get(name)) is not None}
    trial = create_trial(
        state=state,
        # Optuna keeps no value for a failed or running trial; a pruned one keeps its best so far
        value=value if state in (TrialState.COMPLETE, TrialState.PRUNED) else None,
        params=params,
        distributions={name: distributions[name] for name in params},
        intermediate_values={int(e): float(v) for e, v in zip(curve["epoch"], curve["val_acc"], strict=True)},
        user_attrs=_user_attrs(row),
    )
    # When the trial ran (taken in its worker), not when this file was written.
    started, ended = _when(row.get("start_time")), _when(row.get("end_time"))
    if started is not None:
        trial.datetime_start = started
    if ended is not None and trial.datetime_complete is not None:
        trial.datetime_complete = ended
    return trial


def _user_attrs(row: dict[str, Any]) -> dict[str, Any]:
    attrs = {
        "trial_id": row["trial_id"],
        "trial": row["trial"],
        "status": row["status"],
        "test_acc": row["test_acc"],  # None for a pruned or unfinished trial: it was never tested
        "best_val_acc": row["best_val_acc"],
        "final_val_acc": row["final_val_acc"],
        "epochs_run": row["epochs_run"],
        "seconds": row["wall_s"],
    }
    # --seeds-per-trial: the value and test_acc are means over the seeds; their spreads
    attrs.update({k: row[k] for k in ("seeds", "best_val_acc_std", "test_acc_std") if k in row})
    if row.get("error"):
        attrs["error"] = row["error"]
    return {key: _plain(value) for key, value in attrs.items()}


def _plain(value: Any) -> Any:
    """A JSON-able Python value: numpy scalars unwrapped, NaN (not a result) as None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _when(timestamp: Any) -> datetime | None:
    seconds = _plain(timestamp)
    return datetime.fromtimestamp(seconds) if isinstance(seconds, int | float) else None
