"""The worker side of a `study tune` trial: what runs inside Ray, and the names of what it reports.

Ray imports this module in every trial worker, so it imports only what a trial needs (torch
through lenet_core, and Ray Tune); pandas, tables and figures stay in the driver.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from lenet_core.config import TrialConfig
from lenet_core.data import ImageData
from lenet_core.train import train_trial
from study.common.selection import SELECTION_MODE, running_best
from study.stages.tune.space import sampled_config

# What Optuna and ASHA optimize, reported after every epoch: the selection metric so far (the best
# validation accuracy up to this epoch, study.common.selection), so the value Optuna records for a
# trial, the one ASHA compares at a rung, best.json and --top-k all rank by one number. Test
# accuracy is never used for selection.
METRIC = "objective"
MODE = SELECTION_MODE
CONFIG_KEY = "trial_config"  # the reported JSON config ("config" is Tune's own result key)


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
    params: dict[str, Any], *, data: ImageData, base: TrialConfig, probe_memory: bool = False
) -> None:
    """One Ray Tune trial: place its config, train, report every epoch to Tune."""
    from ray import tune

    from study.common.placement import place

    config, placement = place(sampled_config(base, params))
    extra = {
        **placement.as_columns(),
        **(worker_memory(data) if probe_memory else {}),
        CONFIG_KEY: json.dumps(config.to_dict()),  # the config exactly as this trial runs
        "started_at": time.time(),  # wall clock, so the driver can see which trials overlapped
    }

    val_accs: list[float] = []

    def report(row: dict[str, Any]) -> None:
        val_accs.append(row["val_acc"])
        tune.report({**row, **extra, METRIC: running_best(val_accs), "reported_at": time.time()})

    train_trial(config, data, report=report)
