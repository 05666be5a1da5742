"""`study bench --quick`: runs end to end and reports every figure (no timing assertions)."""

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from study.cli import app

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_quick_bench_prints_and_writes_every_figure(tmp_path):
    result = CliRunner().invoke(app, ["bench", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for title in ("training throughput", "one epoch + validation", "Ray Tune study"):
        assert title in result.output
    [path] = (tmp_path / "bench").glob("*.json")
    figures = json.loads(path.read_text())
    assert [row["batch_size"] for row in figures["throughput"]] == [32, 64, 256]
    for row in figures["throughput"]:
        assert row["lenet_core_images_per_s"] > 0 and row["reference_images_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["lenet_core_images_per_s"] / row["reference_images_per_s"])
    epoch = figures["full_epoch"]
    assert epoch["train_images"] + epoch["val_images"] == 60_000
    tune = figures["tune"]
    for key in (
        "overhead_per_trial_s",
        "study_start_to_first_step_s",
        "cpu_busy_percent_during_trials",
        "driver_peak_rss_mb",
        "worker_peak_rss_mb",
        "data_private_mb_per_trial_max",
    ):
        assert isinstance(tune[key], float) and math.isfinite(tune[key]), key
    assert tune["trials"] == 6
    assert tune["data_zero_copy_all_trials"] is True


def test_bench_rejects_bad_flags(tmp_path):
    result = CliRunner().invoke(app, ["bench", "--device", "tpu", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--device must be cpu or cuda" in result.stderr
