"""`study tune`: Ray Tune schedules trials, Optuna (TPE) proposes them, ASHA stops poor ones.

Each trial is one call of ``lenet_core.train.train_trial``, or with ``--seeds-per-trial S`` one
pack of S seeds (``lenet_core.packed.train_packed``) judged by their mean; its per-epoch rows go
to Tune with ``tune.report``. The dataset is loaded once by the driver and handed to every trial through
Ray's object store (``tune.with_parameters``), where its uint8 arrays are read zero-copy.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickletools
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lenet_core.config import TrialConfig
from lenet_core.data import ImageData
from lenet_core.errors import ConfigError, StudyError
from lenet_core.status import Status
from study.common.cluster import ResourcePlan
from study.common.console import StudyInterrupted
from study.common.context import RunContext
from study.common.files import provenance, read_json, write_json
from study.common.results import read_run_info
from study.common.selection import SELECTION_METRIC
from study.stages.tune.optuna_store import quiet_optuna
from study.stages.tune.results import RAY_FOLDER, STUDY_FILE, StudyEnd, TuneResults, duration_text
from study.stages.tune.space import GRACE_PERIOD, REDUCTION_FACTOR, SearchSpace, sampled_config
from study.stages.tune.trial import METRIC, MODE, tune_trainable

SCHEDULERS = ("asha", "none")
MAX_FAILURES = 2  # retries of a crashed trial worker before the trial counts as errored
DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
DURATION = re.compile(r"(?:\d+(?:\.\d+)?[hms])+|\d+(?:\.\d+)?")
# What an ASHA study.json written before these keys existed ran with: grace 1, Ray's factor 4.
LEGACY_ASHA = {"grace_period": 1, "reduction_factor": 4.0}
IDENTITY_KEYS = (
    "dataset",
    "data_checksum",
    "space",
    "base",
    "trials",
    "seed",
    "scheduler",
    "grace_period",
    "reduction_factor",
    "time_budget_s",
    "seeds_per_trial",
)
# What a study.json written before seeds_per_trial existed ran with: one seed per trial.
LEGACY_SEEDS_PER_TRIAL = 1


@dataclass(frozen=True)
class TuneSettings:
    """How the search runs; what each trial trains is the study's base TrialConfig."""

    trials: int
    scheduler: str = "asha"
    max_failures: int = MAX_FAILURES
    time_budget_s: float | None = None  # Tune's time_budget_s: no trial starts once it is spent
    # ASHA: epochs every trial trains before it may be stopped (clipped to the epoch cap), and the
    # factor between rungs (only the top 1/F of the trials at a rung continue).
    grace_period: int = GRACE_PERIOD
    reduction_factor: float = REDUCTION_FACTOR
    # Seeds each trial trains its config on (seed, seed + 1, ...), as one pack; its score is their
    # mean. 1: one train_trial, as before.
    seeds_per_trial: int = 1

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {self.trials}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"unknown scheduler {self.scheduler!r}; choose one of: asha, none")
        grace = self.grace_period
        if isinstance(grace, bool) or not isinstance(grace, int) or grace < 1:
            raise ConfigError(f"--grace-period must be a whole number of epochs >= 1, got {grace}")
        factor = self.reduction_factor
        if (
            isinstance(factor, bool)
            or not isinstance(factor, int | float)
            or not (math.isfinite(factor) and factor > 1)
        ):
            raise ConfigError(
                f"--reduction-factor must be a number > 1 (the top 1/F of a rung continue), got {factor}"
            )
        object.__setattr__(self, "reduction_factor", float(factor))
        budget = self.time_budget_s
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            raise ConfigError(f"--time-budget must be a positive duration, got {budget} s")
        seeds = self.seeds_per_trial
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ConfigError(f"--seeds-per-trial must be a whole number >= 1, got {seeds!r}")

    def grace_epochs(self, epochs: int) -> int:
        """The grace period ASHA runs with: never more than the epoch cap (``epochs``)."""
        return min(self.grace_period, epochs)


def chance_accuracy(data: ImageData, base: TrialConfig) -> float:
    """``lenet_core.train.collapse_threshold`` of the study's validation split (-inf without one):
    a trial stopped at or below it is collapsed, as ``mark_collapsed`` names it in the tables."""
    from lenet_core.train import collapse_threshold, trial_split

    _, val_idx = trial_split(data, base)
    labels = data.train_labels[val_idx]
    return collapse_threshold(labels) if len(labels) else -math.inf


def check_seeds_packable(base: TrialConfig, seeds: int) -> None:
    """--seeds-per-trial S > 1 trains each trial's seeds as one pack: refuse a base config that
    cannot pack (a ResNet, fp16), in one line, before anything starts."""
    from lenet_core.packed import check_packable

    try:
        check_packable([base.replace(seed=base.seed + i) for i in range(seeds)])
    except ConfigError as exc:
        raise ConfigError(f"--seeds-per-trial {seeds} trains the seeds as one pack: {exc}") from None


def parse_duration(text: str) -> float:
    """Seconds of a duration like 90, 90s, 30m, 1.5h or 1h30m (a plain number is seconds)."""
    cleaned = text.strip().lower()
    if not DURATION.fullmatch(cleaned):
        raise ConfigError(
            f"--time-budget {text!r} is not a duration; give e.g. 90s, 30m, 1h or 1h30m "
            "(a plain number is seconds)"
        )
    if cleaned[-1].isdigit():
        seconds = float(cleaned)
    else:
        seconds = sum(float(n) * DURATION_UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([hms])", cleaned))
    if seconds <= 0:
        raise ConfigError(f"--time-budget {text!r} must be longer than 0 s")
    return seconds


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
        **asha_identity(settings, base.epochs),
        "time_budget_s": settings.time_budget_s,
        "seeds_per_trial": settings.seeds_per_trial,
    }


def asha_identity(settings: TuneSettings, epochs: int) -> dict[str, Any]:
    """ASHA's grace period (as run: clipped to the epoch cap) and reduction factor; None for both
    without ASHA (--scheduler none has no rungs)."""
    asha = settings.scheduler == "asha"
    return {
        "grace_period": settings.grace_epochs(epochs) if asha else None,
        "reduction_factor": settings.reduction_factor if asha else None,
    }


def asha_rungs(settings: TuneSettings, epochs: int) -> list[float]:
    """The epochs at which ASHA compares trials (Ray's rungs: grace * F**k below the cap)."""
    grace, factor = settings.grace_epochs(epochs), settings.reduction_factor
    count = int(math.log(epochs / grace) / math.log(factor) + 1)
    return [grace * factor**k for k in range(count) if grace * factor**k < epochs]


def asha_text(settings: TuneSettings, epochs: int) -> str:
    grace = settings.grace_epochs(epochs)
    clipped = (
        f" (--grace-period {settings.grace_period} clipped to the {epochs}-epoch cap)"
        if grace < settings.grace_period
        else ""
    )
    rungs = ", ".join(f"{r:g}" for r in asha_rungs(settings, epochs)) or "none before the cap"
    return (
        f"ASHA: every trial trains {grace} epoch{'s' if grace > 1 else ''} before it may be stopped"
        f"{clipped}; the top 1/{settings.reduction_factor:g} continue at each rung (epochs: {rungs})"
    )


def _has_study(folder: Path) -> bool:
    return (folder / STUDY_FILE).is_file() and (folder / RAY_FOLDER).is_dir()


def study_state(folder: Path) -> str:
    """ "absent" (nothing to resume), "started" (a study a resume continues) or "ended" (every
    trial finished, or its time budget was spent: a resume would start nothing)."""
    if not _has_study(folder):
        return "absent"
    last_run = read_run_info(folder)
    ended = last_run.get("budget_spent") or last_run.get("trials_finished", -1) >= last_run.get("trials", 0)
    return "ended" if last_run and ended else "started"


def check_resume(folder: Path, identity: dict[str, Any], *, resume: bool) -> bool:
    """True if a study exists to resume; refuses a resume of a different study.

    (A study folder that holds results without --resume is refused earlier, by ``run_folder``.)
    """
    if not resume:
        return False
    if not _has_study(folder):
        raise StudyError(f"--resume: no study to resume in {folder}")
    saved = read_json(folder / STUDY_FILE, what="study file")
    legacy = LEGACY_ASHA if saved.get("scheduler") == "asha" else dict.fromkeys(LEGACY_ASHA)
    saved = {**legacy, "seeds_per_trial": LEGACY_SEEDS_PER_TRIAL, **saved}
    # Tune restores the time budget and the scheduler the study started with, whatever a resume
    # asks: refuse another.
    for key in IDENTITY_KEYS:
        if saved.get(key) != identity[key]:
            raise StudyError(
                f"--resume refused: the study in {folder} was started with a "
                f"different {key.replace('_s', '').replace('_', ' ')}"
            )
    check_saved_state(folder / RAY_FOLDER)
    last_run = read_run_info(folder)
    if last_run.get("budget_spent"):
        # Tune's searcher is finished for good once the budget stopped it: no trial would start.
        raise StudyError(
            f"--resume: the study in {folder} ended normally ({last_run.get('stop_reason')}); "
            "there is nothing to resume. Start another --name for more trials"
        )
    return True


def _is_whole(path: Path) -> bool:
    """Whether one of Tune's saved state files is complete: a JSON document or a pickle to its STOP
    opcode (read, never run: Tune names some pickles ``.json``)."""
    data = path.read_bytes()
    try:
        json.loads(data)
        return True
    except ValueError:
        pass
    try:
        for _ in pickletools.genops(data):
            pass
        return True
    except ValueError:  # "pickle exhausted before seeing STOP", or a length past the end
        return False


def check_saved_state(ray_folder: Path) -> None:
    """Refuse a resume from Tune state files cut short (a study killed while Tune copied them, before
    ``study.common.tune_storage`` made those copies atomic): Tune would log the error, start the
    study over inside the half-restored run, and never end."""
    for path in sorted(ray_folder.glob("*.json")) + sorted(ray_folder.glob("*.pkl")):
        if not _is_whole(path):
            raise StudyError(
                f"--resume: Tune's saved state {path} is cut short (the study was killed while Tune "
                "saved it), so the study cannot be restored; start it again under another --name"
            )


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
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from study.common.tune_storage import atomic_local_filesystem

    trainable = tune.with_resources(
        tune.with_parameters(
            tune_trainable,
            data=data,
            base=base,
            probe_memory=probe_memory,
            seeds_per_trial=settings.seeds_per_trial,
        ),
        plan.as_ray_resources(),
    )
    storage = str(folder.resolve())
    files = atomic_local_filesystem()  # a kill mid-save leaves whole files behind (tune_storage)
    if resume:
        tuner = tune.Tuner.restore(
            str(folder.resolve() / RAY_FOLDER),
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
            storage_filesystem=files,
        )
        # Callbacks are driver-side display only; the restored ones are rebuilt fresh.
        from study.common.ray_adapter import set_restored_callbacks

        set_restored_callbacks(tuner, callbacks)
        return tuner
    searcher = OptunaSearch(
        space=space.optuna_distributions(),
        metric=METRIC,
        mode=MODE,
        seed=base.seed,  # the searcher's seed: the same study samples the same trials
        points_to_evaluate=default_point(base, space),
    )
    scheduler = (
        ASHAScheduler(
            time_attr="training_iteration",  # one iteration per epoch reported
            max_t=epochs,
            grace_period=settings.grace_epochs(epochs),
            reduction_factor=settings.reduction_factor,
        )
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
            # reuse on one node only: a reused actor keeps its node, so on a cluster trials piled onto
            # the node whose trial ended first (study.common.cluster.ResourcePlan.reuse_actors)
            reuse_actors=plan.reuse_actors,
            # Tune's own budget: once spent, no trial starts and running ones are stopped.
            time_budget_s=settings.time_budget_s,
        ),
        run_config=tune.RunConfig(
            name=RAY_FOLDER,
            storage_path=storage,
            storage_filesystem=files,
            verbose=0,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        ),
    )


def default_point(base: TrialConfig, space: SearchSpace) -> list[dict[str, Any]]:
    """The library's default config as the first trial, when the space contains it.

    TPE starts with random trials; evaluating the defaults first means a study never reports a
    best trial worse than what `study train` gives without tuning. A field left to a default
    that depends on others takes the value it trains with (``lr_step_size``: a third of the
    epochs; ``weight_decay``: the optimizer's PyTorch default), and "none" (0) in a log range,
    which cannot hold 0, is its low end (the space's 1e-6 weight decay: no decay to speak of).
    Step's own fields, unused by the default constant schedule, are moved into their ranges.
    """
    point: dict[str, Any] = {}
    for name, spec in space.params.items():
        value = _trained_value(base, name)
        if "choices" in spec:
            inside = value in spec["choices"]
        else:
            if spec["log"] and value == 0:
                value = spec["low"]
            if value is not None and name in base.ignored_fields():
                value = min(max(value, spec["low"]), spec["high"])  # unused: any value trains the same
            inside = value is not None and spec["low"] <= value <= spec["high"]
        if not inside:
            return []
        point[name] = value
    return [point]


# PyTorch's default weight decay where it is not 0 (the config's None means "the optimizer's").
PYTORCH_WEIGHT_DECAY = {"adamw": 0.01}


def _trained_value(base: TrialConfig, name: str) -> Any:
    """The value ``base`` trains with for field ``name``, with defaults left as None resolved."""
    value = getattr(base, name)
    if value is None and name == "lr_step_size":
        return base.step_size()
    if value is None and name == "weight_decay":
        return PYTORCH_WEIGHT_DECAY.get(base.optimizer, 0.0)
    return value


STAGE = "tune"  # OUT/NAME/tune


def run_study(
    *,
    base: TrialConfig,
    space: SearchSpace,
    settings: TuneSettings,
    context: RunContext,
    probe_memory: bool = False,
    on_trial_done: Any = None,
) -> TuneResults:
    """Run (or resume) a study and write every result file to OUT/NAME/tune; returns its results.

    Raises ``StudyInterrupted`` (after writing the tables of what finished) when the study
    stopped before every trial ended; a spent ``--time-budget`` is a normal end, not that.
    """
    identity = study_identity(base, space, settings, context.data)
    if settings.seeds_per_trial > 1:
        check_seeds_packable(base, settings.seeds_per_trial)
    with context.stage_folder(STAGE) as folder:
        resuming = check_resume(folder, identity, resume=context.resume)
        results = _fit(
            identity=identity,
            base=base,
            space=space,
            settings=settings,
            context=context,
            folder=folder,
            resuming=resuming,
            probe_memory=probe_memory,
            on_trial_done=on_trial_done,
        )
    context.progress(f"study ended: {results.end.reason}")
    if results.end.interrupted:
        raise StudyInterrupted(f"{results.end.finished} of {results.end.asked} trials finished")
    return results


def _fit(
    *,
    identity: dict[str, Any],
    base: TrialConfig,
    space: SearchSpace,
    settings: TuneSettings,
    context: RunContext,
    folder: Path,
    resuming: bool,
    probe_memory: bool,
    on_trial_done: Any,
) -> TuneResults:
    """Start or join Ray, run the trials, read Tune's results back as tables, and write the files.

    The files are written while Ray shuts down (``ray_session_then``); whatever happens, they are
    complete before this returns or raises.
    """
    from study.common.cluster import ray_session_then
    from study.common.console import console
    from study.stages.tune.progress import TrialProgress
    from study.stages.tune.tables import collect_results

    data, say = context.data, context.progress
    started = time.monotonic()  # the study's clock: Ray's start counts, as the user waits for it
    with ray_session_then(context.cluster) as (session, then):
        if not resuming:  # a new study: written once Ray is up, so a failed start leaves nothing
            write_json(folder / STUDY_FILE, identity)
        plan = session.plan
        say(session.dashboard_text)
        budget = f", time budget {duration_text(settings.time_budget_s)}" if settings.time_budget_s else ""
        say(
            f"{'resuming' if resuming else 'starting'} study {folder.parent.name}: {settings.trials} "
            f"trials, {plan.concurrent} at a time ({plan.cpus_per_trial} CPU, {plan.gpus_per_trial:g} "
            f"GPU each){budget} on {data.name} (sha256 {data.checksum[:12]}) -> {folder}"
        )
        if settings.scheduler == "asha":
            say(asha_text(settings, base.epochs))
        if settings.seeds_per_trial > 1:
            say(
                f"each trial trains its config on {settings.seeds_per_trial} seeds as one pack and is "
                f"scored by their mean {SELECTION_METRIC}"
            )
        progress = TrialProgress(
            settings.trials,
            on_trial_done,
            epochs=base.epochs,
            started=started,
            console=console(),
            chance=chance_accuracy(data, base),
        )
        with quiet_optuna():  # the searcher logs its study and each trial it adds; put back after
            tuner = build_tuner(
                base=base,
                space=space,
                settings=settings,
                plan=plan,
                data=data,
                folder=folder,
                epochs=base.epochs,  # "epochs" is never searched
                resume=resuming,
                callbacks=[progress],
                probe_memory=probe_memory,
            )
            fit_started = time.monotonic()
            grid = tuner.fit()
        # Tune returns from fit() both when its budget stopped the study and after a Ctrl-C. Its
        # budget clock starts inside fit(), so a fit shorter than the budget was not stopped by it.
        budget_spent = settings.time_budget_s is not None and (
            time.monotonic() - fit_started >= settings.time_budget_s
        )
        trials, epochs = collect_results(
            grid,
            params=list(space.params),
            data=data,
            sampled=lambda p: sampled_config(base, p),
            seeds_per_trial=settings.seeds_per_trial,
        )
        results = study_results(
            trials, epochs, identity=identity, settings=settings, budget_spent=budget_spent, data=data
        )
        writing = then(results.write, folder)
    writing.result()
    return dataclasses.replace(results, folder=folder)


def study_results(
    trials: pd.DataFrame,
    epochs: pd.DataFrame,
    *,
    identity: dict[str, Any],
    settings: TuneSettings,
    budget_spent: bool,
    data: ImageData,
) -> TuneResults:
    """The results of a run and how it ended; after a spent budget, trials it kept from
    starting (they never reported an epoch) are dropped: they did not run."""
    from study.common.results import expand_configs
    from study.stages.tune.tables import mark_collapsed

    if budget_spent:
        never_ran = (trials["status"] == Status.UNFINISHED) & ~trials["trial_id"].isin(epochs["trial_id"])
        trials = trials[~never_ran].reset_index(drop=True)
    end = StudyEnd.of(
        trials, asked=settings.trials, budget_s=settings.time_budget_s, budget_spent=budget_spent
    )
    if end.budget_spent:
        # Counted above as cut short; the budget ended them for good, so one at chance is named
        # collapsed like a pruned one (an interrupted study's unfinished trials run again on resume).
        trials = mark_collapsed(trials, data=data, statuses=(Status.UNFINISHED,))
    search = ("scheduler", "grace_period", "reduction_factor", "seeds_per_trial")
    run = provenance(data, kind=STAGE, **{key: identity.get(key) for key in search}, **end.to_dict())
    return TuneResults(trials=expand_configs(trials), epochs=epochs, identity=identity, end=end, run=run)
