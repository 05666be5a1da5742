"""``study.load``: a finished (or interrupted) study folder as typed results, for notebooks.

    import study
    results = study.load("results/fashion")
    results.tune.trials            # one row per trial, config.<field> columns expanded
    results.ensemble.comparison    # every model and vote with its interval
    results.best_config            # a TrialConfig: replay it with lenet_core.train_trial

A folder holds the stages one run or experiment wrote: a sweep's tables in the folder itself,
and ``tune/``, ``ensemble/`` and ``train/`` sub-folders. Each is read by its own results type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lenet_core.config import TrialConfig
from lenet_core.errors import StudyError
from study.common.results import StageResults, read_run_info
from study.stages.ensemble.results import MEMBERS, EnsembleResults
from study.stages.sweep.results import RUNS, SweepResults
from study.stages.train import RESULT_FILE, TrainResults
from study.stages.tune.results import STUDY_FILE, TuneResults

# Each stage's sub-folder and the file whose presence means the stage wrote its results.
STAGE_FOLDERS: dict[str, tuple[str, str]] = {
    "sweep": (".", f"{RUNS}.parquet"),
    "tune": ("tune", STUDY_FILE),
    "ensemble": ("ensemble", f"{MEMBERS}.parquet"),
    "train": ("train", RESULT_FILE),
}
# Where best_config looks first: the tuned best trial, the sweep's best condition, the train run,
# the ensemble members' config.
ANSWER_ORDER = ("tune", "sweep", "train", "ensemble")
STAGE_TYPES: dict[str, Any] = {
    "sweep": SweepResults,
    "tune": TuneResults,
    "ensemble": EnsembleResults,
    "train": TrainResults,
}


@dataclass(frozen=True)
class StudyResults:
    """Every stage's results in one study folder (None where the stage did not run)."""

    folder: Path
    sweep: SweepResults | None = None
    tune: TuneResults | None = None
    ensemble: EnsembleResults | None = None
    train: TrainResults | None = None
    run: dict[str, Any] = field(default_factory=dict)  # the folder's own run.json (an experiment's)

    def stages(self) -> list[StageResults]:
        """The stages present, in report order: sweep, tune, ensemble, train."""
        return [stage for _, stage in self._named()]

    def _named(self) -> list[tuple[str, Any]]:
        """(stage name, results) of the stages present, in STAGE_FOLDERS' (report) order."""
        return [(name, getattr(self, name)) for name in STAGE_FOLDERS if getattr(self, name) is not None]

    @property
    def best_config(self) -> TrialConfig | None:
        """The study's answer as a config: the tuned best trial, else the sweep condition with the
        best mean validation accuracy, else the train run's or the ensemble members' config.
        Always chosen on validation, never test."""
        present = dict(self._named())
        for name in ANSWER_ORDER:
            config = present[name].best_config if name in present else None
            if config is not None:
                return config
        return None

    def write(self, folder: Path) -> None:
        """Every stage's files under ``folder``, as the stages wrote them."""
        for name, stage in self._named():
            target = folder / STAGE_FOLDERS[name][0]
            target.mkdir(parents=True, exist_ok=True)
            stage.write(target)
        if self.run and self.sweep is None:  # a sweep's run.json is its own, written above
            from study.common.results import write_run_info

            write_run_info(folder, self.run)


def load(path: str | Path) -> StudyResults:
    """The typed results of the study in ``path`` (results/NAME, or one of its stage folders).

    Raises ``StudyError`` (one line) when the folder holds no results of any stage.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise StudyError(f"{folder} is not a results folder")
    if folder.name in {sub for sub, _ in STAGE_FOLDERS.values()} and not _has_any_stage(folder):
        folder = folder.parent  # results/NAME/tune was given: load the whole study
    found = {
        name: STAGE_TYPES[name].read(folder / sub)
        for name, (sub, marker) in STAGE_FOLDERS.items()
        if (folder / sub / marker).is_file()
    }
    if not found:
        raise StudyError(f"{folder} holds no tune, ensemble, train or experiment results")
    return StudyResults(folder=folder, run=read_run_info(folder), **found)


def _has_any_stage(folder: Path) -> bool:
    return any((folder / sub / marker).is_file() for sub, marker in STAGE_FOLDERS.values())
