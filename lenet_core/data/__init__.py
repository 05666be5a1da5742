"""Datasets held whole in memory, plus seeded splits, resampling and batched augmentation.

A dataset is four numpy arrays (uint8 images of shape (N, 28, 28), int64 labels of shape
(N,)) for the train and test splits. Numpy rather than torch so that Ray's object store can
hand them to every trial zero-copy; ``torch.from_numpy`` views them on the training side.

This package holds ``ImageData`` and ``load_dataset``, the entry point; the rest lives by concern
and is re-exported here, so ``from lenet_core.data import X`` works for every name below:

- ``idx``: IDX files: finding, reading, checking, and the torchvision download;
- ``cache``: the decoded-array cache (``<cache dir>/decoded/``), memory-mapped on a warm load;
- ``digits``: scikit-learn's 8x8 digits at 28x28, the dataset that needs no file;
- ``splits``: stratified split and subset (split cache: ``<cache dir>/splits/``), bootstrap;
- ``augment``: batch tensor ops: zero-copy views, uint8 -> float, normalization, augmentation.

Caches are explicit: every function that reads or writes one takes its folder as an argument,
None meaning no cache. Only ``load_dataset`` resolves the default folder (``default_cache_dir``:
$LENET_STUDY_DATA, else ~/.cache/lenet-study/data), and it records the folder it used on the
returned ``ImageData`` (``cache_dir``), which is how ``lenet_core.train.trial_split`` finds the
split cache inside a Ray worker without reading the environment.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from lenet_core.data.augment import (
    AUGMENTATION_STEPS,
    BLUR_KERNEL,
    BLUR_SIGMA_RANGE,
    MAX_ROTATION_DEGREES,
    as_tensor,
    augment_batch,
    normalize_,
    to_unit_float,
)
from lenet_core.data.cache import (
    DECODED_FOLDER,
    DECODED_FORMAT,
    DECODED_META,
    Decoded,
    entry_path,
    inside_data_folder,
    read_entry,
    source_stats,
    write_entry,
)
from lenet_core.data.digits import DIGITS_SOURCE, digits_arrays
from lenet_core.data.idx import (
    ARRAY_NAMES,
    IDX_FILES,
    IDX_UBYTE,
    IMAGE_SIDE,
    SYSTEM_COPIES,
    Arrays,
    decode_idx_files,
    download_with_torchvision,
    find_idx_files,
    offline_message,
    read_idx,
)
from lenet_core.data.splits import (
    SPLITS_FOLDER,
    bootstrap_indices,
    split_entry,
    stratified_split,
    stratified_subset,
)
from lenet_core.errors import DataError
from lenet_core.names import DATASETS

__all__ = [
    "ARRAY_NAMES",
    "AUGMENTATION_STEPS",
    "BLUR_KERNEL",
    "BLUR_SIGMA_RANGE",
    "CACHE_ENV",
    "DECODED_FOLDER",
    "DECODED_FORMAT",
    "DECODED_META",
    "DEFAULT_CACHE",
    "IDX_FILES",
    "IDX_UBYTE",
    "IMAGE_SIDE",
    "MAX_ROTATION_DEGREES",
    "SPLITS_FOLDER",
    "SYSTEM_COPIES",
    "DefaultCache",
    "ImageData",
    "as_tensor",
    "augment_batch",
    "bootstrap_indices",
    "default_cache_dir",
    "find_idx_files",
    "load_dataset",
    "load_idx_files",
    "normalize_",
    "read_idx",
    "split_entry",
    "stratified_split",
    "stratified_subset",
    "to_unit_float",
]

CACHE_ENV = "LENET_STUDY_DATA"  # the default cache folder; read by default_cache_dir() alone


class DefaultCache(enum.Enum):
    """The type of ``DEFAULT_CACHE``: ``load_dataset``'s "use the default cache folder", kept apart
    from None, which turns caching off."""

    DEFAULT = "default"


DEFAULT_CACHE: Final = DefaultCache.DEFAULT


@dataclass(frozen=True, eq=False)
class ImageData:
    """One dataset in memory. Arrays are read-only views that Ray can share zero-copy."""

    name: str
    train_images: np.ndarray  # (N, 28, 28) uint8
    train_labels: np.ndarray  # (N,) int64
    test_images: np.ndarray  # (M, 28, 28) uint8
    test_labels: np.ndarray  # (M,) int64
    source: str  # where it was read from, for provenance
    checksum: str  # sha256 of images and labels of both splits
    mean: float  # pixel mean of the train split, on the [0, 1] scale
    std: float  # pixel standard deviation of the train split, on the [0, 1] scale

    num_classes: int = 10
    # The cache folder this dataset was loaded with, None for no caching. Not part of the data
    # (no checksum covers it): it travels with the arrays so that a trial, even in a Ray worker,
    # caches its train/validation split where the caller chose. A Path: a few bytes to pickle.
    cache_dir: Path | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1, IMAGE_SIDE, IMAGE_SIDE)


def default_cache_dir() -> Path:
    """The default cache folder: $LENET_STUDY_DATA, else ~/.cache/lenet-study/data."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "lenet-study" / "data"


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    download: bool = True,
    cache_dir: str | Path | DefaultCache | None = DEFAULT_CACHE,
    decoded_cache: bool = True,
) -> ImageData:
    """Load a dataset by name into memory.

    ``data_dir`` may be a torchvision root (``<dir>/MNIST/raw/*``) or a folder holding the four
    IDX files directly, gzip-compressed or not. It is only ever read. Without it, the cache and
    the system copies are searched, and then torchvision downloads into the cache.

    ``cache_dir`` receives downloads, the decoded arrays of IDX datasets (unless ``decoded_cache``
    is False; see :func:`load_idx_files`) and, through the returned ``ImageData.cache_dir``, the
    train/validation splits of the trials run on it. Left out it is :func:`default_cache_dir`;
    None caches nothing and writes nothing anywhere (no download either: there is nowhere to put
    one).
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    # The one place the default folder is resolved; everything below gets it as an argument.
    cache = default_cache_dir() if cache_dir is DEFAULT_CACHE else _as_path(cache_dir)
    if name == "digits":  # generated in a few milliseconds: nothing to decode or cache
        return _make_image_data(name, digits_arrays(), source=DIGITS_SOURCE, cache_dir=cache)
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise DataError(f"data folder {folder} does not exist or is not a folder")
        files = find_idx_files(name, folder, required=True)
        return load_idx_files(name, files, cache_dir=cache, decoded_cache=decoded_cache)
    looked = [*([cache] if cache is not None else []), *SYSTEM_COPIES.get(name, ())]
    for folder in looked:
        found = find_idx_files(name, folder, required=False)
        if found is not None:
            return load_idx_files(name, found, cache_dir=cache, decoded_cache=decoded_cache)
    if not download:
        raise DataError(offline_message(name, looked, "downloads are disabled"))
    if cache is None:
        raise DataError(offline_message(name, looked, "cache_dir=None leaves no folder to download into"))
    download_with_torchvision(name, cache, looked=looked)
    files = find_idx_files(name, cache, required=True)
    return load_idx_files(name, files, cache_dir=cache, decoded_cache=decoded_cache)


def _as_path(folder: str | Path | None) -> Path | None:
    return None if folder is None else Path(folder)


def load_idx_files(
    name: str, files: dict[str, Path], *, cache_dir: Path | None, decoded_cache: bool = True
) -> ImageData:
    """Load the four IDX ``files`` (keys of ``IDX_FILES``) as an ``ImageData`` whose ``cache_dir``
    is ``cache_dir``, through the decoded-array cache there when ``decoded_cache``.

    A hit memory-maps the cached arrays read-only and takes checksum, mean and std from its JSON:
    no decompression, no hashing. A miss decodes, then stores an entry for the next process. The
    cache is skipped when ``cache_dir`` is None or lies inside a folder holding the sources (the
    data folder is only ever read), and failing to write it never fails the load.
    """
    source = str(files["train_images"].parent)
    if cache_dir is None or not decoded_cache or inside_data_folder(cache_dir / DECODED_FOLDER, files):
        return _make_image_data(name, decode_idx_files(files), source=source, cache_dir=cache_dir)
    stats = source_stats(files)
    entry = entry_path(cache_dir, name, stats)
    hit = read_entry(entry, name=name, stats=stats)
    if hit is not None:
        return _freeze(
            name,
            hit.arrays,
            source=source,
            checksum=hit.checksum,
            mean=hit.mean,
            std=hit.std,
            cache_dir=cache_dir,
        )
    data = _make_image_data(name, decode_idx_files(files), source=source, cache_dir=cache_dir)
    if source_stats(files) == stats:  # unchanged while we read it: the key describes the content
        arrays = (data.train_images, data.train_labels, data.test_images, data.test_labels)
        decoded = Decoded(arrays=arrays, checksum=data.checksum, mean=data.mean, std=data.std)
        write_entry(entry, name=name, decoded=decoded, stats=stats)
    return data


def _make_image_data(name: str, arrays: Arrays, *, source: str, cache_dir: Path | None) -> ImageData:
    """ImageData over ``arrays`` (ARRAY_NAMES order) with its checksum and pixel statistics."""
    contiguous = [np.ascontiguousarray(a) for a in arrays]
    digest = hashlib.sha256()
    for array in contiguous:
        digest.update(array.tobytes())
    train = contiguous[0]
    pixels = train.reshape(-1).astype(np.float64) / 255.0 if train.size else np.zeros(1)
    return _freeze(
        name,
        contiguous,
        source=source,
        checksum=digest.hexdigest(),
        mean=float(pixels.mean()),
        std=float(pixels.std()) or 1.0,
        cache_dir=cache_dir,
    )


def _freeze(
    name: str,
    arrays: Sequence[np.ndarray],
    *,
    source: str,
    checksum: str,
    mean: float,
    std: float,
    cache_dir: Path | None,
) -> ImageData:
    """ImageData over ``arrays`` (in ARRAY_NAMES order), made read-only."""
    for array in arrays:
        array.setflags(write=False)
    return ImageData(
        name=name,
        **dict(zip(ARRAY_NAMES, arrays, strict=True)),
        source=source,
        checksum=checksum,
        mean=mean,
        std=std,
        cache_dir=cache_dir,
    )
