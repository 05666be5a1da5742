"""Shared fixtures: the bundled 8x8 digits (no download) and helpers to write IDX files."""

from __future__ import annotations

import gc
import gzip
import json
import os
import secrets
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from lenet_core.data import ImageData, load_dataset
from study.bench.settings import FASHION_SYSTEM_COPY

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the checkout: lenet_core/, study/, experiments/
SHARED_MNIST = PROJECT_ROOT.parent / "shared" / "data" / "mnist-5k"


@pytest.fixture(scope="session", autouse=True)
def private_home_and_ray_folders(tmp_path_factory):
    """Keep every test off the user's files and Ray cluster: a temporary HOME (Ray's auth token,
    the data cache) and RAY_TMPDIR (Ray's sessions and sockets), restored afterwards; and local
    Ray sessions without a dashboard (STUDY_DASHBOARD=0) where a test does not ask for one.

    Subprocesses inherit them. RAY_TMPDIR is short because Ray's socket paths must stay under
    108 characters.
    """
    home = tmp_path_factory.mktemp("home")
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    saved = {k: os.environ.get(k) for k in ("HOME", "RAY_TMPDIR", "LENET_STUDY_DATA", "STUDY_DASHBOARD")}
    os.environ.update(HOME=str(home), RAY_TMPDIR=ray_tmp, LENET_STUDY_DATA=str(home / "data"))
    # No Ray dashboard unless a test asks for it (--dashboard): ~1.5 s and a process per Ray start
    os.environ["STUDY_DASHBOARD"] = "0"
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(autouse=True)
def gc_left_unfrozen() -> Iterator[None]:
    """``study.cli.main()`` ends with gc.freeze(), right for a command about to exit; in the
    pytest process it would keep every object alive so far out of the collector for the rest of
    the run. A test that leaves it frozen is undone and fails (call main() in a subprocess, or
    patch ``study.cli.gc.freeze``)."""
    frozen = gc.get_freeze_count()
    yield
    if gc.get_freeze_count() > frozen:
        gc.unfreeze()
        pytest.fail("the test left gc.freeze() on in the pytest process (study.cli.main() calls it)")


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


FASHION = FASHION_SYSTEM_COPY  # Debian's dataset-fashion-mnist, where the bench looks for it
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")
FASHION_SUBSET = {"train": 6_000, "test": 1_000}  # images: real Fashion-MNIST, a tenth of it


@pytest.fixture(scope="session")
def fashion_subset(tmp_path_factory) -> Path:
    """The first 6,000 training and 1,000 test images of the real Fashion-MNIST, as gz IDX files:
    the bench's plumbing on real data at a tenth of the cost (what it measures is not under test)."""
    from lenet_core.data import IDX_FILES, find_idx_files, read_idx

    source = find_idx_files("fashion-mnist", FASHION, required=True)
    folder = tmp_path_factory.mktemp("fashion-subset")
    for key, stem in IDX_FILES.items():
        keep = FASHION_SUBSET["train" if key.startswith("train") else "test"]
        (folder / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(read_idx(source[key])[:keep]), 1))
    return folder


# --------------------------------------------------------------------------- Ray clusters


@pytest.fixture(scope="module")
def shared_ray() -> Iterator[None]:
    """One local Ray (loopback, no dashboard) for a module's in-process studies: each uses the
    running session, as with a notebook's ray.init(), instead of starting and stopping its own
    (~4 s each). Modules that test how a session starts, joins or ends do not use it."""
    from study.common.cluster import ClusterOptions, ray_session

    with ray_session(ClusterOptions(dashboard=False)):
        yield


LOOPBACK = "127.0.0.1"
# Every Ray test must finish well inside this; a hang fails the test instead of the suite.
RUN_LIMIT_S = 120.0


@pytest.fixture
def ray_env() -> Iterator[Path]:
    """Ray's files and unix sockets in a short temp dir (sockets need < 108 characters), HOME
    there too (Ray writes ~/.ray), and token auth on as Ray 2.60 has it by default."""
    from study.common.ray_adapter import reset_auth_token_cache

    folder = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            "HOME": str(folder),
            "RAY_TMPDIR": str(folder),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(16),
        }.items():
            env.setenv(name, value)
        # Ray caches the token in-process: drop whatever an earlier test left there.
        reset_auth_token_cache()
        yield folder
    reset_auth_token_cache()
    shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def two_node_cluster(*, cpus: int = 1, worker_env: dict[str, str] | None = None) -> Iterator[tuple[Any, Any]]:
    """A head and one worker node of ``cpus`` (logical) CPUs each, every port on 127.0.0.1 (as
    `ray start --node-ip-address 127.0.0.1` starts them); ``worker_env`` is added to the worker
    node's environment (its raylet and the processes it starts). Yields (cluster, worker node).
    Needs ``ray_env``."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": cpus, "node_ip_address": LOOPBACK, "include_dashboard": False},
    )
    try:
        extra = {"env_vars": worker_env} if worker_env else {}
        worker = cluster.add_node(num_cpus=cpus, node_ip_address=LOOPBACK, **extra)
        cluster.wait_for_nodes(timeout=60)
        yield cluster, worker
    finally:
        cluster.shutdown()  # only the processes of these two nodes


@pytest.fixture
def loopback_cluster(ray_env: Path) -> Iterator[tuple[Any, Any]]:
    """A head and one worker node, 1 CPU each, every port on 127.0.0.1; yields (cluster, worker)."""
    with two_node_cluster() as nodes:
        yield nodes


def wait_until(condition: Callable[[], Any], what: str, limit_s: float = RUN_LIMIT_S) -> Any:
    """Poll ``condition()`` until it returns something true, and return that; fail the test,
    naming ``what``, if it has not within ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"still waiting after {limit_s:g} s for {what}"
        time.sleep(0.05)


def run_bounded(work: Callable[[], Any], limit_s: float = RUN_LIMIT_S) -> Any:
    """``work()`` in a thread, failing the test if it has not returned within ``limit_s``."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit_s)
    assert not thread.is_alive(), f"still running after {limit_s:g} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def digits_study_identity(settings: Any) -> dict[str, Any]:
    """study.json's identity of a 5-epoch digits study over the default space run with ``settings``
    (a TuneSettings); of the data, study_identity reads only its name and checksum."""
    from lenet_core.config import TrialConfig
    from study.stages.tune.run import study_identity
    from study.stages.tune.space import default_space

    data = SimpleNamespace(name="digits", checksum="c")
    return study_identity(TrialConfig(dataset="digits", epochs=5), default_space(), settings, data)


def started_study(folder: Path, identity: dict[str, Any]) -> Path:
    """A tune folder as a study leaves it once started: its study.json and Ray's folder."""
    (folder / "ray").mkdir(parents=True)
    (folder / "study.json").write_text(json.dumps(identity))
    return folder


def last_trial_reports(tune_folder: Path) -> dict[str, dict[str, Any]]:
    """The last report of every trial that has one, by trial id, from the ``result.json`` files
    under ``tune_folder/ray``.

    Tune writes those files in a staging folder under Ray's temp dir and copies them here each time
    it saves its experiment state (every ``TUNE_GLOBAL_CHECKPOINT_S``, 10 s by default), so they lag.
    A study's copies are renamed into place (``study.common.tune_storage``); a folder copied by plain
    Tune, in place, may end in a partial line, which is skipped for the one before.
    """
    reports: dict[str, dict[str, Any]] = {}
    for path in tune_folder.glob("ray/*/result.json"):
        for line in reversed(path.read_text().splitlines()):
            try:
                row = json.loads(line)
            except ValueError:  # cut short by an in-place copy in progress
                continue
            reports[row["trial_id"]] = row
            break
    return reports
