"""`study tune`: Ray Tune schedules trials, Optuna (TPE) proposes them, ASHA stops poor ones.

Each trial is one call of ``lenet_core.train.train_trial``; its per-epoch rows go to Tune with
``tune.report``. The dataset is loaded once by the driver and handed to every trial through
Ray's object store (``tune.with_parameters``), where its uint8 arrays are read zero-copy.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lenet_core.config import TrialConfig
from lenet_core.data import ImageData
from lenet_core.errors import ConfigError, StudyError
from lenet_core.train import train_trial
from study.common.cluster import ClusterOptions, ResourcePlan
from study.common.console import StudyInterrupted
from study.common.files import read_json, write_json
from study.tune.space import SearchSpace, sampled_config
from study.tune.tables import CONFIG_KEY, FAILED_STATUSES

# What Optuna and ASHA optimize: validation accuracy, with a run that failed without a finite
# accuracy (diverged to NaN) scored 0, so the searcher learns that region is bad instead of
# dropping the trial. Test accuracy is never used for selection.
METRIC = "objective"
MODE = "max"
SCHEDULERS = ("asha", "none")
RAY_FOLDER = "ray"  # Tune's experiment (TensorBoard logs, trial state) under the tune folder
STUDY_FILE = "study.json"  # what the study was started with; a resume must match it
MAX_FAILURES = 2  # retries of a crashed trial worker before the trial counts as errored


@dataclass(frozen=True)
class TuneSettings:
    """How the search runs; what each trial trains is the study's base TrialConfig."""

    trials: int
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

    def report(row: dict[str, Any]) -> None:
        tune.report({**row, **extra, METRIC: objective(row), "reported_at": time.time()})

    train_trial(config, data, report=report)


def objective(row: dict[str, Any]) -> float:
    value = row["val_acc"]
    if row["status"] in FAILED_STATUSES and not math.isfinite(value):
        return 0.0
    return value


def study_identity(
    base: TrialConfig, space: SearchSpace, settings: TuneSettings, data: ImageData
) -> dict[str, Any]:
    return {
        "dataset": data.name,
        "data_checksum": data.checksum,
        "space": space.to_dict(),
        "base": base.to_dict(),
        "trials": settings.trials,
        "seed": base.seed,
        "scheduler": settings.scheduler,
    }


def check_resume(folder: Path, identity: dict[str, Any], *, resume: bool) -> bool:
    """True if a study exists to resume; refuses a resume of a different study.

    (A study folder that holds results without --resume is refused earlier, by ``run_folder``.)
    """
    saved_path = folder / STUDY_FILE
    exists = saved_path.is_file() and (folder / RAY_FOLDER).is_dir()
    if not resume:
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
    base: TrialConfig,
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
        seed=base.seed,  # the searcher's seed: the same study samples the same trials
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


def default_point(base: TrialConfig, space: SearchSpace) -> list[dict[str, Any]]:
    """The library's default config as the first trial, when the space contains it.

    TPE starts with random trials; evaluating the defaults first means a study never reports a
    best trial worse than what `study train` gives without tuning.
    """
    point = {name: getattr(base, name) for name in space.params}
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


def run_study(
    *,
    base: TrialConfig,
    space: SearchSpace,
    settings: TuneSettings,
    cluster: ClusterOptions,
    data: ImageData,
    out: Path,
    name: str,
    resume: bool = False,
    overwrite: bool = False,
    say: Any = print,
    probe_memory: bool = False,
    on_trial_done: Any = None,
) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """Run (or resume) a study and write every result file; returns (trials, epochs, folder).

    Raises ``StudyInterrupted`` (after writing the tables of what finished) when the study
    stopped before every trial ended.
    """
    from study.common.files import run_folder

    identity = study_identity(base, space, settings, data)
    with run_folder(out, name, "tune", resume=resume, overwrite=overwrite) as folder:
        resuming = check_resume(folder, identity, resume=resume)
        if not resuming:
            write_json(folder / STUDY_FILE, identity)
        trials, epoch_rows = _fit(
            base=base,
            space=space,
            settings=settings,
            cluster=cluster,
            data=data,
            folder=folder,
            resuming=resuming,
            say=say,
            probe_memory=probe_memory,
            on_trial_done=on_trial_done,
        )
        write_study_files(folder, trials, epoch_rows, space=space, data=data, settings=settings)
    finished = int((trials["status"] != "unfinished").sum())
    if finished < settings.trials:
        raise StudyInterrupted(f"{finished} of {settings.trials} trials finished")
    return trials, epoch_rows, folder


def _fit(
    *,
    base: TrialConfig,
    space: SearchSpace,
    settings: TuneSettings,
    cluster: ClusterOptions,
    data: ImageData,
    folder: Path,
    resuming: bool,
    say: Any,
    probe_memory: bool,
    on_trial_done: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Start or join Ray, run the trials, and read Tune's results back as tables."""
    from study.common.cluster import ray_session
    from study.tune.progress import TrialProgress
    from study.tune.tables import collect_results

    with ray_session(cluster) as session:
        plan = session.plan
        say(
            f"Ray dashboard: {session.dashboard_url or 'not available'}"
            + (" (token: `ray get-auth-token`)" if session.token_auth else "")
        )
        say(
            f"{'resuming' if resuming else 'starting'} study {folder.parent.name}: {settings.trials} "
            f"trials, {plan.concurrent} at a time ({plan.cpus_per_trial} CPU, {plan.gpus_per_trial:g} "
            f"GPU each) on {data.name} (sha256 {data.checksum[:12]}) -> {folder}"
        )
        tuner = build_tuner(
            base=base,
            space=space,
            settings=settings,
            plan=plan,
            data=data,
            folder=folder,
            epochs=base.epochs,  # "epochs" is never searched
            resume=resuming,
            callbacks=[TrialProgress(settings.trials, on_trial_done)],
            probe_memory=probe_memory,
        )
        grid = tuner.fit()
        return collect_results(
            grid, params=list(space.params), data=data, sampled=lambda p: sampled_config(base, p)
        )


def write_study_files(
    folder: Path,
    trials: pd.DataFrame,
    epochs: pd.DataFrame,
    *,
    space: SearchSpace,
    data: ImageData,
    settings: TuneSettings,
) -> None:
    """trials, epochs, best.json, summary.md, figures and run.json of a study."""
    from study.common.files import write_provenance, write_table, write_text
    from study.tune.figures import write_tune_figures
    from study.tune.tables import best_trial, summary_markdown, write_best

    write_table(trials, folder / "trials")
    write_table(epochs, folder / "epochs", csv=False)
    best = best_trial(trials)
    if best is not None:
        write_best(folder, best, data)
    write_text(folder / "summary.md", summary_markdown(trials, list(space.params)))
    write_tune_figures(folder, trials, epochs, space.optuna_distributions())
    write_provenance(folder, data=data, extra={"kind": "tune", "trials": settings.trials})
