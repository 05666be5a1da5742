"""Where results go, and writing them so that a crash never leaves a truncated file.

Every file is written to a temporary name in the same folder and renamed into place
(``os.replace`` is atomic on POSIX), so a reader sees the old file or the new one, never half.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from lenet_core.errors import ConfigError, StudyError

if TYPE_CHECKING:  # pandas costs import time; only table writers need it
    import pandas as pd


def default_run_name(command: str, dataset: str) -> str:
    return f"{command}-{dataset}-{datetime.now():%Y%m%d-%H%M%S}"


LOCK_FILE = ".lock"


def check_run_name(name: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise StudyError(f"--name {name!r} must be a plain folder name")


def prepare_run_dir(out: Path, name: str, stage: str) -> Path:
    """``out/name/stage``, created; a one-line error if it cannot be written."""
    check_run_name(name)
    folder = out / name / stage
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as exc:
        raise StudyError(f"output folder {folder} is not writable ({exc.strerror or exc})") from exc
    return folder


def holds_results(folder: Path) -> bool:
    """Whether a run already wrote anything here (hidden files, such as the lock, do not count)."""
    return folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir())


@contextmanager
def run_folder(
    out: Path, name: str, stage: str, *, resume: bool = False, overwrite: bool = False
) -> Iterator[Path]:
    """The stage folder ``out/name/stage``, held under a lock for the whole run.

    A folder that already holds results is refused unless the command was given ``--resume``
    (continue it: what is there is reused) or ``--overwrite`` (start again: it is emptied).
    A second run of the same name while this one holds the lock exits with one line.
    """
    import fcntl
    import shutil

    if resume and overwrite:
        raise StudyError("give --resume or --overwrite, not both")
    check_run_name(name)
    new_folders = [p for p in (out / name / stage, out / name, out) if not p.exists()]
    folder = prepare_run_dir(out, name, stage)
    lock_existed = (folder / LOCK_FILE).exists()
    lock = (folder / LOCK_FILE).open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise StudyError(
            f"another run is writing {folder} right now; wait for it or choose another --name"
        ) from None
    try:
        if holds_results(folder) and not resume:
            if not overwrite:
                raise StudyError(
                    f"{folder} already holds results; pass --resume to continue that run, "
                    f"--overwrite to replace it, or choose another --name"
                )
            for entry in folder.iterdir():
                if entry.name != LOCK_FILE:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield folder
    except BaseException:
        if not lock_existed:
            (folder / LOCK_FILE).unlink(missing_ok=True)
        _remove_if_unused(folder, new_folders)
        raise
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def _remove_if_unused(folder: Path, new_folders: list[Path]) -> None:
    """After a failed start, leave no trace: drop the lock and the folders this run created,
    as long as nothing was written into them."""
    if holds_results(folder):
        return
    for path in new_folders:  # deepest first
        try:
            path.rmdir()
        except OSError:  # not empty (another stage's results) or already gone
            break


def _temp_sibling(path: Path) -> tuple[int, Path]:
    """A new hidden file next to ``path``, open for writing: (descriptor, its path).

    Created with mode 0o666 less the umask, as ``open`` would (``mkstemp``'s 0o600 would make every
    result unreadable to the rest of a team)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


@contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path``; on success it replaces ``path`` in one step."""
    fd, tmp = _temp_sibling(path)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_via_temp(path: Path, writer: Callable[[Path], None]) -> None:
    """For libraries that want a file name (parquet, savefig, torch.save): write, then rename."""
    fd, tmp = _temp_sibling(path)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _json_safe(value: Any) -> Any:
    """NaN and infinity are not JSON; write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    builtin = _builtin_scalar(value)
    return value if builtin is value else _json_safe(builtin)


def _builtin_scalar(value: Any) -> Any:
    """A numpy or torch scalar as the built-in value it holds (np.bool_ is no bool, np.float32's
    text is float32's); anything else as it is."""
    return value.item() if hasattr(value, "item") and callable(value.item) else value


def write_json(path: Path, payload: Any) -> None:
    with atomic_open(path) as handle:
        json.dump(_json_safe(payload), handle, indent=2, sort_keys=False)
        handle.write("\n")


def write_text(path: Path, text: str) -> None:
    with atomic_open(path) as handle:
        handle.write(text)


def write_table(frame: pd.DataFrame, stem: Path, *, csv: bool = True, markdown: bool = False) -> None:
    """``stem``.parquet (typed, for pandas) and ``stem``.csv (for everyone else)."""
    write_via_temp(stem.with_suffix(".parquet"), lambda p: frame.to_parquet(p, index=False))
    if csv:
        write_via_temp(stem.with_suffix(".csv"), lambda p: frame.to_csv(p, index=False))
    if markdown:
        write_text(stem.with_suffix(".md"), frame.to_markdown(index=False, floatfmt=".4g") + "\n")


def write_records(rows: list[dict[str, Any]], stem: Path) -> None:
    """The files of ``write_table`` from plain rows of scalars, without importing pandas.

    For ``study train``, which needs no other table work: pyarrow imports pandas the first time it
    converts Python objects (0.2-0.3 s), so the csv module writes the text and Arrow's own CSV
    reader types it for the parquet file. Columns of bool, int, float (NaN and infinities kept)
    and str values, built-in or numpy; a key missing from a row, None and an empty string are null.
    Both files are written once the table is built, so a value it cannot read leaves neither.
    """
    import csv
    import io

    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet

    plain = [{key: _builtin_scalar(value) for key, value in row.items()} for row in rows]
    columns = list(dict.fromkeys(key for row in plain for key in row))  # every key, first seen first
    if columns:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(plain)  # a float as str(): the shortest text that reads back exactly
        encoded = text.getvalue().encode()
        table = pyarrow.csv.read_csv(
            pa.py_buffer(encoded),
            parse_options=pyarrow.csv.ParseOptions(newlines_in_values=True),
            convert_options=pyarrow.csv.ConvertOptions(
                column_types={c: _arrow_type([row.get(c) for row in plain]) for c in columns},
                null_values=[""],
                strings_can_be_null=True,
            ),
        )
    else:  # no rows, or rows without keys: files with no columns, as pandas writes them
        encoded, table = b"\n", pa.table({})
    with atomic_open(stem.with_suffix(".csv"), "wb") as handle:
        handle.write(encoded)
    write_via_temp(stem.with_suffix(".parquet"), lambda p: pyarrow.parquet.write_table(table, p))


def _arrow_type(values: list[Any]) -> Any:
    """The Arrow type of a column of built-in scalars; None is a missing value."""
    import pyarrow as pa

    present = [v for v in values if v is not None]
    if not present:
        return pa.null()
    if all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.int64()
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return pa.float64()
    return pa.string()


def save_figure(fig: Any, path: Path, *, dpi: int = 110) -> None:
    import matplotlib.pyplot as plt

    write_via_temp(path, lambda p: fig.savefig(p, dpi=dpi, bbox_inches="tight", format="png"))
    plt.close(fig)


def save_weights(state_dict: dict[str, Any], path: Path) -> None:
    import torch

    write_via_temp(path, lambda p: torch.save(state_dict, p))


def load_weights(path: Path) -> dict[str, Any]:
    """Weights only: ``weights_only=True`` refuses pickled code from a file someone handed you."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise StudyError(f"{path}: not a readable weights file ({type(exc).__name__})") from exc


def _read_text(path: Path, *, what: str, error: type[StudyError]) -> str:
    """A file's text, or ``error`` in one line when it is missing or unreadable."""
    try:
        return path.read_text()
    except FileNotFoundError as exc:
        raise error(f"{what} {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{what} {path} cannot be read ({exc})") from exc


def read_toml(path: Path, *, what: str = "file") -> dict[str, Any]:
    """Parse a TOML file (never evaluated: tomllib only builds data), errors in one line."""
    import tomllib

    text = _read_text(path, what=what, error=ConfigError)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML ({exc})") from exc


def read_json(path: Path, *, what: str = "file") -> Any:
    text = _read_text(path, what=what, error=StudyError)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StudyError(f"{what} {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from exc


def machine_info() -> dict[str, Any]:
    """Where a run happened, for the report: platform, cores, memory, GPUs."""
    import os
    import platform

    import torch

    try:
        memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory_gb = float("nan")
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gb": round(memory_gb, 1),
        "gpus": gpus,
    }


def provenance(data: Any, **extra: Any) -> dict[str, Any]:
    """What ``run.json`` holds: the exact command, library versions, data checksum and machine of
    a run, and what the stage adds (its kind, how it ended). Each stage's results type writes it."""
    import shlex
    import sys

    from lenet_core.train import library_versions

    return {
        "command": "study " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "finished": datetime.now().isoformat(timespec="seconds"),
        "dataset": data.name,
        "data_source": data.source,
        "data_checksum": data.checksum,
        "versions": library_versions(),
        "machine": machine_info(),
        **extra,
    }
