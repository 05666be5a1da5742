"""Shared fixtures: the bundled 8x8 digits (no download) and helpers to write IDX files."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest

from lenet_core.data import ImageData, load_dataset

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-5k"


@pytest.fixture(scope="session", autouse=True)
def private_home_and_ray_folders(tmp_path_factory):
    """Keep every test off the user's files and Ray cluster: a temporary HOME (Ray's auth token,
    the data cache) and RAY_TMPDIR (Ray's sessions and sockets), restored afterwards.

    Subprocesses inherit them. RAY_TMPDIR is short because Ray's socket paths must stay under
    108 characters.
    """
    home = tmp_path_factory.mktemp("home")
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    saved = {k: os.environ.get(k) for k in ("HOME", "RAY_TMPDIR", "LENET_STUDY_DATA")}
    os.environ.update(HOME=str(home), RAY_TMPDIR=ray_tmp, LENET_STUDY_DATA=str(home / "data"))
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def digits() -> ImageData:
    return load_dataset("digits")


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file (magic 0x0000 08 ndim, big-endian dims, data)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(
    folder: Path, *, n_train: int = 40, n_test: int = 20, gz: bool = False, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write the four MNIST-style IDX files of a small random dataset into ``folder``."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return arrays
