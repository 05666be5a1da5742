"""Datasets held whole in memory, plus seeded splits, resampling and batched augmentation.

A dataset is four numpy arrays (uint8 images of shape (N, 28, 28), int64 labels of shape
(N,)) for the train and test splits. Numpy rather than torch so that Ray's object store can
hand them to every trial zero-copy; ``torch.from_numpy`` views them on the training side.
Batches are drawn by index and normalized per batch (uint8 -> float on the fly), so no
float copy of the dataset is ever made and no per-sample DataLoader sits in the hot path.

Decoding the gzip IDX files and hashing them costs about two seconds for Fashion-MNIST, in every
process that loads it. So the decoded arrays are kept as ``.npy`` files under
``<cache dir>/decoded/`` with their checksum and pixel statistics in a JSON beside them, keyed by
the source files' paths, sizes and mtimes; a warm load memory-maps them read-only instead.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import struct
import tempfile
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lenet_core.errors import DataError
from lenet_core.names import DATASETS, TORCHVISION_CLASSES

# Where an installed copy may already sit when no --data-dir is given (Debian's package).
SYSTEM_COPIES = {"fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),)}

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_SIDE = 28  # pixels; every dataset here is brought to 28x28
IDX_UBYTE = 0x08  # IDX type code for unsigned bytes, the only one MNIST-style files use

# Decoded-array cache: <cache dir>/decoded/<name>-<paths hash>-<stats hash>/{<array>.npy, meta.json}.
DECODED_FOLDER = "decoded"
DECODED_FORMAT = 1  # bump when an entry's layout changes: older entries then never match
DECODED_META = "meta.json"
ARRAY_NAMES = ("train_images", "train_labels", "test_images", "test_labels")  # ImageData fields
# Split cache: <cache dir>/splits/<hash of labels, fraction, seed, scikit-learn version>.npz.
# scikit-learn draws the split; importing it costs a second or more, paid once per cache entry.
SPLITS_FOLDER = "splits"

MAX_ROTATION_DEGREES = 15.0
BLUR_KERNEL = 5  # pixels, square
BLUR_SIGMA_RANGE = (0.1, 1.5)  # pixels; sampled once per batch


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

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1, IMAGE_SIDE, IMAGE_SIDE)


def default_cache_dir() -> Path:
    """Where downloads land: $LENET_STUDY_DATA, else ~/.cache/lenet-study/data."""
    env = os.environ.get("LENET_STUDY_DATA")
    return Path(env) if env else Path.home() / ".cache" / "lenet-study" / "data"


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    download: bool = True,
    cache_dir: Path | None = None,
    decoded_cache: bool = True,
) -> ImageData:
    """Load a dataset by name into memory.

    ``data_dir`` may be a torchvision root (``<dir>/MNIST/raw/*``) or a folder holding the four
    IDX files directly, gzip-compressed or not. It is only ever read. Without it, the cache and
    the system copies are searched, and then torchvision downloads into the cache.

    ``cache_dir`` (default :func:`default_cache_dir`) receives downloads and, unless
    ``decoded_cache`` is False, the decoded arrays of IDX datasets (see :func:`load_idx_files`).
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if name == "digits":
        return _load_digits()  # generated in a few milliseconds: nothing to cache
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    decoded_dir = cache / DECODED_FOLDER if decoded_cache else None
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise DataError(f"data folder {folder} does not exist or is not a folder")
        files = find_idx_files(name, folder, required=True)
        return load_idx_files(name, files, decoded_dir=decoded_dir)
    for folder in (cache, *SYSTEM_COPIES.get(name, ())):
        files = find_idx_files(name, folder, required=False)
        if files is not None:
            return load_idx_files(name, files, decoded_dir=decoded_dir)
    if not download:
        raise DataError(_offline_message(name, cache, "downloads are disabled"))
    _download_with_torchvision(name, cache)
    return load_idx_files(name, find_idx_files(name, cache, required=True), decoded_dir=decoded_dir)


def _offline_message(name: str, cache: Path, why: str) -> str:
    looked = ", ".join(str(p) for p in (cache, *SYSTEM_COPIES.get(name, ())))
    return (
        f"{name}: no local copy (looked in {looked}) and {why}; pass --data-dir DIR with the "
        f"four IDX files (e.g. ../shared/data/mnist-5k), or use --dataset digits"
    )


def _download_with_torchvision(name: str, cache: Path) -> None:
    """Let torchvision fetch the IDX files into ``cache``; one-line error when offline."""
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, TORCHVISION_CLASSES[name])
    try:
        cache.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            dataset_class(root=str(cache), train=train, download=True)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError, ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(_offline_message(name, cache, f"the download failed ({reason})")) from exc


def _candidate_folders(name: str, folder: Path) -> list[Path]:
    tv_folder = TORCHVISION_CLASSES[name]
    return [folder / tv_folder / "raw", folder / "raw", folder]


def find_idx_files(name: str, folder: Path, *, required: bool) -> dict[str, Path] | None:
    """The four IDX files of ``name`` under ``folder`` in either layout, or None / DataError."""
    for candidate in _candidate_folders(name, folder):
        files = {}
        for key, stem in IDX_FILES.items():
            for path in (candidate / stem, candidate / f"{stem}.gz"):
                if path.is_file():
                    files[key] = path
                    break
        if len(files) == len(IDX_FILES):
            return files
    if not required:
        return None
    looked = ", ".join(str(p) for p in _candidate_folders(name, folder))
    raise DataError(
        f"no {name} IDX files in {folder} (looked in {looked} for "
        f"{', '.join(IDX_FILES.values())}, optionally .gz)"
    )


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a uint8 array, checking its header."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != IDX_UBYTE or not 1 <= raw[3] <= 3:
        raise DataError(f"{path}: bad magic number {raw[:4].hex()} (not an unsigned-byte IDX file)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    found = len(raw) - header
    if found != expected:
        raise DataError(
            f"{path}: header promises {expected} bytes of data for shape {dims}, found {found} "
            f"(truncated or corrupt IDX file)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _checked_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(f"{images_path}: images of shape {images.shape[1:]}, expected 28x28")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected a 1-d label file, found shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
        )
    if len(labels) and labels.max() > 9:
        raise DataError(f"{labels_path}: label {int(labels.max())} outside 0-9")
    return images, labels.astype(np.int64)


def load_idx_files(name: str, files: dict[str, Path], *, decoded_dir: Path | None) -> ImageData:
    """Load the four IDX ``files`` (keys of ``IDX_FILES``), through the decoded cache when given.

    A hit memory-maps the cached arrays read-only and takes checksum, mean and std from its JSON:
    no decompression, no hashing. A miss decodes, then stores an entry for the next process. The
    cache is skipped when ``decoded_dir`` is None or lies inside a folder holding the sources
    (the data folder is only ever read), and failing to write it never fails the load.
    """
    source = str(files["train_images"].parent)
    if decoded_dir is None or _inside_data_folder(decoded_dir, files):
        return _decode_idx_files(name, files, source=source)
    stats = _source_stats(files)
    entry = decoded_dir / _entry_name(name, stats)
    cached = _read_entry(entry, name=name, stats=stats, source=source)
    if cached is not None:
        return cached
    data = _decode_idx_files(name, files, source=source)
    if _source_stats(files) == stats:  # unchanged while we read it: the key describes the content
        _write_entry(entry, data=data, stats=stats)
    return data


def _decode_idx_files(name: str, files: dict[str, Path], *, source: str) -> ImageData:
    train_images, train_labels = _checked_split(files["train_images"], files["train_labels"])
    test_images, test_labels = _checked_split(files["test_images"], files["test_labels"])
    return _make_image_data(name, train_images, train_labels, test_images, test_labels, source=source)


# --------------------------------------------------------------------------- decoded cache


def _inside_data_folder(decoded_dir: Path, files: dict[str, Path]) -> bool:
    decoded = decoded_dir.expanduser().resolve()
    return any(decoded.is_relative_to(path.resolve().parent) for path in files.values())


def _source_stats(files: dict[str, Path]) -> list[dict[str, str | int]]:
    """What identifies the sources' content without reading it: resolved path, size, mtime."""
    stats: list[dict[str, str | int]] = []
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


def _entry_prefix(name: str, stats: list[dict[str, str | int]]) -> str:
    """Shared by every entry of the same source files, whatever their size and mtime."""
    return f"{name}-{_short_hash([stat['path'] for stat in stats])}-"


def _entry_name(name: str, stats: list[dict[str, str | int]]) -> str:
    return _entry_prefix(name, stats) + _short_hash([DECODED_FORMAT, name, stats])


def _read_entry(
    entry: Path, *, name: str, stats: list[dict[str, str | int]], source: str
) -> ImageData | None:
    """The cached dataset, or None when the entry is missing, stale or damaged."""
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
        arrays = [m.view(np.ndarray) for m in maps]
        summary = (str(meta["checksum"]), float(meta["mean"]), float(meta["std"]))
    except (OSError, ValueError, KeyError, TypeError):
        # Published entries are complete, so this one is damaged: drop it to make room.
        shutil.rmtree(entry, ignore_errors=True)
        return None
    checksum, mean, std = summary
    return _freeze(name, arrays, source=source, checksum=checksum, mean=mean, std=std)


def _write_entry(entry: Path, *, data: ImageData, stats: list[dict[str, str | int]]) -> None:
    """Publish ``data`` at ``entry`` atomically (temp folder + os.replace); best effort only."""
    arrays = [getattr(data, array) for array in ARRAY_NAMES]
    meta = {
        "format": DECODED_FORMAT,
        "name": data.name,
        "sources": stats,
        "checksum": data.checksum,
        "mean": data.mean,  # json writes repr(float): the value round-trips exactly
        "std": data.std,
        "arrays": [[list(a.shape), a.dtype.str] for a in arrays],
    }
    temp: Path | None = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        for array_name, array in zip(ARRAY_NAMES, arrays, strict=True):
            _write_synced(temp / f"{array_name}.npy", lambda f, a=array: np.save(f, a, allow_pickle=False))
        _write_synced(temp / DECODED_META, lambda f: f.write(json.dumps(meta, indent=1).encode()))
        os.replace(temp, entry)  # fails when another process published this entry first: fine
        temp = None
        _drop_stale_entries(entry)
    except OSError:
        pass  # unwritable or full cache dir: the data is loaded all the same
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def _write_synced(path: Path, write: Callable[..., object]) -> None:
    # fsync before the folder is renamed into place, so even a power cut leaves no half entry.
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


DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # fixed: the digits train/test split is part of the dataset, not a trial
DIGITS_INNER_SIDE = 20  # MNIST digits fill a 20x20 box centred in 28x28; do the same


def _load_digits() -> ImageData:
    """scikit-learn's bundled 8x8 digits, upscaled to a 20x20 digit centred in 28x28."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    small = torch.from_numpy(bunch.images).float().unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0,1]
    big = F.interpolate(small, size=(DIGITS_INNER_SIDE,) * 2, mode="bilinear", align_corners=False)
    pad = (IMAGE_SIDE - DIGITS_INNER_SIDE) // 2
    big = F.pad(big, (pad, pad, pad, pad))  # (1797, 1, 28, 28)
    images = (big.squeeze(1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    return _make_image_data(
        "digits",
        images[train_idx],
        labels[train_idx],
        images[test_idx],
        labels[test_idx],
        source="sklearn.datasets.load_digits",
    )


def _make_image_data(
    name: str,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    source: str,
) -> ImageData:
    arrays = [np.ascontiguousarray(a) for a in (train_images, train_labels, test_images, test_labels)]
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(array.tobytes())
    pixels = arrays[0].reshape(-1).astype(np.float64) / 255.0 if arrays[0].size else np.zeros(1)
    return _freeze(
        name,
        arrays,
        source=source,
        checksum=digest.hexdigest(),
        mean=float(pixels.mean()),
        std=float(pixels.std()) or 1.0,
    )


def _freeze(
    name: str, arrays: Sequence[np.ndarray], *, source: str, checksum: str, mean: float, std: float
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
    )


# --------------------------------------------------------------------------- indices


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
    entry = _split_entry(cache_dir, labels, held_out_fraction, seed) if cache_dir is not None else None
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


def _split_entry(cache_dir: Path, labels: np.ndarray, held_out_fraction: float, seed: int) -> Path:
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
            _write_synced(Path(temp), lambda f: np.savez(f, kept=kept, held=held))
            os.replace(temp, entry)
        finally:
            Path(temp).unlink(missing_ok=True)
    except OSError:
        pass  # unwritable or full cache dir: the split is used all the same


def stratified_subset(
    labels: np.ndarray, *, fraction: float, seed: int, cache_dir: Path | None = None
) -> np.ndarray:
    """Seeded, class-balanced subset of ``fraction`` of the indices (e.g. 1/2 ... 1/16)."""
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


# --------------------------------------------------------------------------- batches


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """Zero-copy torch view of a (possibly read-only) numpy array; never written to."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "array is not writable": we only read
        return torch.from_numpy(array)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """(B, 28, 28) uint8 -> (B, 1, 28, 28) float in [0, 1]."""
    return images.unsqueeze(1).float().div_(255.0)


def normalize_(x: torch.Tensor, *, mean: float, std: float) -> torch.Tensor:
    """In place: (x - mean) / std on a float batch."""
    return x.sub_(mean).div_(std)


def augment_batch(x: torch.Tensor, *, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Seeded batched augmentation of a (B, 1, H, W) batch in [0, 1] (zero is background)."""
    if kind not in AUGMENTATION_STEPS:
        raise ValueError(f"unknown augmentation {kind!r}; choose one of: {', '.join(AUGMENTATION_STEPS)}")
    for step in AUGMENTATION_STEPS[kind]:
        x = step(x, generator)
    return x


def _random_rotation(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # One angle per image, uniform in [-15, 15] degrees; affine_grid wants (B, 2, 3) matrices.
    angles = (torch.rand(x.shape[0], generator=generator) * 2 - 1) * MAX_ROTATION_DEGREES
    radians = torch.deg2rad(angles).to(x.device)
    cos, sin = torch.cos(radians), torch.sin(radians)
    zeros = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def _random_blur(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Gaussian 5x5 with one sigma per batch, applied to a random half of the images.
    from torchvision.transforms.v2.functional import gaussian_blur

    low, high = BLUR_SIGMA_RANGE
    sigma = float(low + (high - low) * torch.rand(1, generator=generator))
    blurred = gaussian_blur(x, kernel_size=[BLUR_KERNEL, BLUR_KERNEL], sigma=[sigma, sigma])
    chosen = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device).view(-1, 1, 1, 1)
    return torch.where(chosen, blurred, x)


def _random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Mirror left-right (the W axis of (B, 1, H, W)) a random half: one fair coin per image.
    # A shirt mirrored is still a shirt; a mirrored 2 is no digit, so this suits Fashion-MNIST.
    chosen = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device).view(-1, 1, 1, 1)
    return torch.where(chosen, x.flip(-1), x)


# The steps of each name in names.AUGMENTATIONS, applied in order ("both" = rotate, then blur).
AUGMENTATION_STEPS: dict[str, tuple[Callable[[torch.Tensor, torch.Generator], torch.Tensor], ...]] = {
    "none": (),
    "blur": (_random_blur,),
    "rotate": (_random_rotation,),
    "both": (_random_rotation, _random_blur),
    "flip": (_random_flip,),
}
