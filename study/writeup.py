"""`study report results/<name>`: REPORT.md for a writeup, every sentence computed from the numbers.

It only assembles: ``study.load`` reads every stage's results, and each stage writes its own
section (``study/<stage>/report.py``); this module adds what was run (run.json) and, for an
experiment with published ``[[anchor]]`` rows, where our numbers stand among them.
"""

from __future__ import annotations

from pathlib import Path

from study.common.files import write_text
from study.common.report import provenance_lines
from study.common.results import StageResults
from study.reader import StudyResults, load

REPORT_FILE = "REPORT.md"


def section(stage: StageResults, root: Path) -> list[str]:
    """The stage's own section of the report (each stage writes its own)."""
    from study.stages.ensemble.report import ensemble_section
    from study.stages.ensemble.results import EnsembleResults
    from study.stages.sweep.report import sweep_section
    from study.stages.sweep.results import SweepResults
    from study.stages.train import TrainResults, train_section
    from study.stages.tune.report import tune_section
    from study.stages.tune.results import TuneResults

    if isinstance(stage, SweepResults):
        return sweep_section(stage, root)
    if isinstance(stage, TuneResults):
        return tune_section(stage, root)
    if isinstance(stage, EnsembleResults):
        return ensemble_section(stage, root)
    if isinstance(stage, TrainResults):
        return train_section(stage, root)
    raise TypeError(f"no report section for {type(stage).__name__}")


def report_lines(results: StudyResults, *, previous: Path | None = None) -> list[str]:
    """REPORT.md's lines; ``previous`` (an earlier run's folder of the same experiment) adds, to a
    sweep's section, each earlier verdict beside this run's and whether it survived."""
    from study.stages.ensemble.report import anchor_section

    root = results.folder
    lines = [f"# Report: {root.name}", ""]
    if results.ensemble is not None:
        lines += anchor_section(results.run.get("file") or {}, results.ensemble)
    for stage in results.stages():
        body = section(stage, root)  # starts with its "## title" and a blank line
        body += earlier_claims(stage, previous) if previous is not None else []
        lines += [
            *body[:2],
            "### What was run",
            "",
            *provenance_lines(stage.run),
            "",
            "### What it shows",
            "",
            *body[2:],
        ]
    return lines


def earlier_claims(stage: StageResults, previous: Path) -> list[str]:
    """A sweep's or an ensemble's earlier verdicts, read from the tables that run stored."""
    from study.common.results import read_optional_table
    from study.reader import STAGE_FOLDERS
    from study.stages.ensemble.report import earlier_claims_section as ensemble_claims
    from study.stages.ensemble.results import EnsembleResults
    from study.stages.sweep.report import VERDICT_VIEWS, earlier_claims_section
    from study.stages.sweep.results import SweepResults

    if isinstance(stage, EnsembleResults):
        # an experiment's ensemble sits in OUT/NAME/ensemble; a study ensemble folder is given as is
        stage_folder = previous / STAGE_FOLDERS["ensemble"][0]
        folder = stage_folder if stage_folder.is_dir() else previous
        return ensemble_claims(EnsembleResults.read(folder), stage, source=_source(folder))
    if not isinstance(stage, SweepResults):
        return []
    tables = {
        view: table
        for view in VERDICT_VIEWS
        if (table := read_optional_table(previous / f"{view}.parquet", what="earlier run")) is not None
    }
    return earlier_claims_section(tables, stage, source=_source(previous))


def _source(previous: Path) -> str:
    """How the earlier run is named in its section: when it finished and the folder read."""
    from study.common.results import read_run_info

    finished = read_run_info(previous).get("finished")
    return f"finished {finished}, read from {previous.name}/" if finished else f"{previous.name}/"


def write_report(root: Path, *, previous: Path | None = None, reanalyse: bool = False) -> Path:
    """Write ROOT/REPORT.md from the results in ROOT (a study or experiment folder). With
    ``reanalyse``, first rewrite the folder's tables and the figures drawn from them with this
    version's statistics; the report is composed before anything is written, so bad input (an
    unrelated ``previous``) leaves the folder as it was."""
    results = load(root)
    lines = report_lines(results, previous=previous)
    if reanalyse:
        results.write(results.folder)
    path = results.folder / REPORT_FILE
    write_text(path, "\n".join(lines) + "\n")
    return path
