import math
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from study.common.files import write_records

ROWS = [
    {"epoch": 1, "lr": 0.001, "train_loss": 0.5893296802662037, "val_loss": math.nan, "status": "running"},
    {"epoch": 2, "lr": 1, "train_loss": math.inf, "val_loss": None, "status": 'a "quoted", two-line\nstatus'},
]


def test_records_read_back_exactly_with_their_types(tmp_path):
    write_records(ROWS, tmp_path / "history")
    table = pq.read_table(tmp_path / "history.parquet")
    assert {f.name: str(f.type) for f in table.schema} == {
        "epoch": "int64",
        "lr": "double",  # an int among floats: the column is float
        "train_loss": "double",
        "val_loss": "double",
        "status": "string",
    }
    assert table.column("train_loss").to_pylist() == [0.5893296802662037, math.inf]  # every digit
    assert table.column("lr").to_pylist() == [0.001, 1.0]
    val_loss = table.column("val_loss")
    assert math.isnan(val_loss[0].as_py()) and val_loss[1].as_py() is None  # NaN stays NaN, None is null
    assert table.column("status").to_pylist() == [r["status"] for r in ROWS]
    csv = pd.read_csv(tmp_path / "history.csv")
    assert list(csv.columns) == list(ROWS[0]) and len(csv) == 2
    assert csv["train_loss"][0] == 0.5893296802662037 and list(csv["status"]) == [r["status"] for r in ROWS]


def test_a_key_missing_from_some_rows_is_null_there(tmp_path):
    write_records([{"a": 1}, {"a": 2, "b": True}, {"a": 3, "b": False}], tmp_path / "t")
    table = pq.read_table(tmp_path / "t.parquet")
    assert str(table.schema.field("b").type) == "bool"
    assert table.column("b").to_pylist() == [None, True, False]


@pytest.mark.parametrize("value", [[1, 2], {"k": 1}])
def test_values_that_are_not_scalars_are_written_as_text(tmp_path, value):
    write_records([{"x": value}], tmp_path / "t")
    assert pq.read_table(tmp_path / "t.parquet").column("x").to_pylist() == [str(value)]


def test_numpy_scalars_are_written_as_the_values_they_hold(tmp_path):
    write_records(
        [{"flag": np.bool_(True), "n": np.int64(3), "x": np.float32(0.1), "y": np.float64(0.25)}],
        tmp_path / "t",
    )
    table = pq.read_table(tmp_path / "t.parquet")
    assert [str(f.type) for f in table.schema] == ["bool", "int64", "double", "double"]
    assert table.to_pylist() == [{"flag": True, "n": 3, "x": float(np.float32(0.1)), "y": 0.25}]


def test_no_rows_give_files_without_columns(tmp_path):
    write_records([], tmp_path / "t")
    assert pq.read_table(tmp_path / "t.parquet").num_columns == 0
    assert (tmp_path / "t.csv").read_text() == "\n"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_results_are_written_with_the_users_umask_like_any_file(tmp_path, umask, mode):
    """Results are shared: a teammate can read them unless the user's umask says otherwise
    (a temporary file from ``mkstemp`` would make every result 0o600)."""
    from study.common.files import write_json, write_text

    old = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"v": 1})
        write_records([{"a": 1}], tmp_path / "t")  # parquet and csv, written through a file name
        write_text(tmp_path / "a.json", "{}")  # replacing a file
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == dict.fromkeys(
        ["a.json", "t.parquet", "t.csv"], mode
    )
