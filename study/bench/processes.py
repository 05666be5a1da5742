"""Running both sides of an A/B: subprocesses, alternation, the machine's load, private Ray dirs."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lenet_core.errors import StudyError

SUBPROCESS_LIMIT_S = 3600.0


def load_average() -> float:
    """The 1-minute load average: near 0 on an idle machine, 2 with both cores taken."""
    return os.getloadavg()[0]


@contextmanager
def section(figures: dict[str, Any], key: str, say: Callable[[str], None], title: str) -> Iterator[None]:
    """``figures[key]``, a dict that gets the section's seconds and the load before and after it."""
    say(f"{title} (load average {load_average():.2f})")
    before, start = load_average(), time.perf_counter()
    figures[key] = {}
    yield
    figures[key].update(
        {"load_before": before, "load_after": load_average(), "section_seconds": time.perf_counter() - start}
    )


def run_process(
    command: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> dict[str, Any]:
    """Run ``command`` to its end: wall seconds, launch and exit (epoch seconds), stdout.
    A non-zero exit raises a StudyError with the end of its output."""
    launched = time.time()
    start = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=cwd, timeout=SUBPROCESS_LIMIT_S, check=False
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        shown = " ".join(Path(part).name if "/" in part else part for part in command[:3])
        raise StudyError(f"bench: `{shown} ...` exited with {done.returncode}: {tail}")
    return {"wall_s": wall, "launched": launched, "exited": launched + wall, "stdout": done.stdout}


def last_json(text: str) -> dict[str, Any]:
    """The last line of ``text`` that is a JSON object: how the bench scripts report."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise StudyError("bench: a script printed no JSON report")


def study_command() -> list[str]:
    """How a user runs `study`: the console script beside this Python, else ``python -m study``."""
    script = Path(sys.executable).parent / "study"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "study"]


def rotated_round(i: int, sides: Sequence[Callable[[], Any]]) -> tuple[Any, ...]:
    """Round ``i`` of an A/B (or more sides): every side runs once, side ``i mod n`` first and the
    rest in turn, so over n rounds each side leads once; results in the order of ``sides``."""
    results: list[Any] = [None] * len(sides)
    for k in range(len(sides)):
        j = (i + k) % len(sides)
        results[j] = sides[j]()
    return tuple(results)


def ab_round(i: int, first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Any, Any]:
    """Round ``i`` of an A/B: both run, ``second`` leading in odd rounds; (first's, second's)."""
    a, b = rotated_round(i, (first, second))
    return a, b


def alternate(rounds: int, first: Callable[[], Any], second: Callable[[], Any]) -> list[tuple[Any, Any]]:
    return [ab_round(i, first, second) for i in range(rounds)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def private_ray_env() -> Iterator[dict[str, str]]:
    """The environment of a child that starts Ray: its own short RAY_TMPDIR (socket paths must
    stay under 108 characters), so it never meets another session's Ray, and Ray on loopback."""
    ray_tmp = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    try:
        yield {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Optimizer steps lenet_core takes over ``images``: a 1-image tail batch is skipped."""
    full, tail = divmod(images, batch_size)
    return full + (1 if tail > 1 or (tail == 1 and full == 0) else 0)
