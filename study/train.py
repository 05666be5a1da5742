"""Writing one trial's files (history, result, weights) and reading them back for replay."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lenet_core.train import TrialResult
from study.common.files import save_weights, write_json, write_table


def history_frame(result: TrialResult) -> pd.DataFrame:
    return pd.DataFrame(result.history)


def write_trial(result: TrialResult, folder: Path) -> None:
    """``history.{csv,parquet}``, ``result.json`` (config, metrics, provenance), ``model.pt``."""
    write_table(history_frame(result), folder / "history")
    save_weights(result.state_dict, folder / "model.pt")
    write_json(folder / "result.json", result.summary())
