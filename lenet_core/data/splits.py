"""Seeded index helpers: the stratified train/validation split (with its cache), class-balanced
subsets and bootstrap resamples. Indices only: the images are never copied.

Split cache: ``<cache dir>/splits/<hash of labels, fraction, seed, scikit-learn version>.npz``.
scikit-learn draws the split, and importing it costs a second or more; a cached split spares every
later trial that import. The cache folder is always the caller's ``cache_dir`` argument (None: no
cache); ``lenet_core.train.trial_split`` passes the one its ``ImageData`` carries.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from lenet_core.data.cache import write_synced
from lenet_core.errors import DataError

SPLITS_FOLDER = "splits"


def stratified_split(
    labels: np.ndarray, *, held_out_fraction: float, seed: int, cache_dir: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split keeping class proportions (scikit-learn's stratified shuffle): (kept indices,
    held-out indices), both sorted. With ``cache_dir``, read from and saved to its split cache."""
    if not 0.0 <= held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1), got {held_out_fraction}")
    everything = np.arange(len(labels))
    if held_out_fraction == 0.0:
        return everything, np.empty(0, dtype=np.int64)
    entry = split_entry(cache_dir, labels, held_out_fraction, seed) if cache_dir is not None else None
    cached = _read_split(entry, len(labels)) if entry is not None else None
    if cached is not None:
        return cached
    from sklearn.model_selection import train_test_split

    try:
        kept, held = train_test_split(
            everything, test_size=held_out_fraction, stratify=labels, random_state=seed, shuffle=True
        )
    except ValueError as exc:  # too few images for every class on both sides
        raise DataError(
            f"cannot split {len(labels)} images {1 - held_out_fraction:g}/{held_out_fraction:g} "
            f"keeping every class on both sides ({exc})"
        ) from exc
    kept, held = np.sort(kept), np.sort(held)
    if entry is not None:
        _write_split(entry, kept, held)
    return kept, held


def split_entry(cache_dir: Path, labels: np.ndarray, held_out_fraction: float, seed: int) -> Path:
    """The cache file of one split of ``labels`` under ``cache_dir``."""
    from importlib.metadata import version

    digest = hashlib.blake2b(np.ascontiguousarray(labels).tobytes(), digest_size=16)
    # scikit-learn's version is in the key: another version may draw another split
    digest.update(json.dumps([labels.dtype.str, held_out_fraction, seed, version("scikit-learn")]).encode())
    return cache_dir / SPLITS_FOLDER / f"{digest.hexdigest()}.npz"


def _read_split(entry: Path, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached (kept, held) indices, or None when missing or not a split of ``n`` items."""
    try:
        with np.load(entry, allow_pickle=False) as saved:
            kept, held = saved["kept"], saved["held"]
    except (OSError, ValueError, KeyError):
        return None
    if len(kept) + len(held) != n or not np.array_equal(np.union1d(kept, held), np.arange(n)):
        return None  # damaged: recomputed and written again
    return kept, held


def _write_split(entry: Path, kept: np.ndarray, held: np.ndarray) -> None:
    """Publish the split atomically (temp file + os.replace); best effort only."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{entry.stem}.", suffix=".npz", dir=entry.parent)
        os.close(handle)
        try:
            write_synced(Path(temp), lambda f: np.savez(f, kept=kept, held=held))
            os.replace(temp, entry)
        finally:
            Path(temp).unlink(missing_ok=True)
    except OSError:
        pass  # unwritable or full cache dir: the split is used all the same


def stratified_subset(
    labels: np.ndarray, *, fraction: float, seed: int, cache_dir: Path | None = None
) -> np.ndarray:
    """Seeded, class-balanced subset of ``fraction`` of the indices (e.g. 1/2 ... 1/16); with
    ``cache_dir``, drawn through the split cache like :func:`stratified_split`."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return np.arange(len(labels))
    kept, _ = stratified_split(labels, held_out_fraction=1.0 - fraction, seed=seed, cache_dir=cache_dir)
    return kept


def bootstrap_indices(n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded bootstrap of ``n`` items: (n in-bag indices drawn with replacement, out-of-bag)."""
    rng = np.random.default_rng(seed)
    in_bag = rng.integers(0, n, size=n)
    out_of_bag = np.setdiff1d(np.arange(n), in_bag)
    return in_bag, out_of_bag
