"""Markdown pieces every stage's report section uses: percentages, tables, figure links.

Each stage owns its section of REPORT.md (``study/<stage>/report.py``), computed from its own
results type; ``study.writeup`` only assembles the sections.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


def pct(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.2f}%"


def md(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, floatfmt=".4g")


def value_text(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def figure_links(folder: Path, root: Path) -> list[str]:
    """Markdown image links to every PNG in ``folder``, relative to the report in ``root``."""
    return [
        f"![{p.stem.replace('_', ' ')}]({p.relative_to(root).as_posix()})"
        for p in sorted(folder.glob("*.png"))
    ]


def provenance_lines(run: dict[str, Any]) -> list[str]:
    """What was run, from a run.json: command, data and its checksum, versions, machine."""
    import json

    if not run:
        return ["(no run.json recorded in this folder)"]
    versions = run.get("versions", {})
    machine = run.get("machine", {})
    lines = [
        f"- Command: `{run.get('command', 'unknown')}`",
        f"- Finished: {run.get('finished', 'unknown')}",
        f"- Data: {run.get('dataset')} from `{run.get('data_source')}`, sha256 `{run.get('data_checksum')}`",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- Machine: {machine.get('platform')}, {machine.get('cpus')} CPUs, "
        f"{machine.get('memory_gb')} GiB, GPUs: {', '.join(machine.get('gpus') or []) or 'none'}",
    ]
    if run.get("file"):
        lines.append("- Experiment file (as run): `" + json.dumps(run["file"], default=str) + "`")
    return lines
