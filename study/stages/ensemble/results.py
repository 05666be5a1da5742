"""``EnsembleResults``: what a `study ensemble` run leaves in OUT/NAME/ensemble, written and read
back here and nowhere else.

``members.{parquet,csv}`` (one row per trained model), ``comparison.{parquet,csv,md}`` (every
model and vote with its interval), ``comparison_by_repeat.{parquet,csv}``, ``mcnemar.{parquet,
csv,md}``, ``predictions.parquet`` (per test image, first repeat), ``per_class.{parquet,csv}`` (class,
class_name, error of each model),
``diversity.json``, ``run.json``, figures, and each trained model's checkpoint under ``members/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lenet_core.config import TrialConfig
from lenet_core.names import CLASS_NAMES
from study.common.files import read_json, write_json, write_table
from study.common.results import (
    config_of,
    expand_configs,
    read_run_info,
    read_table,
    stored_form,
    write_run_info,
)
from study.common.selection import SELECTION_METRIC

if TYPE_CHECKING:
    import pandas as pd

MEMBERS = "members"  # the table
MEMBERS_FOLDER = "members"  # one checkpoint folder per trained model, for --resume
# A checkpoint: weights and predictions first, then the result, whose presence means it is whole.
MEMBER_WEIGHTS, MEMBER_PREDICTIONS, MEMBER_RESULT = "model.pt", "predictions.npz", "result.json"
COMPARISON = "comparison"
COMPARISON_BY_REPEAT = "comparison_by_repeat"
MCNEMAR = "mcnemar"
PREDICTIONS = "predictions"
PER_CLASS = "per_class"
DIVERSITY_FILE = "diversity.json"
GROUP_LABELS = {"seed": "seed ensemble", "bagged": "bagged"}
VOTING_GROUPS = tuple(GROUP_LABELS)  # members of a vote; "baseline" (the ResNet) is not
# Tables written before the one selection metric was named called it val_acc.
LEGACY_COLUMNS = {"val_acc": SELECTION_METRIC}
# per_class tables written before classes were named (Fashion-MNIST) called the label "digit".
LEGACY_PER_CLASS = {"digit": "class"}


def class_name(dataset: str, label: int) -> str:
    """What a label means: its Fashion-MNIST class name, or the digit itself (MNIST, digits)."""
    names = CLASS_NAMES.get(dataset)
    return names[label] if names and 0 <= label < len(names) else str(label)


def named_per_class(per_class: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """``per_class`` with the label column called ``class`` and a ``class_name`` beside it, as
    written now; a table of an older run (``digit``, no names) is brought to that form."""
    legacy = {old: new for old, new in LEGACY_PER_CLASS.items() if old in per_class and new not in per_class}
    table = per_class.rename(columns=legacy)
    if "class_name" not in table and "class" in table:
        table.insert(1, "class_name", [class_name(dataset, int(c)) for c in table["class"]])
    return table


@dataclass(frozen=True)
class EnsembleResults:
    members: pd.DataFrame  # one row per trained model; config JSON and config.<field> columns
    comparison: pd.DataFrame  # every model and vote: accuracy, interval, n, calibration, cost
    comparison_by_repeat: pd.DataFrame
    mcnemar: pd.DataFrame  # exact McNemar tests on the test set, every repeat
    predictions: pd.DataFrame  # per test image (first repeat): label, each vote's prediction
    per_class: pd.DataFrame  # error by class (first repeat): class, class_name, error per model
    diversity: dict[str, Any]  # repeats, members, main group, disagreement, oracle, OOB
    run: dict[str, Any] = field(default_factory=dict)  # run.json: provenance and the plan
    folder: Path | None = field(default=None, compare=False)  # where it was written or read

    @property
    def config(self) -> TrialConfig | None:
        """The config of the LeNet members (the first, with its seed), as they ran."""
        lenets = self.members[self.members["group"].isin(VOTING_GROUPS)]
        return None if lenets.empty else config_of(lenets.iloc[0], source=MEMBERS)

    best_config = config  # what study.load().best_config gives for an ensemble-only folder

    def voting_member_names(self) -> set[str]:
        """Names of the models that vote (seed and bagged members; not the baseline)."""
        return set(self.members.loc[self.members["group"].isin(VOTING_GROUPS), "name"])

    def console_lines(self) -> list[str]:
        """What the console prints: each model's accuracy with its interval, then the tests."""
        lines = [
            f"{r.model}: test accuracy {r.test_acc:.4f} [{r.ci95_low:.4f}, {r.ci95_high:.4f}] "
            f"({r.interval}), ECE {r.ece:.4f}"
            for r in self.comparison.itertuples()
        ]
        first = self.mcnemar[self.mcnemar["repeat"] == self.mcnemar["repeat"].min()]
        lines += [f"McNemar (repeat 0) {r.a} vs {r.b}: p = {r.mcnemar_p:.3g}" for r in first.itertuples()]
        return lines

    # ------------------------------------------------------------------ files
    def write(self, folder: Path) -> None:
        """Every table, the figure drawn from tables alone, and run.json last (the other figures
        need the models: the stage draws them between ``write_tables`` and ``write_run_info``)."""
        self.write_tables(folder)
        self.write_table_figures(folder)
        write_run_info(folder, self.run)

    def write_table_figures(self, folder: Path) -> None:
        """The figures drawn from the tables alone (a reanalysis redraws them; no models needed)."""
        from study.stages.ensemble.figures import vote_accuracy_figure

        curves = self.diversity.get("diversity", {})
        if not curves or not all("vote_accuracy_by_members_mean" in entry for entry in curves.values()):
            return  # tables from before the curves were kept
        baselines = self.members.loc[self.members["group"] == "baseline", "model"]
        baseline = str(baselines.iloc[0]) if len(baselines) else None
        vote_accuracy_figure(diversity=curves, comparison=self.comparison, baseline=baseline, folder=folder)

    def write_tables(self, folder: Path) -> None:
        write_table(stored_form(self.members), folder / MEMBERS)
        write_table(self.comparison_by_repeat, folder / COMPARISON_BY_REPEAT)
        write_table(self.comparison, folder / COMPARISON, markdown=True)
        write_table(self.mcnemar, folder / MCNEMAR, markdown=True)
        write_json(folder / DIVERSITY_FILE, self.diversity)
        write_table(self.predictions, folder / PREDICTIONS, csv=False)
        write_table(self.per_class, folder / PER_CLASS)

    @classmethod
    def read(cls, folder: Path) -> EnsembleResults:
        """The results an ensemble run wrote to ``folder`` (OUT/NAME/ensemble)."""

        def table(stem: str) -> pd.DataFrame:
            return read_table(folder / f"{stem}.parquet", what=f"ensemble {stem}")

        members = table(MEMBERS)
        legacy = {old: new for old, new in LEGACY_COLUMNS.items() if old in members and new not in members}
        run = read_run_info(folder)
        return cls(
            members=expand_configs(members.rename(columns=legacy)),
            comparison=table(COMPARISON),
            comparison_by_repeat=table(COMPARISON_BY_REPEAT),
            mcnemar=table(MCNEMAR),
            predictions=table(PREDICTIONS),
            per_class=named_per_class(table(PER_CLASS), str(run.get("dataset", ""))),
            diversity=read_json(folder / DIVERSITY_FILE, what="ensemble diversity"),
            run=run,
            folder=folder,
        )
