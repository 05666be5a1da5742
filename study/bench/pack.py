"""`study bench --pack`: K LeNet-5s trained as one pack against the same K trained one after another.

Both sides train the same K models (the study's default LeNet-5 and Adam, batch TRAIN_BATCH,
seeds 0..K-1, each with its own batch order) for one pass over the same ``pack_images`` training
images: the separate side with ``train_one_epoch``, one model after another, the packed side with
``lenet_core.packed.train_packed_epoch``, all K in one vectorized step. A round runs both, the side
that goes first alternating; each K reports the medians of its rounds as training images per second
summed over the K models (K x images / seconds), so K = 1 compares one model either way and the
ratio column is the packing gain. CPU time is recorded beside wall time: on a shared machine it
counts only the time this process ran. Runs unchanged on CUDA (``--device cuda``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from lenet_core.config import TrialConfig
from lenet_core.data import ImageData, as_tensor
from lenet_core.packed import Lane, PackedLeNet, train_packed_epoch
from lenet_core.train import (
    build_trial_model,
    make_optimizer,
    resolve_device,
    torch_threads,
    train_one_epoch,
    trial_split,
)
from study.bench.processes import alternate, median, steps_per_epoch
from study.bench.settings import TRAIN_BATCH, BenchSettings


def pack_configs(data: ImageData, settings: BenchSettings, k: int) -> list[TrialConfig]:
    """K members of a seed ensemble of the default LeNet-5: they differ by seed only."""
    return [
        TrialConfig(dataset=data.name, batch_size=TRAIN_BATCH, device=settings.device, threads=0, seed=seed)
        for seed in range(k)
    ]


def _timed(device: torch.device, work: Callable[[], list[float]]) -> dict[str, Any]:
    """Wall and CPU seconds of ``work`` (which returns the training losses it reached)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    losses = work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "losses": losses}


def pack_row(data: ImageData, settings: BenchSettings, k: int) -> dict[str, Any]:
    """Packed against separate training of K models: medians over alternated rounds, after one
    untimed round on two batches (first calls build oneDNN's kernels for each K's shapes, and the
    first optimizer step imports torch._dynamo)."""
    configs = pack_configs(data, settings, k)
    train_idx, _ = trial_split(data, configs[0])
    warm = pack_sides(data, settings, configs, train_idx[: 2 * TRAIN_BATCH])
    alternate(1, *warm)
    packed, separate = pack_sides(data, settings, configs, train_idx[: settings.pack_images])
    rounds = alternate(settings.pack_rounds, packed, separate)
    images = min(len(train_idx), settings.pack_images)
    trained = k * images  # training images, counted per model
    packed_runs, separate_runs = [p for p, _ in rounds], [s for _, s in rounds]

    def medians(key: str) -> tuple[float, float]:  # (packed, separate)
        return median([r[key] for r in packed_runs]), median([r[key] for r in separate_runs])

    wall, cpu = medians("wall_s"), medians("cpu_s")
    return {
        "k": k,
        "images_per_model": images,
        "separate_steps": k * steps_per_epoch(images, TRAIN_BATCH),
        "packed_steps": steps_per_epoch(images, TRAIN_BATCH),
        "separate_images_per_s": trained / wall[1],
        "packed_images_per_s": trained / wall[0],
        "speedup": wall[1] / wall[0],
        "speedup_cpu_time": cpu[1] / cpu[0] if cpu[0] > 0 else float("nan"),
        "rounds": len(rounds),
        "separate_walls_s": [r["wall_s"] for r in separate_runs],
        "packed_walls_s": [r["wall_s"] for r in packed_runs],
        # the same models, seeds and images: their losses after the pass agree to rounding
        "separate_train_loss_mean": float(np.mean(separate_runs[-1]["losses"])),
        "packed_train_loss_mean": float(np.mean(packed_runs[-1]["losses"])),
    }


def pack_sides(
    data: ImageData, settings: BenchSettings, configs: list[TrialConfig], indices: np.ndarray
) -> tuple[Callable[[], dict[str, Any]], Callable[[], dict[str, Any]]]:
    """(packed, separate): each trains fresh models of ``configs`` for one pass over ``indices``
    and returns its wall and CPU seconds and the models' training losses."""
    device = resolve_device(settings.device)
    subset = torch.from_numpy(indices.astype(np.int64)).to(device)
    images = as_tensor(data.train_images).to(device)
    labels = as_tensor(data.train_labels).to(device)

    def fresh_lanes() -> list[Lane]:
        lanes = []
        for config in configs:
            model = build_trial_model(config).to(device)
            generator = torch.Generator().manual_seed(config.seed)
            lanes.append(Lane(config, model, make_optimizer(config, model.parameters()), generator, subset))
        return lanes

    def separate() -> dict[str, Any]:
        lanes = fresh_lanes()  # built outside the clock, as the loop section builds its models

        def work() -> list[float]:
            return [
                train_one_epoch(
                    lane.model,
                    lane.optimizer,
                    images,
                    labels,
                    subset,
                    config=lane.config,
                    data=data,
                    generator=lane.generator,
                )[0]
                for lane in lanes
            ]

        return _timed(device, work)

    def packed() -> dict[str, Any]:
        lanes = fresh_lanes()

        def work() -> list[float]:  # stacking the K models is part of the packed side's cost
            pack = PackedLeNet([lane.model for lane in lanes])
            return [loss for loss, _ in train_packed_epoch(pack, lanes, images, labels, data=data)]

        return _timed(device, work)

    return packed, separate


def pack_throughput(data: ImageData, settings: BenchSettings, say: Callable[[str], None]) -> dict[str, Any]:
    """One row per K in ``settings.pack_sizes``, at ``settings.threads`` torch threads."""
    rows = []
    with torch_threads(settings.threads):
        for k in settings.pack_sizes:
            rows.append(pack_row(data, settings, k))
            row = rows[-1]
            say(
                f"  K={k:2d}: packed {row['packed_images_per_s']:,.0f} images/s, separate "
                f"{row['separate_images_per_s']:,.0f}: {row['speedup']:.2f}x"
            )
    return {
        "rows": rows,
        "threads": settings.threads,
        "device": settings.device,
        "batch_size": TRAIN_BATCH,
        "model": "lenet5 modern (relu, max), adam 1e-3",
    }
