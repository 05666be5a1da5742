"""IDX files, the format of MNIST and Fashion-MNIST: where they are found, how they are read and
checked, and the torchvision download that fetches them when no copy is found.

Everything here reads or fetches raw uint8 arrays; building an ``ImageData`` from them (checksum,
pixel statistics, read-only views) is the package's job (``lenet_core.data``).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lenet_core.errors import DataError
from lenet_core.names import TORCHVISION_CLASSES

# Where an installed copy may already sit when the caller passes no data_dir (Debian's package).
SYSTEM_COPIES = {"fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),)}

# The four files of a dataset, keyed by the ImageData field each one fills (in that order).
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
ARRAY_NAMES = tuple(IDX_FILES)  # ImageData's array fields, the order every array tuple here uses
IMAGE_SIDE = 28  # pixels; every dataset here is brought to 28x28
IDX_UBYTE = 0x08  # IDX type code for unsigned bytes, the only one MNIST-style files use

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # in ARRAY_NAMES order


def candidate_folders(name: str, folder: Path) -> list[Path]:
    """Where the files of ``name`` may sit under ``folder``: a torchvision root, its raw folder,
    or the folder itself."""
    tv_folder = TORCHVISION_CLASSES[name]
    return [folder / tv_folder / "raw", folder / "raw", folder]


def find_idx_files(name: str, folder: Path, *, required: bool) -> dict[str, Path] | None:
    """The four IDX files of ``name`` under ``folder`` in either layout, or None / DataError."""
    for candidate in candidate_folders(name, folder):
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
    looked = ", ".join(str(p) for p in candidate_folders(name, folder))
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
    """One split's (images, int64 labels), refused unless they are 28x28 images with one 0-9
    label each: a wrong file found by name must fail here, not as a shape error mid-training."""
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


def decode_idx_files(files: dict[str, Path]) -> Arrays:
    """The four checked arrays of ``files`` (keys of ``IDX_FILES``), in ARRAY_NAMES order."""
    train_images, train_labels = _checked_split(files["train_images"], files["train_labels"])
    test_images, test_labels = _checked_split(files["test_images"], files["test_labels"])
    return train_images, train_labels, test_images, test_labels


def offline_message(name: str, looked: Sequence[Path], why: str) -> str:
    """The one-line error when no copy of ``name`` was found and none could be downloaded: what
    was searched, why no download, and what the caller can pass instead."""
    where = f"looked in {', '.join(str(p) for p in looked)}" if looked else "no folder to look in"
    return (
        f"{name}: no local copy ({where}) and {why}; pass data_dir= a folder holding the four IDX "
        f"files ({', '.join(IDX_FILES.values())}, optionally .gz), or load the 'digits' dataset, "
        f"which ships with scikit-learn and needs no download"
    )


def download_with_torchvision(name: str, folder: Path, *, looked: Sequence[Path]) -> None:
    """Let torchvision fetch the IDX files of ``name`` into ``folder``; one-line error when offline
    (``looked``: the folders searched before, for that error)."""
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, TORCHVISION_CLASSES[name])
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            dataset_class(root=str(folder), train=train, download=True)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError, ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(offline_message(name, looked, f"the download failed ({reason})")) from exc
