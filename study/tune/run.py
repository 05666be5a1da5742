"""`study tune`: Ray Tune schedules trials, Optuna (TPE) proposes them, ASHA stops poor ones.

Each trial is one call of ``lenet_core.train.train_trial``; its per-epoch rows go to Tune with
``tune.report``. The dataset is loaded once by the driver and handed to every trial through
Ray's object store (``tune.with_parameters``), where its uint8 arrays are read zero-copy.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lenet_core.config import TrialConfig
from lenet_core.data import ImageData
from lenet_core.errors import ConfigError, StudyError
from lenet_core.train import library_versions, train_trial
from study.common.cluster import ClusterOptions, ResourcePlan
from study.common.files import read_json, write_json
from study.tune.space import SearchSpace, trial_config

METRIC = "val_acc"  # what Optuna and ASHA optimize; test accuracy is never used for selection
MODE = "max"
SCHEDULERS = ("asha", "none")
RAY_FOLDER = "ray"  # Tune's experiment (TensorBoard logs, trial state) under the tune folder
STUDY_FILE = "study.json"  # what the study was started with; a resume must match it
MAX_FAILURES = 2  # retries of a crashed trial worker before the trial counts as errored


@dataclass(frozen=True)
class StudyInterrupted(Exception):
    """The study stopped before every trial finished; ``--resume`` continues it."""


@dataclass(frozen=True)
class TuneSettings:
    trials: int
    seed: int
    scheduler: str = "asha"
    max_failures: int = MAX_FAILURES

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {self.trials}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"unknown scheduler {self.scheduler!r}; choose one of: asha, none")


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
    params: dict[str, Any], *, data: ImageData, base: dict[str, Any], probe_memory: bool = False
) -> None:
    """One Ray Tune trial: build its config, train, report every epoch to Tune."""
    import ray
    from ray import tune

    values = dict(base)
    if values.get("device") is None:  # the study did not force a device: use what Ray gave us
        gpu_ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        values["device"] = "cuda" if gpu_ids else "cpu"
    config = trial_config(values, params)
    started_at = time.time()  # wall clock, so the driver can see which trials overlapped
    extra = worker_memory(data) if probe_memory else {}
    train_trial(
        config,
        data,
        report=lambda row: tune.report(
            {**row, **extra, "started_at": started_at, "reported_at": time.time()}
        ),
    )


def study_identity(
    base: dict[str, Any], space: SearchSpace, settings: TuneSettings, data: ImageData
) -> dict[str, Any]:
    return {
        "dataset": data.name,
        "data_checksum": data.checksum,
        "space": space.to_dict(),
        "base": base,
        "trials": settings.trials,
        "seed": settings.seed,
        "scheduler": settings.scheduler,
    }


def check_resume(folder: Path, identity: dict[str, Any], *, resume: bool) -> bool:
    """True if a study exists to resume; refuses mismatches and accidental overwrites."""
    saved_path = folder / STUDY_FILE
    exists = saved_path.is_file() and (folder / RAY_FOLDER).is_dir()
    if not resume:
        if exists:
            raise StudyError(
                f"a study already exists in {folder}; pass --resume to continue it or choose another --name"
            )
        return False
    if not exists:
        raise StudyError(f"--resume: no study to resume in {folder}")
    saved = read_json(saved_path, what="study file")
    for key in ("dataset", "data_checksum", "space", "base", "trials", "seed", "scheduler"):
        if saved.get(key) != identity[key]:
            raise StudyError(
                f"--resume refused: the study in {folder} was started with a "
                f"different {key.replace('_', ' ')}"
            )
    return True


def build_tuner(
    *,
    base: dict[str, Any],
    space: SearchSpace,
    settings: TuneSettings,
    plan: ResourcePlan,
    data: ImageData,
    folder: Path,
    epochs: int,
    resume: bool,
    callbacks: list[Any],
    probe_memory: bool = False,
) -> Any:
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from ray.tune.search.optuna import OptunaSearch

    trainable = tune.with_resources(
        tune.with_parameters(tune_trainable, data=data, base=base, probe_memory=probe_memory),
        plan.as_ray_resources(),
    )
    storage = str(folder.resolve())
    if resume:
        tuner = tune.Tuner.restore(
            str(folder.resolve() / RAY_FOLDER),
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
        )
        # Callbacks are driver-side display only; the restored ones are rebuilt fresh.
        tuner._local_tuner.get_run_config().callbacks = callbacks
        return tuner
    searcher = OptunaSearch(
        space=space.optuna_distributions(),
        metric=METRIC,
        mode=MODE,
        seed=settings.seed,
        points_to_evaluate=default_point(base, space),
    )
    scheduler = (
        ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=1)
        if settings.scheduler == "asha"
        else FIFOScheduler()
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=settings.trials,
            max_concurrent_trials=plan.concurrent,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=RAY_FOLDER,
            storage_path=storage,
            verbose=0,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        ),
    )


def default_point(base: dict[str, Any], space: SearchSpace) -> list[dict[str, Any]]:
    """The library's default config as the first trial, when the space contains it.

    TPE starts with random trials; evaluating the defaults first means a study never reports a
    best trial worse than what `study train` gives without tuning.
    """
    defaults = trial_config({**base, "device": "cpu"}, {}).to_dict()
    point = {name: defaults[name] for name in space.params}
    for name, spec in space.params.items():
        value = point[name]
        inside = (
            (value in spec["choices"])
            if "choices" in spec
            else (value is not None and spec["low"] <= value <= spec["high"])
        )
        if not inside:
            return []
    return [point]


# ------------------------------------------------------------------ results -> tables

MEMORY_COLUMNS = ("worker_rss_mb", "worker_uss_mb", "data_private_mb", "data_zero_copy")
EPOCH_COLUMNS = [
    "epoch",
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


def _trial_number(trial_path: str) -> int:
    # Tune names trial folders <trainable>_<id>_<number>_<params>_<date>; number counts from 1
    match = re.search(r"_[0-9a-f]{5,}_(\d+)_", Path(trial_path).name)
    return int(match.group(1)) if match else -1


def trial_status(last: dict[str, Any], *, errored: bool, finished: bool) -> str:
    """completed / diverged / pruned (ASHA stopped it early) / errored / unfinished."""
    if errored:
        return "errored"
    if not finished:
        return "unfinished"
    status = last.get("status")
    if status in ("completed", "diverged"):
        return str(status)
    return "pruned" if last else "errored"


def collect_results(
    grid: Any, *, space: SearchSpace, base: dict[str, Any], data: ImageData
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, epochs) tables from Tune's ResultGrid: one row per trial / per trial-epoch."""
    trial_rows, epoch_frames = [], []
    # Tune's Trial objects say whether a trial ended; ResultGrid keeps them in the same order.
    states = [t.status for t in grid._experiment_analysis.trials]
    for result, state in zip(grid, states, strict=True):
        metrics = dict(result.metrics or {})
        trial_id = str(metrics.get("trial_id") or Path(str(result.path)).name)
        params = {k: result.config.get(k) for k in space.params}
        history = result.metrics_dataframe
        if history is not None and len(history):
            frame = history[[c for c in EPOCH_COLUMNS if c in history.columns]].copy()
            frame.insert(0, "trial_id", trial_id)
            epoch_frames.append(frame)
        status = trial_status(
            metrics,
            errored=result.error is not None or state == "ERROR",
            finished=state in ("TERMINATED", "ERROR"),
        )
        config = _safe_config(base, params)
        ips = history["images_per_s"].mean() if history is not None and len(history) else math.nan
        best_val = history["val_acc"].max() if history is not None and len(history) else math.nan
        trial_rows.append(
            {
                "trial_id": trial_id,
                "trial": _trial_number(str(result.path)),
                **params,
                "status": status,
                "epochs_run": int(metrics.get("epoch", 0) or 0),
                "best_val_acc": best_val,
                "final_val_acc": metrics.get("val_acc", math.nan),
                "test_acc": metrics.get("test_acc", math.nan) if status != "pruned" else math.nan,
                "wall_s": metrics.get("time_total_s", math.nan),
                # when the trial ran (unix seconds), to see how many ran side by side
                "end_time": metrics.get("timestamp", math.nan),
                "start_time": metrics.get("timestamp", math.nan) - metrics.get("time_total_s", math.nan),
                "images_per_s": ips,
                "seed": base["seed"],
                "data_checksum": data.checksum,
                "error": str(result.error).splitlines()[0] if result.error else "",
                **{k: metrics[k] for k in MEMORY_COLUMNS if k in metrics},
                "config": config,
            }
        )
    trials = pd.DataFrame(trial_rows).sort_values("trial").reset_index(drop=True)
    epochs_frame = (
        pd.concat(epoch_frames, ignore_index=True)
        if epoch_frames
        else pd.DataFrame(columns=["trial_id", *EPOCH_COLUMNS])
    )
    return trials, epochs_frame


def _safe_config(base: dict[str, Any], params: dict[str, Any]) -> str:
    import json

    try:
        return json.dumps(trial_config({**base, "device": base.get("device") or "cpu"}, params).to_dict())
    except ConfigError:
        return ""


def best_trial(trials: pd.DataFrame) -> pd.Series | None:
    """The completed trial with the highest final validation accuracy (never test accuracy)."""
    done = trials[trials["status"] == "completed"]
    if done.empty:
        return None
    return done.sort_values(["final_val_acc", "trial"], ascending=[False, True]).iloc[0]


def write_best(folder: Path, best: pd.Series, data: ImageData) -> None:
    import json

    config = TrialConfig(**json.loads(best["config"]))
    write_json(
        folder / "best.json",
        {
            "trial_id": best["trial_id"],
            "config": config.to_dict(),
            "metrics": {
                k: best[k]
                for k in ("final_val_acc", "best_val_acc", "test_acc", "epochs_run", "wall_s", "images_per_s")
            },
            "seed": config.seed,
            "data_checksum": data.checksum,
            "versions": library_versions(),
        },
    )


def save_study_identity(folder: Path, identity: dict[str, Any]) -> None:
    write_json(folder / STUDY_FILE, identity)


def split_base_and_space(
    space: SearchSpace,
    file_values: dict[str, Any],
    flags: dict[str, Any],
    *,
    seed: int,
    cluster: ClusterOptions,
) -> tuple[dict[str, Any], SearchSpace]:
    """Values every trial shares, and the space left to search.

    A flag fixes a searched field. A --config file only fills the fields that are not searched
    (its own optimizer, lr, ... would otherwise end the search), and its device and threads give
    way to the cluster's resources.
    """
    params = {k: v for k, v in space.params.items() if k not in flags}
    if not params:
        raise ConfigError("every searched field is fixed by a flag; nothing left to search")
    from_file = {
        k: v for k, v in file_values.items() if k not in space.params and k not in ("device", "threads")
    }
    base = {**space.fixed, **from_file, **flags, "threads": cluster.cpus_per_trial}
    base.setdefault("seed", seed)
    base.setdefault("device", None)  # None: cuda when Ray gave the trial a GPU, else cpu
    searched = SearchSpace(params=params, fixed=space.fixed)
    for name, spec in params.items():  # every corner of the space must make a valid config
        for value in spec.get("choices", [spec.get("low"), spec.get("high")]):
            trial_config({**base, "device": base["device"] or "cpu"}, {name: value})
    return base, searched


def run_study(
    *,
    base: dict[str, Any],
    space: SearchSpace,
    settings: TuneSettings,
    cluster: ClusterOptions,
    data: ImageData,
    out: Path,
    name: str,
    resume: bool,
    say: Any = print,
    probe_memory: bool = False,
    on_trial_done: Any = None,
) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """Run (or resume) a study and write every result file; returns (trials, epochs, folder)."""
    from study.common.cluster import ray_session
    from study.common.files import prepare_run_dir, write_provenance, write_table
    from study.tune.figures import write_tune_report
    from study.tune.progress import TrialProgress

    epochs = trial_config({**base, "device": "cpu"}, {}).epochs  # "epochs" is never searched
    identity = study_identity(base, space, settings, data)
    with ray_session(cluster) as session:
        plan = session.plan
        folder = prepare_run_dir(out, name, "tune")
        resuming = check_resume(folder, identity, resume=resume)
        if not resuming:
            save_study_identity(folder, identity)
        say(
            f"Ray dashboard: {session.dashboard_url or 'not available'}"
            + (" (token: `ray get-auth-token`)" if session.token_auth else "")
        )
        say(
            f"{'resuming' if resuming else 'starting'} study {name}: {settings.trials} trials, "
            f"{plan.concurrent} at a time ({plan.cpus_per_trial} CPU, {plan.gpus_per_trial:g} GPU "
            f"each) on {data.name} (sha256 {data.checksum[:12]}) -> {folder}"
        )
        tuner = build_tuner(
            base=base,
            space=space,
            settings=settings,
            plan=plan,
            data=data,
            folder=folder,
            epochs=epochs,
            resume=resuming,
            callbacks=[TrialProgress(settings.trials, on_trial_done)],
            probe_memory=probe_memory,
        )
        grid = tuner.fit()
        trials, epoch_rows = collect_results(grid, space=space, base=base, data=data)
    write_table(trials, folder / "trials")
    write_table(epoch_rows, folder / "epochs", csv=False)
    best = best_trial(trials)
    if best is not None:
        write_best(folder, best, data)
    write_tune_report(folder, trials, epoch_rows, space.optuna_distributions())
    write_provenance(folder, data=data, extra={"kind": "tune", "trials": settings.trials})
    finished = int((trials["status"] != "unfinished").sum())
    if finished < settings.trials:
        raise StudyInterrupted(
            f"{finished} of {settings.trials} trials finished; continue with "
            f"study tune --name {name} --resume"
        )
    return trials, epoch_rows, folder
