import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from lenet_core.config import FIELD_NAMES
from study.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_train_writes_history_result_and_weights(tmp_path):
    result = run(
        "train", "--dataset", "digits", "--epochs", "2", "--threads", "1", "--out", tmp_path, "--name", "t"
    )
    assert result.exit_code == 0, result.output
    folder = tmp_path / "t" / "train"
    history = pd.read_parquet(folder / "history.parquet")
    assert list(history["epoch"]) == [1, 2]
    assert pd.read_csv(folder / "history.csv").shape == history.shape
    summary = json.loads((folder / "result.json").read_text())
    assert summary["config"]["dataset"] == "digits" and summary["config"]["epochs"] == 2
    assert len(summary["data_checksum"]) == 64 and "torch" in summary["versions"]
    assert (folder / "model.pt").stat().st_size > 200_000  # 61,706 float32 weights
    assert "test accuracy" in result.output


def test_config_file_replays_a_trial_and_flags_override_it(tmp_path):
    first = run(
        "train",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--threads",
        "1",
        "--seed",
        "3",
        "--out",
        tmp_path,
        "--name",
        "a",
    )
    assert first.exit_code == 0, first.output
    saved = tmp_path / "a" / "train" / "result.json"
    second = run("train", "--config", saved, "--out", tmp_path, "--name", "b")
    assert second.exit_code == 0, second.output
    a = json.loads(saved.read_text())
    b = json.loads((tmp_path / "b" / "train" / "result.json").read_text())
    assert (a["test_acc"], a["val_loss"]) == (b["test_acc"], b["val_loss"])
    third = run("train", "--config", saved, "--seed", "4", "--out", tmp_path, "--name", "c")
    assert third.exit_code == 0
    assert json.loads((tmp_path / "c" / "train" / "result.json").read_text())["seed"] == 4


def test_help_documents_every_trial_config_flag():
    result = run("train", "--help")
    assert result.exit_code == 0
    for name in FIELD_NAMES:
        assert "--" + name.replace("_", "-") in result.output


@pytest.mark.parametrize(
    ("command", "text"),
    [("run", "override the file's [fixed] values"), ("tune", "([space] and [fixed] tables)")],
)
def test_help_keeps_square_brackets_as_written(command, text):
    """Help is plain text: a TOML table name like [fixed] is not swallowed as rich markup."""
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert text in " ".join(result.output.split())
