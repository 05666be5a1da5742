"""The decoded-array cache: IDX datasets kept as ``.npy`` files, memory-mapped on the next load.

Decoding the gzip IDX files and hashing them costs about two seconds for Fashion-MNIST, in every
process that loads it. So the decoded arrays are kept under ``<cache dir>/decoded/`` with their
checksum and pixel statistics in a JSON beside them, keyed by the source files' paths, sizes and
mtimes; a warm load memory-maps them read-only instead.

Layout: ``<cache dir>/decoded/<name>-<paths hash>-<stats hash>/{<array>.npy, meta.json}``.
Every function takes the entry (or cache folder) it works on: nothing here picks a default
folder, so a caller that passes none caches nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lenet_core.data.idx import ARRAY_NAMES, IDX_FILES, Arrays

DECODED_FOLDER = "decoded"
DECODED_FORMAT = 1  # bump when an entry's layout changes: older entries then never match
DECODED_META = "meta.json"

SourceStats = list[dict[str, str | int]]  # per IDX file: role, resolved path, size, mtime_ns


@dataclass(frozen=True)
class Decoded:
    """What an entry holds: the four arrays and the summary that would otherwise cost a pass."""

    arrays: Arrays  # in ARRAY_NAMES order
    checksum: str  # sha256 of the four arrays' bytes
    mean: float  # train pixel mean on the [0, 1] scale
    std: float  # train pixel standard deviation on the [0, 1] scale


def inside_data_folder(folder: Path, files: dict[str, Path]) -> bool:
    """Whether ``folder`` lies in a folder holding one of the sources: a data folder is only ever
    read, so no cache goes there (say a cache dir that holds the IDX files flat)."""
    resolved = folder.expanduser().resolve()
    return any(resolved.is_relative_to(path.resolve().parent) for path in files.values())


def source_stats(files: dict[str, Path]) -> SourceStats:
    """What identifies the sources' content without reading it: resolved path, size, mtime."""
    stats: SourceStats = []
    for role in IDX_FILES:
        path = files[role].resolve()
        status = path.stat()
        stats.append(
            {"role": role, "path": str(path), "size": status.st_size, "mtime_ns": status.st_mtime_ns}
        )
    return stats


def _short_hash(value: object) -> str:
    # A folder name, not a checksum: blake2b keeps it apart from the data's sha256.
    return hashlib.blake2b(json.dumps(value, sort_keys=True).encode(), digest_size=8).hexdigest()


def entry_path(cache_dir: Path, name: str, stats: SourceStats) -> Path:
    """The entry of ``name`` read from the sources ``stats`` describes, under ``cache_dir``.

    The name starts with a prefix shared by every entry of the same source paths (whatever their
    size and mtime), so a new entry can find and drop the stale ones."""
    prefix = f"{name}-{_short_hash([stat['path'] for stat in stats])}-"
    return cache_dir / DECODED_FOLDER / (prefix + _short_hash([DECODED_FORMAT, name, stats]))


def read_entry(entry: Path, *, name: str, stats: SourceStats) -> Decoded | None:
    """The cached arrays (memory-mapped, read-only) and summary, or None when the entry is
    missing, stale or damaged."""
    if not entry.is_dir():
        return None
    try:
        meta = json.loads((entry / DECODED_META).read_text())
        if (meta["format"], meta["name"], meta["sources"]) != (DECODED_FORMAT, name, stats):
            raise ValueError("entry describes other sources")
        maps = [np.load(entry / f"{array}.npy", mmap_mode="r", allow_pickle=False) for array in ARRAY_NAMES]
        if [[list(m.shape), m.dtype.str] for m in maps] != meta["arrays"]:
            raise ValueError("arrays differ from their description")
        # Plain ndarray views of the maps (which they keep open): Ray pickles a plain array's
        # buffer out of band, zero-copy, but copies an np.memmap subclass in band.
        train_images, train_labels, test_images, test_labels = (m.view(np.ndarray) for m in maps)
        return Decoded(
            arrays=(train_images, train_labels, test_images, test_labels),
            checksum=str(meta["checksum"]),
            mean=float(meta["mean"]),
            std=float(meta["std"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        # Published entries are complete, so this one is damaged: drop it to make room.
        shutil.rmtree(entry, ignore_errors=True)
        return None


def write_entry(entry: Path, *, name: str, decoded: Decoded, stats: SourceStats) -> None:
    """Publish ``decoded`` at ``entry`` atomically (temp folder + os.replace); best effort only."""
    meta = {
        "format": DECODED_FORMAT,
        "name": name,
        "sources": stats,
        "checksum": decoded.checksum,
        "mean": decoded.mean,  # json writes repr(float): the value round-trips exactly
        "std": decoded.std,
        "arrays": [[list(a.shape), a.dtype.str] for a in decoded.arrays],
    }
    temp: Path | None = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        for array_name, array in zip(ARRAY_NAMES, decoded.arrays, strict=True):
            write_synced(temp / f"{array_name}.npy", lambda f, a=array: np.save(f, a, allow_pickle=False))
        write_synced(temp / DECODED_META, lambda f: f.write(json.dumps(meta, indent=1).encode()))
        os.replace(temp, entry)  # fails when another process published this entry first: fine
        temp = None
        _drop_stale_entries(entry)
    except OSError:
        pass  # unwritable or full cache dir: the data is loaded all the same
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def write_synced(path: Path, write: Callable[..., object]) -> None:
    """Write ``path`` through ``write(file)`` and fsync it, before the caller renames it (or its
    folder) into place: even a power cut then leaves no half entry. The split cache uses it too."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _drop_stale_entries(entry: Path) -> None:
    """Remove entries of the same source files at an older size/mtime (they can never match)."""
    prefix = entry.name[: entry.name.rindex("-") + 1]
    for other in entry.parent.iterdir():
        if other.name.startswith(prefix) and other.name != entry.name:
            shutil.rmtree(other, ignore_errors=True)
