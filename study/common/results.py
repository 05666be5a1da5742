"""What every stage's results type shares: reading tables back, and the config columns.

Each stage (train, tune, ensemble, sweep) owns a frozen results type with ``write(folder)`` and
``read(folder)``; those are the only places its file names appear. Tables keep each run's
``TrialConfig`` as one JSON ``config`` column on disk (CSV readers see one cell); in memory the
results types also carry it expanded, one ``config.<field>`` column per TrialConfig field, so a
notebook filters ``trials[trials["config.optimizer"] == "adam"]`` without parsing JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self

from lenet_core.config import FIELD_NAMES, TrialConfig, from_dict
from lenet_core.errors import StudyError
from study.common.files import read_json, write_json
from study.common.placement import without_placement

if TYPE_CHECKING:
    import pandas as pd

CONFIG_COLUMN = "config"  # the JSON of the TrialConfig a row ran, as every table stores it
CONFIG_PREFIX = "config."  # in memory: one column per TrialConfig field
RUN_FILE = "run.json"  # provenance: command, versions, data checksum, machine, how the run ended


class StageResults(Protocol):
    """The contract of a stage's results: written and read back by the stage itself."""

    def write(self, folder: Path) -> None: ...

    @classmethod
    def read(cls, folder: Path) -> Self: ...

    run: dict[str, Any]  # run.json: provenance, and how the run ended


def expand_configs(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with a ``config.<field>`` column per TrialConfig field, parsed from its JSON
    ``config`` column (kept as it is, so the stored form is written back unchanged)."""
    import pandas as pd

    frame = stored_form(frame)
    if CONFIG_COLUMN not in frame.columns or frame.empty:
        return frame
    parsed = [json.loads(text) if isinstance(text, str) and text else {} for text in frame[CONFIG_COLUMN]]
    expanded = pd.DataFrame(
        {f"{CONFIG_PREFIX}{name}": [values.get(name) for values in parsed] for name in FIELD_NAMES},
        index=frame.index,
    )
    return pd.concat([frame, expanded], axis=1)


def stored_form(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` as it is written: the expanded ``config.<field>`` columns dropped."""
    return frame[[c for c in frame.columns if not str(c).startswith(CONFIG_PREFIX)]]


def config_of(row: Any, *, source: str) -> TrialConfig:
    """The TrialConfig a table row ran, less where it ran (device, threads give way to placement)."""
    return from_dict(without_placement(json.loads(row[CONFIG_COLUMN])), source=source)


def read_table(path: Path, *, what: str) -> pd.DataFrame:
    """A parquet (or CSV) table a stage wrote, with a one-line error when it is missing or damaged."""
    import pandas as pd

    if not path.is_file():
        raise StudyError(f"{what}: {path} does not exist")
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:  # pyarrow and pandas raise many kinds for a damaged file
        raise StudyError(f"{what}: {path} cannot be read ({type(exc).__name__}: {exc})") from exc


def read_optional_table(path: Path, *, what: str) -> pd.DataFrame | None:
    return read_table(path, what=what) if path.is_file() else None


def read_run_info(folder: Path) -> dict[str, Any]:
    """A stage's run.json (provenance and how it ended), or {} where none was recorded."""
    path = folder / RUN_FILE
    return read_json(path, what=RUN_FILE) if path.is_file() else {}


def write_run_info(folder: Path, run: dict[str, Any]) -> None:
    if run:
        write_json(folder / RUN_FILE, run)
