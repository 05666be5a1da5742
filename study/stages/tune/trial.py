"""The worker side of a `study tune` trial: what runs inside Ray, and the names of what it reports.

Ray imports this module in every trial worker, so it imports only what a trial needs (torch
through lenet_core, and Ray Tune); pandas, tables and figures stay in the driver.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np

from lenet_core.config import TrialConfig
from lenet_core.data import ImageData
from lenet_core.status import Status
from lenet_core.train import train_trial
from study.common.selection import SELECTION_METRIC, SELECTION_MODE, running_best
from study.stages.tune.space import sampled_config

# What Optuna and ASHA optimize, reported after every epoch: the selection metric so far (the best
# validation accuracy up to this epoch, study.common.selection), so the value Optuna records for a
# trial, the one ASHA compares at a rung, best.json and --top-k all rank by one number. Test
# accuracy is never used for selection.
METRIC = "objective"
MODE = SELECTION_MODE
CONFIG_KEY = "trial_config"  # the reported JSON config ("config" is Tune's own result key)
# --seeds-per-trial S > 1: what a trial reports besides its mean row. SEEDS is S; each *_std
# column is the sample standard deviation (ddof 1) of that metric over the S seeds.
SEEDS = "seeds"
VAL_ACC_STD = "val_acc_std"
SELECTION_STD = f"{SELECTION_METRIC}_std"
TEST_ACC_STD = "test_acc_std"
SEED_STD_COLUMNS = (SELECTION_STD, TEST_ACC_STD)  # the trials table's spreads over seeds
# A trial over seeds ends with the first of these that any seed ended with, else completed: it is
# completed only when every seed completed.
SEED_STATUS_ORDER = (Status.DIVERGED, Status.COLLAPSED, Status.STOPPED)


def worker_memory(data: ImageData) -> dict[str, Any]:
    """This worker's memory, and how much private memory reading the whole dataset costs.

    Pages of Ray's object store are shared, so reading zero-copy arrays leaves the unique set
    size (USS) unchanged; a per-trial copy would add the dataset's size to it.
    """
    import psutil

    process = psutil.Process()
    before = process.memory_full_info().uss
    touched = int(data.train_images.sum(dtype=np.uint64)) + int(data.test_images.sum(dtype=np.uint64))
    after = process.memory_full_info()
    return {
        "worker_rss_mb": after.rss / 2**20,
        "worker_uss_mb": after.uss / 2**20,
        "data_private_mb": max(after.uss - before, 0) / 2**20,
        "data_zero_copy": not data.train_images.flags.owndata and not data.train_images.flags.writeable,
        "data_touched": touched > 0,
    }


def tune_trainable(
    params: dict[str, Any],
    *,
    data: ImageData,
    base: TrialConfig,
    probe_memory: bool = False,
    seeds_per_trial: int = 1,
) -> None:
    """One Ray Tune trial: place its config, train, report every epoch to Tune.

    With ``seeds_per_trial`` S > 1 the config trains on seeds seed, ..., seed + S - 1 as one pack
    (``train_packed``) and each epoch's report is their mean (``SeedMeans``)."""
    from ray import tune

    from study.common.placement import place

    config, placement = place(sampled_config(base, params))
    extra = {
        **placement.as_columns(),
        **(worker_memory(data) if probe_memory else {}),
        CONFIG_KEY: json.dumps(config.to_dict()),  # the config exactly as this trial runs
        "started_at": time.time(),  # wall clock, so the driver can see which trials overlapped
    }

    if seeds_per_trial > 1:
        from lenet_core.packed import train_packed

        configs = [config.replace(seed=config.seed + i) for i in range(seeds_per_trial)]
        means = SeedMeans(seeds_per_trial)

        def report_epoch(rows: dict[int, dict[str, Any]]) -> None:
            tune.report({**means.row(rows), **extra, "reported_at": time.time()})

        train_packed(configs, data, report_epoch=report_epoch)
        return

    val_accs: list[float] = []

    def report(row: dict[str, Any]) -> None:
        val_accs.append(row["val_acc"])
        tune.report({**row, **extra, METRIC: running_best(val_accs), "reported_at": time.time()})

    train_trial(config, data, report=report)


# The per-epoch columns of a trial's history (epochs.parquet), in their order.
EPOCH_COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "seconds",
    "images_per_s",
    "status",
]
# Those a trial over seeds reports as their mean (NaN when any seed has none); the epoch is the
# latest, the seconds are added up and the status is combined (SeedMeans).
MEAN_COLUMNS = tuple(c for c in EPOCH_COLUMNS if c not in ("epoch", "seconds", "status"))


class SeedMeans:
    """A Tune trial over S seeds trained as one pack: after each epoch, one row for Tune.

    Each seed's latest history row counts, so a seed that has ended (patience, divergence) still
    counts with its last row, and every mean is over all S seeds:

    - ``val_acc`` (and ``lr``, the losses, ``train_acc``, ``test_*``, ``images_per_s``): the mean
      over the seeds, ``val_acc_std`` their spread;
    - ``best_val_acc`` and METRIC, what ASHA and Optuna's searcher compare: the mean over the
      seeds of each seed's selection metric so far (its running best validation accuracy, 0 for
      none). At a trial's end that is the mean of its seeds' ``best_val_acc``, the trials table's
      selection metric and Optuna's value, so the searcher, ASHA and the tables rank by one
      number, as with one seed. (The running best of the mean curve would be lower: the seeds
      need not peak at the same epoch, and each keeps its own best epoch's weights.)
    - ``seconds``: the epoch's wall time (the seeds' shares added up);
    - ``status``: running until every seed has ended, then the trial's (SEED_STATUS_ORDER), with
      ``test_acc`` the mean of the seeds' kept weights' test accuracy and ``test_acc_std``.
    """

    def __init__(self, seeds: int) -> None:
        self.seeds = seeds
        self.latest: dict[int, dict[str, Any]] = {}
        self.val_accs: dict[int, list[float]] = {i: [] for i in range(seeds)}

    def row(self, rows: dict[int, dict[str, Any]]) -> dict[str, Any]:
        for i, row in rows.items():
            self.latest[i] = row
            self.val_accs[i].append(row["val_acc"])
        latest = [self.latest[i] for i in sorted(self.latest)]
        bests = [running_best(self.val_accs[i]) for i in range(self.seeds)]
        statuses = [str(r["status"]) for r in latest]
        ended = len(latest) == self.seeds and Status.RUNNING not in statuses
        out: dict[str, Any] = {
            "epoch": max(int(r["epoch"]) for r in rows.values()),
            **{key: _mean([r[key] for r in latest]) for key in MEAN_COLUMNS},
            VAL_ACC_STD: _std([r["val_acc"] for r in latest]),
            "seconds": float(sum(r["seconds"] for r in rows.values())),
            SELECTION_METRIC: _mean(bests),
            SELECTION_STD: _std(bests),
            METRIC: _mean(bests),
            "status": str(_seeds_status(statuses)) if ended else str(Status.RUNNING),
            SEEDS: self.seeds,
        }
        if ended:
            out[TEST_ACC_STD] = _std([r["test_acc"] for r in latest])
        return out


def _mean(values: list[float]) -> float:
    return float(np.mean(np.asarray(values, dtype=float))) if values else math.nan


def _std(values: list[float]) -> float:
    """Sample standard deviation (ddof 1); NaN for fewer than two values or any NaN."""
    return float(np.std(np.asarray(values, dtype=float), ddof=1)) if len(values) > 1 else math.nan


def _seeds_status(statuses: list[str]) -> Status:
    for status in SEED_STATUS_ORDER:
        if status in statuses:
            return status
    return Status.COMPLETED
