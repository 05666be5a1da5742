"""``SweepResults``: what a sweep or data-fraction experiment leaves in OUT/NAME, written and read
back here and nowhere else.

``runs.{parquet,csv}`` (one row per condition x seed), ``epochs.parquet`` (every run's curve),
``summary.{parquet,csv,md}`` (per condition: n, mean, interval, the reference chosen by
validation and the paired test against it), the views ``selection``, ``selected`` and
``compare_at`` when the experiment asks for them, ``anova`` when the grid is factorial,
``run.json`` (provenance and the experiment file as run), figures, and each finished run under
``runs/``.

Tables written before the reference was chosen by validation (a summary without a ``reference``
column: its "best" was the lowest test error, its "tied" a non-significant test) are recomputed
from ``runs.parquet`` on read, with the views and the ANOVA, so a report never restates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lenet_core.config import TrialConfig
from study.common.files import write_table
from study.common.results import (
    config_of,
    expand_configs,
    read_optional_table,
    read_run_info,
    read_table,
    stored_form,
    write_run_info,
)
from study.common.selection import SELECTION_METRIC
from study.stages.sweep.tables import (
    FAILED_STATUSES,
    SELECTION_MEAN,
    SELECTION_STD,
    anova_view,
    at_name,
    compare_at_view,
    label_of,
    rows_at,
    select_by_validation,
    selected_view,
    summarize,
)

if TYPE_CHECKING:
    import pandas as pd

    from study.stages.sweep.plan import SweepPlan

RUNS = "runs"
RUNS_FOLDER = "runs"  # one JSON per finished run, for --resume
EPOCHS = "epochs"
SUMMARY = "summary"
SELECTION, SELECTED, COMPARE_AT, ANOVA = "selection", "selected", "compare_at", "anova"
VIEWS = (SELECTION, SELECTED, COMPARE_AT, ANOVA)
# Tables written before the one selection metric was named called it val_acc.
LEGACY_COLUMNS = {"val_acc": SELECTION_METRIC, "val_acc_mean": SELECTION_MEAN, "val_acc_std": SELECTION_STD}


def build_views(runs: pd.DataFrame, plan: SweepPlan) -> dict[str, pd.DataFrame]:
    """The ``select`` and ``compare_at`` views the plan asks for, and the ANOVA of a factorial grid."""
    return _views(
        runs, swept=list(plan.swept), kind=plan.kind, select=plan.select, compare_at=plan.compare_at
    )


def _views(
    runs: pd.DataFrame, *, swept: list[str], kind: str, select: str, compare_at: dict[str, Any]
) -> dict[str, pd.DataFrame]:
    views: dict[str, pd.DataFrame] = {}
    if select:
        views[SELECTION], views[SELECTED] = selected_view(runs, swept=swept, field=select)
    if compare_at:
        views[COMPARE_AT] = compare_at_view(runs, swept=swept, at=compare_at)
    anova = anova_view(runs, swept) if kind == "sweep" else None  # data-fraction: each budget apart
    if anova is not None:
        views[ANOVA] = anova
    return views


@dataclass(frozen=True)
class SweepResults:
    runs: pd.DataFrame  # one row per condition x seed; config JSON and config.<field> columns
    epochs: pd.DataFrame  # one row per run-epoch
    summary: pd.DataFrame  # one row per condition
    views: dict[str, pd.DataFrame] = field(default_factory=dict)  # selection, selected, compare_at
    run: dict[str, Any] = field(default_factory=dict)  # run.json, with the experiment file as run
    folder: Path | None = field(default=None, compare=False)  # where it was written or read

    # ------------------------------------------------------------------ what the experiment asked
    @property
    def file(self) -> dict[str, Any]:
        return self.run.get("file") or {}

    @property
    def kind(self) -> str:
        return str(self.run.get("kind") or self.file.get("kind") or "sweep")

    @property
    def swept(self) -> list[str]:
        """The condition columns: the summary's columns before its count ``n``."""
        columns = list(self.summary.columns)
        return columns[: columns.index("n")]

    @property
    def select(self) -> str:
        return str(self.file.get("select") or "") if SELECTED in self.views else ""

    @property
    def compare_at(self) -> dict[str, Any]:
        return dict(self.file.get("compare_at") or {}) if COMPARE_AT in self.views else {}

    @property
    def selection(self) -> pd.DataFrame | None:
        """Every grid point's validation mean, the chosen value of ``select`` marked."""
        return self.views.get(SELECTION)

    @property
    def selected(self) -> pd.DataFrame | None:
        """The summary of the chosen points, compared on test error."""
        return self.views.get(SELECTED)

    @property
    def compared_at(self) -> pd.DataFrame | None:
        """The summary of every condition at the ``compare_at`` value."""
        return self.views.get(COMPARE_AT)

    @property
    def anova(self) -> pd.DataFrame | None:
        """The factorial ANOVA of test error (factor, sum_sq, df, F, p), where the grid is factorial."""
        return self.views.get(ANOVA)

    @property
    def best_config(self) -> TrialConfig | None:
        """The config of the condition with the highest mean selection metric over its ok seeds
        (chosen on validation, never test); its seed is the first of that condition's."""
        ok = self.runs[~self.runs["status"].isin(FAILED_STATUSES)]
        if ok.empty:
            return None
        means = ok.groupby(self.swept, sort=False, dropna=False)[SELECTION_METRIC].mean()
        if means.isna().all():
            return None
        best = means.idxmax()
        key = best if isinstance(best, tuple) else (best,)
        chosen = rows_at(ok, _point(self.swept, key), self.swept)
        return config_of(chosen.iloc[0], source=RUNS)

    # ------------------------------------------------------------------ files
    def write(self, folder: Path) -> None:
        """Every table, the figures, and run.json last: its presence says the files are complete."""
        self.write_tables(folder)
        self.write_figures(folder)
        write_run_info(folder, self.run)

    def write_tables(self, folder: Path) -> None:
        write_table(stored_form(self.runs), folder / RUNS)
        write_table(self.epochs, folder / EPOCHS, csv=False)
        write_table(self.summary, folder / SUMMARY, markdown=True)
        for name, view in self.views.items():
            write_table(view, folder / name, markdown=True)

    def write_figures(self, folder: Path) -> None:
        """Per-epoch curves (of the selected points, with ``select``), training against validation,
        test error per point, the data-fraction plot, and a figure per view."""
        from study.stages.sweep import figures as figs

        swept, runs = self.swept, stored_form(self.runs)
        title = self.run.get("description") or self.run.get("experiment") or folder.name
        shown = runs
        if self.select:  # every grid point is too many lines; the chosen ones answer the question
            selection = select_by_validation(runs, swept=swept, field=self.select)
            shown = rows_at(runs, selection[selection["selected"]], swept)
            title = f"{title} (each at its {self.select} chosen by validation)"
        curve = str(self.file.get("curve") or "train_loss")
        if self.kind == "data-fraction":
            figs.fraction_plot(runs, folder / "error_vs_training_examples.png", title=title)
        elif len(shown):
            figs.curves(shown, self.epochs, swept, curve, folder / f"{curve}_per_epoch.png", title=title)
        if len(shown):
            figs.learning_curves(shown, self.epochs, swept, folder / "learning_curves.png", title=title)
        name = self.run.get("experiment") or folder.name
        figs.error_bars(self.summary, swept, folder / "test_error.png", title=f"Test error: {name}")
        if self.select:
            groups = [s for s in swept if s != self.select]
            figs.selection_plot(
                self.views[SELECTION],
                groups,
                self.select,
                folder / f"val_acc_vs_{self.select}.png",
                title=f"Choosing {self.select} by validation",
            )
            figs.error_bars(
                self.views[SELECTED],
                swept,
                folder / "selected_test_error.png",
                title=f"Test error, each at its {self.select} chosen by validation",
            )
        if self.compare_at:
            at = self.compare_at
            figs.error_bars(
                self.views[COMPARE_AT],
                swept,
                folder / f"test_error_at_{at_name(at)}.png",
                title=f"Test error at {label_of(at, list(at))}",
            )

    @classmethod
    def read(cls, folder: Path) -> SweepResults:
        """The results a sweep or data-fraction experiment wrote to ``folder`` (OUT/NAME)."""
        runs = _current(read_table(folder / f"{RUNS}.parquet", what="sweep runs"))
        summary = read_table(folder / f"{SUMMARY}.parquet", what="sweep summary")
        views = {
            name: _current(view)
            for name in VIEWS
            if (view := read_optional_table(folder / f"{name}.parquet", what=f"sweep {name}")) is not None
        }
        run = read_run_info(folder)
        if "reference" not in summary.columns:  # written before the reference was chosen by validation
            summary, views = _recomputed(runs, summary, views, run)
        return cls(
            runs=expand_configs(runs),
            epochs=read_table(folder / f"{EPOCHS}.parquet", what="sweep epochs"),
            summary=summary,
            views=views,
            run=run,
            folder=folder,
        )


def _recomputed(
    runs: pd.DataFrame, summary: pd.DataFrame, views: dict[str, pd.DataFrame], run: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The summary, its views and the ANOVA of an older sweep, computed again from its runs.

    The condition columns are the old summary's (those before ``n``); data-fraction experiments
    compare each budget apart, as they always did.
    """
    file = run.get("file") or {}
    kind = str(run.get("kind") or file.get("kind") or "sweep")
    columns = list(summary.columns)
    swept = columns[: columns.index("n")]
    within = ["budget"] if kind == "data-fraction" and "budget" in runs.columns else None
    recomputed = _views(
        runs,
        swept=swept,
        kind=kind,
        select=str(file.get("select") or "") if SELECTED in views else "",
        compare_at=dict(file.get("compare_at") or {}) if COMPARE_AT in views else {},
    )
    return summarize(runs, swept, within=within), {**views, **recomputed}


def _current(frame: pd.DataFrame) -> pd.DataFrame:
    """A table with today's column names (older tables called the selection metric val_acc)."""
    legacy = {old: new for old, new in LEGACY_COLUMNS.items() if old in frame.columns and new not in frame}
    return frame.rename(columns=legacy) if legacy else frame


def _point(columns: list[str], key: tuple[Any, ...]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame([dict(zip(columns, key, strict=True))])
