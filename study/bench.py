"""`study bench`: lenet_core's training loop against the usual DataLoader loop, and Ray Tune's cost.

Every speed figure is a ratio against a baseline run in the same process, alternated A/B/A/B,
median of several rounds: these machines are noisy, absolute numbers are not comparable.
"""

from __future__ import annotations

import gzip
import resource
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lenet_core.config import TrialConfig
from lenet_core.data import IDX_FILES, ImageData, as_tensor, find_idx_files
from lenet_core.errors import StudyError
from lenet_core.train import (
    build_trial_model,
    evaluate,
    make_optimizer,
    resolve_device,
    train_one_epoch,
    trial_split,
)

REFERENCE_EVAL_BATCH = 1000  # what the PyTorch MNIST example uses for its test loader


@dataclass(frozen=True)
class BenchSettings:
    quick: bool
    device: str = "cpu"
    batch_sizes: tuple[int, ...] = (32, 64, 256)
    threads: int = 1

    @property
    def rounds(self) -> int:
        return 3 if self.quick else 5

    @property
    def images_per_round(self) -> int:  # training images per throughput measurement
        return 4096 if self.quick else 16384

    @property
    def study_trials(self) -> int:
        return 6 if self.quick else 16


# ------------------------------------------------------------------ the usual way


def extract_for_torchvision(data_dir: Path | None, into: Path) -> Path:
    """torchvision's FashionMNIST wants uncompressed files under ROOT/FashionMNIST/raw."""
    source = find_idx_files("fashion-mnist", data_dir, required=True) if data_dir else None
    if source is None:
        for folder in (Path("/usr/share/datasets/fashion-mnist"),):
            source = find_idx_files("fashion-mnist", folder, required=False)
            if source:
                break
    if source is None:
        raise StudyError(
            "bench needs Fashion-MNIST: apt-get install dataset-fashion-mnist, or "
            "pass --data-dir with its four IDX files"
        )
    raw = into / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_FILES.items():
        path = source[key]
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as src, open(raw / stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return into


def reference_loader(
    root: Path,
    *,
    train: bool,
    indices: np.ndarray,
    batch_size: int,
    mean: float,
    std: float,
    seed: int,
    shuffle: bool,
) -> torch.utils.data.DataLoader:
    import torchvision
    from torchvision import transforms

    dataset = torchvision.datasets.FashionMNIST(
        str(root),
        train=train,
        download=False,
        transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))]),
    )
    subset = torch.utils.data.Subset(dataset, indices.tolist())
    return torch.utils.data.DataLoader(
        subset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
        num_workers=0,
    )


def reference_model(
    config: TrialConfig, device: torch.device
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The same LeNet-5 and optimizer, built the usual way: NCHW layout, default optimizer."""
    from lenet_core.models import build_model

    torch.manual_seed(config.seed)
    model = build_model(config.model, **config.model_options()).to(device)
    optimizers = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    return model, optimizers[config.optimizer](model.parameters(), lr=config.lr)


def reference_train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
) -> tuple[int, float]:
    """The tutorial loop: per-sample PIL transforms, DataLoader, loss.item() every step."""
    model.train()
    seen, running_loss, correct = 0, 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        running_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    return seen, running_loss / max(seen, 1)


def reference_eval(
    model: torch.nn.Module, loader: torch.utils.data.DataLoader, device: torch.device
) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
            total += len(y)
    return correct / max(total, 1)


# ------------------------------------------------------------------ measurements


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def throughput(data: ImageData, root: Path, settings: BenchSettings) -> list[dict[str, Any]]:
    """Training images/s, ours vs reference, alternating A/B each round, per batch size."""
    device = resolve_device(settings.device)
    rows = []
    for batch_size in settings.batch_sizes:
        config = TrialConfig(
            dataset=data.name, batch_size=batch_size, device=settings.device, threads=settings.threads
        )
        train_idx, _ = trial_split(data, config)
        subset = train_idx[: settings.images_per_round]
        images = as_tensor(data.train_images).to(device)
        labels = as_tensor(data.train_labels).to(device)
        subset_t = torch.from_numpy(subset).to(device)
        loader = reference_loader(
            root,
            train=True,
            indices=subset,
            batch_size=batch_size,
            mean=data.mean,
            std=data.std,
            seed=0,
            shuffle=True,
        )
        ours, reference = [], []
        for _ in range(settings.rounds):
            model = build_trial_model(config).to(device)
            opt = make_optimizer(config, model.parameters())
            gen = torch.Generator().manual_seed(0)
            start = time.perf_counter()
            train_one_epoch(model, opt, images, labels, subset_t, config=config, data=data, generator=gen)
            ours.append(len(subset) / (time.perf_counter() - start))
            model, opt = reference_model(config, device)
            start = time.perf_counter()
            reference_train(model, opt, loader, device)
            reference.append(len(subset) / (time.perf_counter() - start))
        rows.append(
            {
                "batch_size": batch_size,
                "lenet_core_images_per_s": statistics.median(ours),
                "reference_images_per_s": statistics.median(reference),
                "ratio": statistics.median(ours) / statistics.median(reference),
                "rounds": settings.rounds,
            }
        )
    return rows


def full_epoch(data: ImageData, root: Path, settings: BenchSettings, batch_size: int = 64) -> dict[str, Any]:
    """One whole epoch of the training split plus validation, both ways (one round each)."""
    device = resolve_device(settings.device)
    config = TrialConfig(
        dataset=data.name, batch_size=batch_size, device=settings.device, threads=settings.threads
    )
    train_idx, val_idx = trial_split(data, config)
    images = as_tensor(data.train_images).to(device)
    labels = as_tensor(data.train_labels).to(device)
    model = build_trial_model(config).to(device)
    opt = make_optimizer(config, model.parameters())
    train_t = torch.from_numpy(train_idx).to(device)
    ours = _timed(
        lambda: (
            train_one_epoch(
                model,
                opt,
                images,
                labels,
                train_t,
                config=config,
                data=data,
                generator=torch.Generator().manual_seed(0),
            ),
            evaluate(model, images[val_idx], labels[val_idx], data=data),
        )
    )
    model, opt = reference_model(config, device)
    train_loader = reference_loader(
        root,
        train=True,
        indices=train_idx,
        batch_size=batch_size,
        mean=data.mean,
        std=data.std,
        seed=0,
        shuffle=True,
    )
    val_loader = reference_loader(
        root,
        train=True,
        indices=val_idx,
        batch_size=REFERENCE_EVAL_BATCH,
        mean=data.mean,
        std=data.std,
        seed=0,
        shuffle=False,
    )
    reference = _timed(
        lambda: (reference_train(model, opt, train_loader, device), reference_eval(model, val_loader, device))
    )
    return {
        "batch_size": batch_size,
        "train_images": len(train_idx),
        "val_images": len(val_idx),
        "lenet_core_seconds": ours,
        "reference_seconds": reference,
        "ratio": reference / ours,
    }


class CpuSampler:
    """Samples system-wide CPU use every ``interval`` seconds in a background thread."""

    def __init__(self, interval: float = 0.5) -> None:
        import psutil

        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._psutil = psutil
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._psutil.cpu_percent(interval=None)
        while not self._stop.wait(self.interval):
            self.samples.append((time.time(), self._psutil.cpu_percent(interval=None)))

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def mean_between(self, start: float, end: float) -> float:
        inside = [p for t, p in self.samples if start + self.interval <= t <= end]
        return float(np.mean(inside)) if inside else float("nan")


def tune_overhead(data: ImageData, settings: BenchSettings) -> dict[str, Any]:
    """A real 2-at-a-time study: overhead per trial, time to first step, CPU use, memory."""
    from study.common.cluster import ClusterOptions
    from study.tune.run import TuneSettings, run_study
    from study.tune.space import parse_space

    space = parse_space(
        {
            "space": {
                "optimizer": {"choices": ["adam", "sgd"]},
                "lr": {"low": 1e-3, "high": 1e-1, "log": True},
            }
        },
        source="bench space",
    )
    base = TrialConfig(
        dataset=data.name,
        epochs=1,
        train_fraction=0.25 if settings.quick else 0.5,
        threads=1,
        seed=0,
        device=settings.device,
    )
    cluster = ClusterOptions(
        cpus_per_trial=1,
        max_concurrent=2,
        gpus=1 if settings.device == "cuda" else 0,
        gpus_per_trial=0.5 if settings.device == "cuda" else None,
    )
    with tempfile.TemporaryDirectory(prefix="study-bench-") as tmp, CpuSampler() as cpu:
        wall_start = time.time()
        trials, epochs, _ = run_study(
            base=base,
            space=space,
            settings=TuneSettings(trials=settings.study_trials, scheduler="none"),
            cluster=cluster,
            data=data,
            out=Path(tmp),
            name="bench",
            resume=False,
            say=lambda *_: None,
            probe_memory=True,
        )
        wall = time.time() - wall_start
    first, last = trials["start_time"].min(), trials["end_time"].max()
    busy = last - first
    # time each trial spent inside its own function (training, evaluation, reporting)
    in_trial = float((trials["end_time"] - trials["start_time"]).sum())
    training = float(epochs["seconds"].sum())
    concurrency = 2
    return {
        "trials": len(trials),
        "concurrency": concurrency,
        "trials_wall_s": busy,
        "summed_training_s": training,
        "summed_in_trial_s": in_trial,
        "overhead_per_trial_s": (busy * concurrency - in_trial) / len(trials),
        "overhead_incl_evaluation_per_trial_s": (busy * concurrency - training) / len(trials),
        "study_start_to_first_step_s": first - wall_start,
        "study_wall_s_with_ray_start": wall,
        "cpu_busy_percent_during_trials": cpu.mean_between(first, last),
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_rss_mb": float(trials["worker_rss_mb"].max()),
        "worker_uss_mb_mean": float(trials["worker_uss_mb"].mean()),
        "data_private_mb_per_trial_max": float(trials["data_private_mb"].max()),
        "data_zero_copy_all_trials": bool(trials["data_zero_copy"].all()),
        "dataset_mb": (data.train_images.nbytes + data.test_images.nbytes) / 2**20,
    }


def run_bench(
    *, settings: BenchSettings, data_dir: Path | None, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Every figure of the benchmark, as one JSON-ready dict."""
    from lenet_core.data import load_dataset
    from lenet_core.train import library_versions

    data = load_dataset("fashion-mnist", data_dir=data_dir)
    previous = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="study-bench-ref-") as tmp:
            root = extract_for_torchvision(data_dir, Path(tmp))
            say("1/3 training throughput, lenet_core vs DataLoader reference (A/B rounds)")
            rows = throughput(data, root, settings)
            say("2/3 one full epoch with validation, both ways")
            epoch = full_epoch(data, root, settings)
    finally:
        torch.set_num_threads(previous)
    say("3/3 Ray Tune study: overhead, CPU use, memory")
    study = tune_overhead(data, settings)
    return {
        "quick": settings.quick,
        "device": settings.device,
        "threads": settings.threads,
        "dataset": data.name,
        "data_checksum": data.checksum,
        "versions": library_versions(),
        "throughput": rows,
        "full_epoch": epoch,
        "tune": study,
    }
