"""study.common.console: progress that a log file can show, and the elapsed clock."""

from __future__ import annotations

from study.common.console import clock, progress_bar


def test_progress_writes_one_line_per_step_when_not_a_terminal(capsys):
    with progress_bar("runs", 3) as advance:
        advance("run 1 test acc 0.9000")
        advance("runs 2 and 3", steps=2)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["runs 1/3 [0:00:00] run 1 test acc 0.9000", "runs 3/3 [0:00:00] runs 2 and 3"]


def test_clock_writes_hours_minutes_seconds():
    assert clock(3665.9) == "1:01:05"
    assert clock(-2) == "0:00:00"
