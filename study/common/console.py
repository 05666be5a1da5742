"""Terminal output: one-line errors, progress bars and small tables."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from lenet_core.errors import StudyError

if TYPE_CHECKING:  # pandas costs import time; only tables need it
    import pandas as pd

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class StudyInterrupted(Exception):
    """A run stopped before all its work finished (Ctrl-C, or trials left unfinished).

    What finished is already written; the same command with ``--resume`` continues it.
    """


def resume_hint(argv: list[str] | None = None) -> str:
    """The command line that continues this run: the same one, with --resume."""
    import shlex

    args = list(sys.argv[1:] if argv is None else argv)
    args = [a for a in args if a != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    return "study " + " ".join(shlex.quote(a) for a in args)


def console() -> Console:
    plain = Console(stderr=False, highlight=False)
    # Logs and pipes get rich's 80-column default, which truncates wide tables; widen those.
    return plain if plain.is_terminal else Console(stderr=False, highlight=False, width=160)


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on one line to stderr and return the exit to raise."""
    first_line = " ".join(message.split())
    print(f"error: {first_line}", file=sys.stderr, flush=True)
    return typer.Exit(EXIT_BAD_INPUT)


def one_line_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn bad input into one line and exit code 2; Ctrl-C into exit 130 with the resume hint."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except StudyError as exc:
            raise fail(str(exc)) from None
        except (KeyboardInterrupt, StudyInterrupted) as exc:
            why = f" ({exc})" if str(exc) else ""
            print(
                f"interrupted{why}; files already written are complete; continue with: {resume_hint()}",
                file=sys.stderr,
                flush=True,
            )
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def clock(seconds: float) -> str:
    """0:01:05, as rich's own elapsed column writes it."""
    return str(timedelta(seconds=max(int(seconds), 0)))


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[..., None]]:
    """A rich progress bar; yields ``advance(text=...)``. Plain log lines when not a terminal
    (a log file or CI would otherwise show nothing until the bar ends)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    out = console()
    if not out.is_terminal:
        started, done = time.monotonic(), 0

        def log_line(info: str = "", steps: int = 1) -> None:
            nonlocal done
            done += steps
            line = f"{description} {done}/{total} [{clock(time.monotonic() - started)}] {info}"
            out.print(line.rstrip(), markup=False, highlight=False)

        yield log_line
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=out,
    )
    task = progress.add_task(description, total=total, info="")

    def advance(info: str = "", steps: int = 1) -> None:
        progress.update(task, advance=steps, info=info)

    with progress:
        yield advance


def print_table(
    frame: pd.DataFrame | list[dict[str, Any]], title: str, *, float_format: str = "{:.4f}"
) -> None:
    """A rich table of a DataFrame, or of plain rows (dicts with the same keys)."""
    from rich.table import Table

    if isinstance(frame, list):
        columns = list(frame[0]) if frame else []
        rows = [tuple(row[c] for c in columns) for row in frame]
    else:
        columns, rows = list(frame.columns), list(frame.itertuples(index=False))
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(str(column), justify="right")
    for row in rows:
        table.add_row(*(_cell(v, float_format) for v in row))
    console().print(table)


def _cell(value: Any, float_format: str) -> str:
    """A table cell; a missing number (a pruned trial's test accuracy) shows as a dash."""
    if isinstance(value, float):
        return "—" if value != value else float_format.format(value)  # NaN != NaN
    return str(value)
