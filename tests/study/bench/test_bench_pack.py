"""`study bench --pack`: both sides train the same K models on the same images, and the section
lands in the JSON and the tables. No timing assertions (see test_bench.py)."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from lenet_core.errors import StudyError
from study.bench import BenchSettings, report_tables
from study.bench.pack import pack_throughput
from study.bench.processes import section
from study.cli import app


def test_pack_section_trains_the_same_models_both_ways(digits):
    settings = BenchSettings(quick=True, core=False, pack=True, rounds=1, pack_sizes=(1, 3))
    lines: list[str] = []
    figures: dict = {}
    with section(figures, "pack", lines.append, "pack"):
        figures["pack"].update(pack_throughput(digits, settings, lines.append))
    rows = figures["pack"]["rows"]
    assert [row["k"] for row in rows] == [1, 3] and len(lines) == 1 + 2
    for row in rows:
        assert row["images_per_model"] == settings.pack_images
        assert row["separate_steps"] == row["k"] * row["packed_steps"] == row["k"] * 8  # 512 / 64
        for key in ("separate_images_per_s", "packed_images_per_s", "speedup", "speedup_cpu_time"):
            assert math.isfinite(row[key]) and row[key] > 0, key
        # the same seeds, images and models: one pass leaves the same losses, up to rounding
        assert row["packed_train_loss_mean"] == pytest.approx(row["separate_train_loss_mean"], rel=1e-3)
    [(title, table)] = report_tables(figures)
    assert title.startswith("7. K LeNet-5s packed") and "K = 5 not measured" in title
    assert [r["k"] for r in table] == [1, 3]


def test_pack_is_an_opt_in_section_that_no_core_can_run_alone():
    assert BenchSettings(quick=True, core=False, pack=True).pack
    with pytest.raises(StudyError, match="--pack"):
        BenchSettings(quick=True, core=False)
    result = CliRunner().invoke(app, ["bench", "--help"])
    assert result.exit_code == 0 and "--pack" in result.output
