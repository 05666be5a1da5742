"""Tune's storage on local disk, with every file written whole or not at all.

Tune saves its experiment state (trial statuses, the searcher, the search generator) in a staging
folder and then copies it to the study's ``ray/`` folder with ``pyarrow.fs.copy_files``, which
writes each destination file in place. A study killed during that copy (``kill -9``, the OOM
killer, a lost node) leaves a truncated file there, and a later ``--resume`` fails to restore it:
Tune logs the error and starts the study over inside the half-restored run, which never ends.

Given to Tune as ``storage_filesystem``, ``atomic_local_filesystem()`` is the local file system
except that a file opened for writing is written under a hidden temporary name in the same folder
and renamed onto its name when closed (``study.common.files.atomic_open``, as for every result):
the copy a study leaves behind is always the previous whole file or the new whole file.

What it cannot give is one atomic save of several files: a kill between two renames (a window of
about a millisecond every few seconds) leaves the experiment state one save newer than the
searcher's. ``study.stages.tune.run.check_saved_state`` refuses a resume from a file cut short.
"""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from study.common.files import atomic_open, write_via_temp


class ReplaceOnClose:
    """A binary file written under a temporary name next to ``path`` and renamed onto it on close."""

    def __init__(self, path: str) -> None:
        self._commit = ExitStack()  # closing it leaves atomic_open: flush, fsync, rename
        self._file = self._commit.enter_context(atomic_open(Path(path), "wb"))

    @property
    def closed(self) -> bool:
        return self._file.closed

    def write(self, data: bytes) -> int:
        return self._file.write(data)

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._commit.close()


class AtomicLocalFiles(pafs.FileSystemHandler):
    """``pyarrow.fs.LocalFileSystem`` whose writes and copies replace a file in one rename.

    Picklable (Tune ships the storage file system to its trial workers): it holds only a
    ``LocalFileSystem``.
    """

    def __init__(self) -> None:
        self._local = pafs.LocalFileSystem()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AtomicLocalFiles)

    def __hash__(self) -> int:
        return hash(AtomicLocalFiles)

    def get_type_name(self) -> str:
        return "local-atomic"

    def normalize_path(self, path: str) -> str:
        return self._local.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self._local.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self._local.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self._local.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self._local.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        self._local.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path: str) -> None:
        self._local.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self._local.move(src, dest)  # a rename: atomic already

    def copy_file(self, src: str, dest: str) -> None:
        write_via_temp(Path(dest), lambda temp: shutil.copyfile(src, temp))

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self._local.open_input_stream(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self._local.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return pa.PythonFile(ReplaceOnClose(path), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        # an append extends the file in place: nothing of it is lost if cut short
        return self._local.open_append_stream(path)


def atomic_local_filesystem() -> pafs.FileSystem:
    """The file system to give Tune as ``storage_filesystem`` for a study on local disk."""
    return pafs.PyFileSystem(AtomicLocalFiles())
