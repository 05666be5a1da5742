"""``TuneResults``: what a `study tune` run leaves, written and read back here and nowhere else.

OUT/NAME/tune/ holds ``trials.{parquet,csv}`` (one row per trial), ``epochs.parquet`` (every
trial-epoch), ``best.json`` (the best completed trial's config, to replay), ``summary.md``,
``optuna.db`` (the same trials as an Optuna study), ``study.json`` (what the study was started
with; a resume must match it), ``run.json`` (provenance and how the run ended), figures, and
Tune's own experiment under ``ray/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lenet_core.config import TrialConfig, from_dict
from lenet_core.errors import StudyError
from lenet_core.status import Status
from study.common.files import read_json, write_json, write_table, write_text
from study.common.results import (
    expand_configs,
    read_run_info,
    read_table,
    stored_form,
    write_run_info,
)
from study.common.selection import SELECTION_METRIC
from study.stages.tune.space import SearchSpace
from study.stages.tune.tables import best_trial, ranked, summary_markdown

if TYPE_CHECKING:
    import pandas as pd

TRIALS = "trials"  # .parquet and .csv
EPOCHS = "epochs"  # .parquet
BEST_FILE = "best.json"
SUMMARY_FILE = "summary.md"
STUDY_FILE = "study.json"  # what the study was started with; a resume must match it
OPTUNA_FILE = "optuna.db"
RAY_FOLDER = "ray"  # Tune's experiment (TensorBoard logs, trial state)


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

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StudyEnd:
        return cls(
            asked=int(values["trials"]),
            ran=int(values["trials_run"]),
            finished=int(values["trials_finished"]),
            budget_s=values.get("time_budget_s"),
            budget_spent=bool(values.get("budget_spent")),
        )

    @classmethod
    def of(cls, trials: pd.DataFrame, *, asked: int, budget_s: float | None, budget_spent: bool) -> StudyEnd:
        finished = int((trials["status"] != Status.UNFINISHED).sum())
        return cls(
            asked=asked,
            ran=len(trials),
            finished=finished,
            budget_s=budget_s,
            budget_spent=budget_spent and finished < asked,
        )


def trial_config(row: Any, *, source: str) -> TrialConfig:
    return from_dict(json.loads(row["config"]), source=source)


@dataclass(frozen=True)
class TuneResults:
    """A tune study's tables, what it was started with, and how its last run ended."""

    trials: pd.DataFrame  # one row per trial; config JSON and expanded config.<field> columns
    epochs: pd.DataFrame  # one row per trial-epoch
    identity: dict[str, Any]  # study.json: dataset, checksum, space, base config, trials, seed, ...
    end: StudyEnd
    run: dict[str, Any] = field(default_factory=dict)  # run.json: provenance, how it ended
    folder: Path | None = field(default=None, compare=False)  # where it was written or read

    @property
    def space(self) -> SearchSpace:
        saved = self.identity["space"]
        return SearchSpace(params=saved["space"], fixed=saved["fixed"])

    @property
    def best(self) -> pd.Series | None:
        return best_trial(self.trials)

    @property
    def best_config(self) -> TrialConfig | None:
        """The best completed trial's config as it ran (None when no trial completed)."""
        best = self.best
        return None if best is None else trial_config(best, source=TRIALS)

    def top_configs(self, k: int) -> list[TrialConfig]:
        """The K best distinct completed configs by the selection metric (``--top-k``)."""
        configs: list[TrialConfig] = []
        for _, row in ranked(self.trials).iterrows():
            config = trial_config(row, source=TRIALS)
            if config not in configs:
                configs.append(config)
            if len(configs) == k:
                break
        return configs

    # ------------------------------------------------------------------ files
    def write(self, folder: Path) -> None:
        """Every table, best.json, summary.md, optuna.db, study.json, the figures, and run.json
        last: its presence says the run's files are complete."""
        self.write_tables(folder)
        self.write_figures(folder)
        write_run_info(folder, self.run)

    def write_tables(self, folder: Path) -> None:
        from study.stages.tune.optuna_store import write_optuna_study

        trials = stored_form(self.trials)
        write_json(folder / STUDY_FILE, self.identity)
        write_table(trials, folder / TRIALS)
        write_table(self.epochs, folder / EPOCHS, csv=False)
        best = self.best
        if best is not None:
            write_json(folder / BEST_FILE, self._best_json(best))
        else:
            (folder / BEST_FILE).unlink(missing_ok=True)
        summary = summary_markdown(trials, list(self.space.params))
        title, _, rest = summary.partition("\n")
        write_text(folder / SUMMARY_FILE, f"{title}\n\nStudy ended: {self.end.reason}.\n{rest}")
        write_optuna_study(
            folder / OPTUNA_FILE,
            study_name=folder.parent.name,
            trials=trials,
            epochs=self.epochs,
            distributions=self.space.optuna_distributions(),
            study_ended=not self.end.interrupted,
            study_attrs={
                "dataset": self.identity["dataset"],
                "data_checksum": self.identity["data_checksum"],
                "stop_reason": self.end.reason,
            },
        )

    def write_figures(self, folder: Path) -> None:
        from study.stages.tune.figures import write_tune_figures

        write_tune_figures(folder, stored_form(self.trials), self.epochs, self.space.optuna_distributions())

    def _best_json(self, best: pd.Series) -> dict[str, Any]:
        """best.json: the best trial's config as it ran (replay it: `study train --config`)."""
        config = trial_config(best, source=TRIALS)
        return {
            "trial_id": best["trial_id"],
            "selected_by": SELECTION_METRIC,
            "config": config.to_dict(),
            "metrics": {
                k: best[k]
                for k in (
                    SELECTION_METRIC,
                    "final_val_acc",
                    "test_acc",
                    "epochs_run",
                    "wall_s",
                    "images_per_s",
                )
            }
            # --seeds-per-trial: the spreads over the seeds behind the means
            | {k: best[k] for k in ("seeds", "best_val_acc_std", "test_acc_std") if k in best.index},
            "seed": config.seed,
            "data_checksum": self.identity["data_checksum"],
            "versions": self.run.get("versions", {}),
        }

    @classmethod
    def read(cls, folder: Path) -> TuneResults:
        """The results a tune run wrote to ``folder`` (OUT/NAME/tune)."""
        run = read_run_info(folder)
        if not (folder / STUDY_FILE).is_file():
            raise StudyError(f"{folder} holds no tune study ({STUDY_FILE} is missing)")
        identity = read_json(folder / STUDY_FILE, what="study file")
        trials = read_table(folder / f"{TRIALS}.parquet", what="tune trials")
        epochs = read_table(folder / f"{EPOCHS}.parquet", what="tune epochs")
        end = (
            StudyEnd.from_dict(run)
            if "trials_run" in run
            else StudyEnd.of(
                trials,
                asked=int(identity["trials"]),
                budget_s=identity.get("time_budget_s"),
                budget_spent=False,
            )
        )
        return cls(
            trials=expand_configs(trials), epochs=epochs, identity=identity, end=end, run=run, folder=folder
        )
