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

import pandas as pd

from lenet_core.config import TrialConfig
from lenet_core.data import ImageData
from lenet_core.errors import ConfigError, StudyError
from study.common.cluster import ClusterOptions, ResourcePlan
from study.common.console import StudyInterrupted
from study.common.files import read_json, write_json
from study.tune.space import SearchSpace, sampled_config
from study.tune.trial import METRIC, MODE, tune_trainable

SCHEDULERS = ("asha", "none")
RAY_FOLDER = "ray"  # Tune's experiment (TensorBoard logs, trial state) under the tune folder
STUDY_FILE = "study.json"  # what the study was started with; a resume must match it
MAX_FAILURES = 2  # retries of a crashed trial worker before the trial counts as errored
RUN_FILE = "run.json"  # written last: how the run ended
DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
DURATION = re.compile(r"(?:\d+(?:\.\d+)?[hms])+|\d+(?:\.\d+)?")


@dataclass(frozen=True)
class TuneSettings:
    """How the search runs; what each trial trains is the study's base TrialConfig."""

    trials: int
    scheduler: str = "asha"
    max_failures: int = MAX_FAILURES
    time_budget_s: float | None = None  # Tune's time_budget_s: no trial starts once it is spent

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {self.trials}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"unknown scheduler {self.scheduler!r}; choose one of: asha, none")
        budget = self.time_budget_s
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            raise ConfigError(f"--time-budget must be a positive duration, got {budget} s")


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


def duration_text(seconds: float) -> str:
    """30 s, 30 min, 1 h 30 min: how run.json and the console name a budget."""
    whole = round(seconds)
    if whole < 60 or seconds != whole:
        return f"{seconds:g} s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else "", f"{secs} s" if secs else ""]
    return " ".join(p for p in parts if p)


@dataclass(frozen=True)
class StudyEnd:
    """How a run of a study ended: what the console, summary.md and run.json say about it.

    A spent time budget is a normal end: trials it kept from starting are not in the tables, and
    trials it cut short stay "unfinished" with the epochs they ran (they never run again).
    """

    asked: int  # --trials
    ran: int  # rows in the tables
    finished: int  # trials that ended: completed, diverged, collapsed, pruned or errored
    budget_s: float | None = None
    budget_spent: bool = False

    @property
    def interrupted(self) -> bool:
        return self.finished < self.asked and not self.budget_spent

    @property
    def reason(self) -> str:
        if self.finished >= self.asked:
            return f"all {self.asked} trials finished"
        if self.budget_spent and self.budget_s is not None:
            cut = self.ran - self.finished
            return (
                f"time budget of {duration_text(self.budget_s)} spent after {self.ran} of {self.asked} "
                f"trials ({self.finished} finished"
                + (f", {cut} cut short and left unfinished)" if cut else ")")
            )
        return f"interrupted: {self.finished} of {self.asked} trials finished"

    def to_dict(self) -> dict[str, Any]:
        return {
            "trials": self.asked,
            "trials_run": self.ran,
            "trials_finished": self.finished,
            "time_budget_s": self.budget_s,
            "budget_spent": self.budget_spent,
            "stop_reason": self.reason,
        }


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
        "time_budget_s": settings.time_budget_s,
    }


def _has_study(folder: Path) -> bool:
    return (folder / STUDY_FILE).is_file() and (folder / RAY_FOLDER).is_dir()


def _last_run(folder: Path) -> dict[str, Any]:
    """How the last run of the study in ``folder`` ended ({} when it never wrote its run file)."""
    return read_json(folder / RUN_FILE, what="run file") if (folder / RUN_FILE).is_file() else {}


def study_state(folder: Path) -> str:
    """ "absent" (nothing to resume), "started" (a study a resume continues) or "ended" (every
    trial finished, or its time budget was spent: a resume would start nothing)."""
    if not _has_study(folder):
        return "absent"
    last_run = _last_run(folder)
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
    # Tune restores the time budget the study started with, whatever a resume asks: refuse another.
    for key in ("dataset", "data_checksum", "space", "base", "trials", "seed", "scheduler", "time_budget_s"):
        if saved.get(key) != identity[key]:
            raise StudyError(
                f"--resume refused: the study in {folder} was started with a "
                f"different {key.replace('_s', '').replace('_', ' ')}"
            )
    last_run = _last_run(folder)
    if last_run.get("budget_spent"):
        # Tune's searcher is finished for good once the budget stopped it: no trial would start.
        raise StudyError(
            f"--resume: the study in {folder} ended normally ({last_run.get('stop_reason')}); "
            "there is nothing to resume. Start another --name for more trials"
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
            # Tune's own budget: once spent, no trial starts and running ones are stopped.
            time_budget_s=settings.time_budget_s,
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
    stopped before every trial ended; a spent ``--time-budget`` is a normal end, not that.
    """
    from study.common.files import run_folder

    identity = study_identity(base, space, settings, data)
    with run_folder(out, name, "tune", resume=resume, overwrite=overwrite) as folder:
        resuming = check_resume(folder, identity, resume=resume)
        trials, epoch_rows, end = _fit(
            identity=None if resuming else identity,
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
    say(f"study ended: {end.reason}")
    if end.interrupted:
        raise StudyInterrupted(f"{end.finished} of {end.asked} trials finished")
    return trials, epoch_rows, folder


def _fit(
    *,
    identity: dict[str, Any] | None,
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
) -> tuple[pd.DataFrame, pd.DataFrame, StudyEnd]:
    """Start or join Ray, run the trials, read Tune's results back as tables, and write the files.

    The files are written while Ray shuts down (``ray_session_then``); whatever happens, they are
    complete before this returns or raises.
    """
    from study.common.cluster import ray_session_then
    from study.common.console import console
    from study.tune.progress import TrialProgress
    from study.tune.tables import collect_results

    started = time.monotonic()  # the study's clock: Ray's start counts, as the user waits for it
    with ray_session_then(cluster) as (session, then):
        if identity is not None:  # a new study: written once Ray is up, so a failed start leaves nothing
            write_json(folder / STUDY_FILE, identity)
        plan = session.plan
        say(session.dashboard_text)
        budget = f", time budget {duration_text(settings.time_budget_s)}" if settings.time_budget_s else ""
        say(
            f"{'resuming' if resuming else 'starting'} study {folder.parent.name}: {settings.trials} "
            f"trials, {plan.concurrent} at a time ({plan.cpus_per_trial} CPU, {plan.gpus_per_trial:g} "
            f"GPU each){budget} on {data.name} (sha256 {data.checksum[:12]}) -> {folder}"
        )
        progress = TrialProgress(
            settings.trials, on_trial_done, epochs=base.epochs, started=started, console=console()
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
            grid, params=list(space.params), data=data, sampled=lambda p: sampled_config(base, p)
        )
        trials, epochs, end = study_end(trials, epochs, settings=settings, budget_spent=budget_spent)
        writing = then(
            write_study_files, folder, trials, epochs, space=space, data=data, settings=settings, end=end
        )
    writing.result()
    return trials, epochs, end


def study_end(
    trials: pd.DataFrame, epochs: pd.DataFrame, *, settings: TuneSettings, budget_spent: bool
) -> tuple[pd.DataFrame, pd.DataFrame, StudyEnd]:
    """The tables of a run and how it ended; after a spent budget, trials it kept from
    starting (they never reported an epoch) are dropped: they did not run."""
    if budget_spent:
        never_ran = (trials["status"] == "unfinished") & ~trials["trial_id"].isin(epochs["trial_id"])
        trials = trials[~never_ran].reset_index(drop=True)
    finished = int((trials["status"] != "unfinished").sum())
    end = StudyEnd(
        asked=settings.trials,
        ran=len(trials),
        finished=finished,
        budget_s=settings.time_budget_s,
        budget_spent=budget_spent and finished < settings.trials,
    )
    return trials, epochs, end


def write_study_files(
    folder: Path,
    trials: pd.DataFrame,
    epochs: pd.DataFrame,
    *,
    space: SearchSpace,
    data: ImageData,
    settings: TuneSettings,
    end: StudyEnd | None = None,
) -> None:
    """trials, epochs, best.json, summary.md, figures, optuna.db and run.json of a study.

    ``end`` defaults to a run that ended without a budget (finished, or interrupted).
    """
    from study.common.files import write_provenance, write_table, write_text
    from study.tune.figures import write_tune_figures
    from study.tune.optuna_store import OPTUNA_FILE, write_optuna_study
    from study.tune.tables import best_trial, summary_markdown, write_best

    if end is None:
        end = study_end(trials, epochs, settings=settings, budget_spent=False)[2]
    write_table(trials, folder / "trials")
    write_table(epochs, folder / "epochs", csv=False)
    best = best_trial(trials)
    if best is not None:
        write_best(folder, best, data)
    write_text(folder / "summary.md", with_stop_reason(summary_markdown(trials, list(space.params)), end))
    write_tune_figures(folder, trials, epochs, space.optuna_distributions())
    write_optuna_study(
        folder / OPTUNA_FILE,
        study_name=folder.parent.name,
        trials=trials,
        epochs=epochs,
        distributions=space.optuna_distributions(),
        study_ended=not end.interrupted,
        study_attrs={"dataset": data.name, "data_checksum": data.checksum, "stop_reason": end.reason},
    )
    write_provenance(folder, data=data, extra={"kind": "tune", **end.to_dict()})


def with_stop_reason(summary: str, end: StudyEnd) -> str:
    """summary.md with how the study ended, under its title."""
    title, _, rest = summary.partition("\n")
    return f"{title}\n\nStudy ended: {end.reason}.\n{rest}"
