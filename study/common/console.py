"""Terminal output: one-line errors, progress bars and small tables."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lenet_core.errors import StudyError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


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
    """Turn bad input into one line and exit code 2; Ctrl-C into exit 130 with a hint."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except StudyError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            print("interrupted; files already written are complete", file=sys.stderr)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[..., None]]:
    """A rich progress bar; yields ``advance(text=...)``. Plain log lines when not a terminal."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console(),
    )
    task = progress.add_task(description, total=total, info="")

    def advance(info: str = "", steps: int = 1) -> None:
        progress.update(task, advance=steps, info=info)

    with progress:
        yield advance


def print_table(frame: pd.DataFrame, title: str, *, float_format: str = "{:.4f}") -> None:
    table = Table(title=title, show_lines=False)
    for column in frame.columns:
        table.add_column(str(column), justify="right")
    for row in frame.itertuples(index=False):
        table.add_row(*(float_format.format(v) if isinstance(v, float) else str(v) for v in row))
    console().print(table)
