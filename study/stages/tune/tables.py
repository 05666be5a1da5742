"""`study tune` tables: Tune's results as one row per trial and per trial-epoch, the best trial,
and the markdown summary.

Everything is read through Tune's public ``Result`` objects (``metrics``, ``metrics_dataframe``,
``error``); the config of each row is the one the worker reported as it ran (JSON).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from lenet_core.config import TrialConfig, from_dict
from lenet_core.data import ImageData
from lenet_core.status import FAILED, Status
from study.common.selection import SELECTION_METRIC
from study.stages.tune.trial import (
    CONFIG_KEY,
    EPOCH_COLUMNS,
    SEED_STD_COLUMNS,
    SEEDS,
    TEST_ACC_STD,
    VAL_ACC_STD,
)

MEMORY_COLUMNS = ("worker_rss_mb", "worker_uss_mb", "data_private_mb", "data_zero_copy")


def trial_status(last: dict[str, Any], *, errored: bool) -> Status:
    """completed / diverged / collapsed / pruned / errored / unfinished, from the last result.

    The worker's own final status decides first: its last epoch says "completed", "diverged" or
    "collapsed". Tune's ``done`` flag is not enough alone: Tune sets it on the cached last result
    in place, so a study restored from a state saved in that moment has a finished trial without
    it. ``done`` on a result the worker did not end means ASHA stopped the trial (pruned; one at
    chance is then named collapsed by ``mark_collapsed``).
    """
    if errored:
        return Status.ERRORED
    status = last.get("status")
    if status in {s.value for s in Status} and Status(status).ended:
        return Status(status)
    return Status.PRUNED if last.get("done") else Status.UNFINISHED


def last_attempt(history: pd.DataFrame | None) -> pd.DataFrame | None:
    """A trial's rows from its last attempt only.

    A trial that Tune restarted (its worker or node died; no checkpoint) trains again from epoch 1
    and Tune appends those rows to the first attempt's: keep the attempt that produced the result.
    """
    if history is None or not len(history) or "epoch" not in history:
        return history
    restarts = (history["epoch"].diff() <= 0).to_numpy().nonzero()[0]
    return history.iloc[restarts[-1] :] if len(restarts) else history


def trial_row(
    result: Any, *, params: list[str], data: ImageData, fallback_config: str, seeds_per_trial: int = 1
) -> dict[str, Any]:
    """One trial's row: its sampled values, status, metrics, where and when it ran, its config.

    A trial over S > 1 seeds (``--seeds-per-trial``) reported their means: its ``best_val_acc``
    (the selection metric) is the mean over the seeds of each one's best validation accuracy, its
    ``test_acc`` their mean, each with its spread (``*_std``) and ``seeds``."""
    metrics = dict(result.metrics or {})
    trial_id = str(metrics.get("trial_id") or Path(str(result.path)).name)
    status = trial_status(metrics, errored=result.error is not None)
    config_json = metrics.get(CONFIG_KEY) or fallback_config
    config = json.loads(config_json) if config_json else {}
    history = last_attempt(result.metrics_dataframe)
    has_history = history is not None and len(history) > 0
    selection = float(history["val_acc"].max()) if has_history else math.nan
    over_seeds: dict[str, Any] = {}
    if seeds_per_trial > 1:
        selection = float(metrics.get(SELECTION_METRIC, math.nan)) if has_history else math.nan
        over_seeds = {
            SEEDS: seeds_per_trial,
            **{key: float(metrics.get(key, math.nan)) for key in SEED_STD_COLUMNS},
        }
        if not status.ended:  # never tested, as its test_acc
            over_seeds[TEST_ACC_STD] = math.nan
    return {
        "trial_id": trial_id,
        **{name: config.get(name) for name in params},
        "status": str(status),
        "epochs_run": int(metrics.get("epoch", 0) or 0),
        # the selection metric: the best epoch's validation accuracy (NaN when it never reported);
        # over seeds, the mean of each seed's
        SELECTION_METRIC: selection,
        "final_val_acc": metrics.get("val_acc", math.nan),
        # a pruned trial was never tested: its test accuracy is not a result
        "test_acc": metrics.get("test_acc", math.nan) if status.ended else math.nan,
        **over_seeds,
        "wall_s": metrics.get("time_total_s", math.nan),
        # precise wall-clock times (unix seconds) taken in the worker: which trials overlapped
        "start_time": metrics.get("started_at", math.nan),
        "end_time": metrics.get("reported_at", math.nan),
        "images_per_s": float(history["images_per_s"].mean()) if has_history else math.nan,
        "seed": config.get("seed"),
        "data_checksum": data.checksum,
        "node_ip": metrics.get("node_ip", ""),
        "node_id": metrics.get("node_id", ""),
        "error": str(result.error).strip().splitlines()[0] if result.error else "",
        **{k: metrics[k] for k in MEMORY_COLUMNS if k in metrics},
        "config": config_json,
    }


def collect_results(
    grid: Any, *, params: list[str], data: ImageData, sampled: Any, seeds_per_trial: int = 1
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, epochs) from Tune's ResultGrid: one row per trial, and per trial-epoch.

    ``sampled(params) -> TrialConfig`` rebuilds the config of a trial that failed before it
    reported anything (its worker never said what ran). With ``seeds_per_trial`` > 1 the rows
    are means over the seeds, with their spreads (``trial_row``; epochs: ``val_acc_std``).
    """
    epoch_columns = [*EPOCH_COLUMNS, VAL_ACC_STD] if seeds_per_trial > 1 else EPOCH_COLUMNS
    trial_rows, epoch_frames = [], []
    for result in grid:
        fallback = ""
        if not (result.metrics or {}).get(CONFIG_KEY):
            sampled_params = {k: v for k, v in (result.config or {}).items() if k in params}
            fallback = json.dumps(sampled(sampled_params).to_dict())
        row = trial_row(
            result, params=params, data=data, fallback_config=fallback, seeds_per_trial=seeds_per_trial
        )
        trial_rows.append(row)
        history = last_attempt(result.metrics_dataframe)
        if history is not None and len(history):
            frame = history[[c for c in epoch_columns if c in history.columns]].copy()
            frame.insert(0, "trial_id", row["trial_id"])
            epoch_frames.append(frame)
    # Number trials in the order they started (Tune hands them out in the searcher's order);
    # one that never reported comes last.
    trials = pd.DataFrame(trial_rows).sort_values(["start_time", "trial_id"], na_position="last")
    trials.insert(1, "trial", range(1, len(trials) + 1))
    trials = mark_collapsed(trials.reset_index(drop=True), data=data)
    epochs = (
        pd.concat(epoch_frames, ignore_index=True)
        if epoch_frames
        else pd.DataFrame(columns=["trial_id", *epoch_columns])
    )
    return trials, epochs


def mark_collapsed(
    trials: pd.DataFrame, *, data: ImageData, statuses: tuple[Status, ...] = (Status.PRUNED,)
) -> pd.DataFrame:
    """``trials`` with every trial of ``statuses`` whose best validation accuracy is no better than
    always answering the validation split's majority class (+ COLLAPSE_MARGIN) named collapsed.

    A trial at chance learned nothing usable, whoever stopped it: ASHA (pruned) or a spent time
    budget (unfinished, passed by the caller once the budget is known to have ended the study).
    The worker names the trials it ran to their end; this names the ones stopped before. They stay
    untested (test_acc NaN) and, like every failed trial, out of the best trial and the tables.
    The majority fraction is the trial's own validation split's (val_fraction, split_seed).
    """
    from lenet_core.train import is_collapsed, trial_split  # torch: only when a table is built

    if not len(trials) or not trials["status"].isin([str(s) for s in statuses]).any():
        return trials
    labels_by_split: dict[tuple[float, int], Any] = {}

    def at_chance(row: pd.Series) -> bool:
        if not row["config"] or not math.isfinite(row[SELECTION_METRIC]):
            return False
        config = from_dict(json.loads(row["config"]), source="trial config")
        key = (config.val_fraction, config.split_seed)
        if key not in labels_by_split:
            _, val_idx = trial_split(data, config)
            labels_by_split[key] = data.train_labels[val_idx]
        labels = labels_by_split[key]
        return len(labels) > 0 and is_collapsed(row[SELECTION_METRIC], labels)

    candidates = trials["status"].isin([str(s) for s in statuses])
    collapsed = [bool(candidates[i]) and at_chance(row) for i, row in trials.iterrows()]
    marked = trials.copy()
    marked.loc[collapsed, "status"] = str(Status.COLLAPSED)
    return marked


def completed(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials that ran every epoch and learned: the only ones means, groups and importance use.

    Pruned trials stopped at an early epoch, and failed ones (diverged, collapsed) are counted
    and named apart; pooling either with finished trials would compare different things.
    """
    return trials[trials["status"] == Status.COMPLETED]


def ranked(trials: pd.DataFrame) -> pd.DataFrame:
    """Completed trials, best first by the selection metric (ties: the earlier trial)."""
    return completed(trials).sort_values([SELECTION_METRIC, "trial"], ascending=[False, True])


def best_trial(trials: pd.DataFrame) -> pd.Series | None:
    """The completed trial with the highest selection metric (never test accuracy).

    The weights a trial tests are those of its best validation epoch, so that is what ranks it.
    """
    order = ranked(trials)
    return None if order.empty else order.iloc[0]


GROUP_BY = ("optimizer", "activation", "pooling", "batch_size", "lr_schedule", "augment")


def group_table(trials: pd.DataFrame, name: str) -> pd.DataFrame:
    """Best validation accuracy of completed trials by one searched value."""
    table = (
        completed(trials)
        .groupby(name)[SELECTION_METRIC]
        .agg(trials="count", mean_val_acc="mean", best_val_acc="max")
    )
    return table.sort_values("mean_val_acc", ascending=False)


def searched_setting(config: TrialConfig, params: list[str]) -> str:
    """The searched fields of one config, in the space's order ("adam, lr 0.00082, tanh, ...").

    Only searched fields: the fixed ones are the same for every trial and live in run.json; those
    the config ignores (``TrialConfig.ignored_fields``) are left out.
    """
    parts = []
    for name in [p for p in params if p not in config.ignored_fields()]:
        value = getattr(config, name)
        label = name.replace("_", " ")
        if isinstance(value, float):
            parts.append(f"{label} {value:.2g}")
        elif name in ("optimizer", "activation"):
            parts.append(str(value))
        else:
            parts.append(f"{label} {value}")
    return ", ".join(parts)


def validation_gap_sentence(trials: pd.DataFrame) -> str | None:
    """How far completed trials' validation accuracy sits from their test accuracy, or None.

    The validation split is carved from the training images, so it can be easier (or harder)
    than the official test set; a goal stated in test accuracy should be read against this gap.
    Test accuracy is only described here, never used to select.
    """
    done = completed(trials).dropna(subset=["test_acc"])
    if len(done) < 2:
        return None
    gap = 100 * (done[SELECTION_METRIC] - done["test_acc"])  # points, one per trial
    direction = "above" if gap.mean() > 0 else "below"
    same_side = int((gap > 0).sum()) if gap.mean() > 0 else int((gap < 0).sum())
    return (
        f"Validation accuracy sits {direction} test accuracy by {abs(gap.mean()):.2f} points on "
        f"average over the {len(done)} completed trials (from {gap.min():+.2f} to {gap.max():+.2f}; "
        f"{same_side} of {len(done)} on that side): the validation split comes from the training "
        "images, so a validation score predicts test accuracy only up to this offset."
    )


def status_counts(trials: pd.DataFrame) -> str:
    return ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items())


def summary_markdown(trials: pd.DataFrame, params: list[str]) -> str:
    """Top 10 trials, failed trials by name, and validation accuracy by each searched categorical."""
    cols = ["trial", *params, "status", "epochs_run", "best_val_acc", "final_val_acc", "test_acc"]
    top = trials.sort_values(SELECTION_METRIC, ascending=False).head(10)[cols]
    parts = [
        "# Tune summary",
        "",
        f"{len(trials)} trials: {status_counts(trials)}.",
        "",
        "## Top 10 trials by validation accuracy",
        "",
        top.to_markdown(index=False, floatfmt=".4g"),
        "",
    ]
    failed = trials[trials["status"].isin(FAILED)]
    if len(failed):
        parts += [
            "## Failed trials (excluded from every mean and from the best)",
            "",
            failed[["trial", *params, "status", "epochs_run", "final_val_acc"]].to_markdown(
                index=False, floatfmt=".4g"
            ),
            "",
        ]
    for name in [g for g in GROUP_BY if g in params]:
        parts += [
            f"## Validation accuracy by {name} (completed trials only)",
            "",
            group_table(trials, name).to_markdown(floatfmt=".4g"),
            "",
        ]
    return "\n".join(parts)
