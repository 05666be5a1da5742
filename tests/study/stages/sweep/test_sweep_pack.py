"""Sweep runs trained as packs (a condition's seeds, and any runs of one shape, in one Ray task):
the same outputs and runs table as runs trained alone."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from lenet_core.config import TrialConfig
from study.cli import app
from study.stages.sweep.run import SweepRun, train_run, train_runs

runner = CliRunner()
# Packed runs add the same products in another order (lenet_core.packed): after 2 epochs on the
# digits their test accuracy is within 2 points of the run trained alone (measured: equal).
TEST_ACC_TOLERANCE = 0.02


def test_packed_runs_match_runs_trained_alone(digits):
    base = TrialConfig(dataset="digits", epochs=2, threads=1)
    configs = [base.replace(seed=0), base.replace(seed=1, lr=3e-3)]
    runs = [SweepRun(i, c) for i, c in enumerate(configs)]
    for run, together in zip(runs, train_runs(runs, digits), strict=True):
        solo = train_run(run, digits)
        assert set(together.summary) == set(solo.summary)
        assert [list(row) for row in together.history] == [list(row) for row in solo.history]
        assert together.summary["config"] == solo.summary["config"]  # each its own seed and lr
        assert together.summary["test_acc"] == pytest.approx(solo.summary["test_acc"], abs=TEST_ACC_TOLERANCE)


SWEEP = """kind = "sweep"
description = "packing check"
seeds = 3
[fixed]
epochs = 1
[sweep]
lr = [0.001, 0.003]
"""


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")
def test_packed_sweep_writes_the_unpacked_runs_table(tmp_path):
    path = tmp_path / "packing.toml"
    path.write_text(SWEEP)
    tables, outputs = {}, {}
    for name, flags, pack in (("packed", ["--pack", "3"], 3), ("alone", ["--no-pack"], 1)):
        args = ["run", str(path), "--dataset", "digits", *flags, "--out", str(tmp_path), "--name", name]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        outputs[name] = result.output
        tables[name] = pd.read_parquet(tmp_path / name / "runs.parquet")
        assert json.loads((tmp_path / name / "run.json").read_text())["pack"] == pack
    # one pack per condition: its 3 seeds
    assert "6 runs to train, 0 read back, 2 at a time; 6 of them in 2 packs of up to 3" in outputs["packed"]
    assert "of them in" not in outputs["alone"]
    packed, alone = tables["packed"], tables["alone"]
    assert list(packed.columns) == list(alone.columns)
    assert packed[["run", "lr", "seed"]].equals(alone[["run", "lr", "seed"]])
    assert set(packed["pack_size"]) == {3} and set(alone["pack_size"]) == {1}
    assert (packed["test_acc"] - alone["test_acc"]).abs().max() <= TEST_ACC_TOLERANCE
