"""bf16 autocast against fp32 on the CPU: training speed (A/B rounds) and test accuracy (seeds)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from lenet_core.config import TrialConfig
from lenet_core.data import ImageData, as_tensor
from lenet_core.train import build_trial_model, make_optimizer, torch_threads, train_one_epoch, trial_split
from study.bench.processes import alternate, median, steps_per_epoch
from study.bench.settings import ACCURACY_TOLERANCE_POINTS, TRAIN_BATCH, BenchSettings

PRECISIONS = ("fp32", "bf16")
# (model, batch size, torch threads: None = BenchSettings.precision_threads). The first is the
# issue's case; the others say when bf16 pays: one thread (a ResNet beside LeNets in an
# ensemble), LeNet-5's small convolutions at a small and a large batch.
PRECISION_CASES: tuple[tuple[str, int, int | None], ...] = (
    ("resnet18", TRAIN_BATCH, None),
    ("resnet18", TRAIN_BATCH, 1),
    ("lenet5", TRAIN_BATCH, 1),
    ("lenet5", 512, 1),
)


def timed_pass(
    data: ImageData, config: TrialConfig, images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor
) -> tuple[float, float]:
    """(seconds, mean loss) of one training pass over ``idx`` by a fresh model of ``config``."""
    model = build_trial_model(config)
    optimizer = make_optimizer(config, model.parameters())
    generator = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    loss, _ = train_one_epoch(
        model, optimizer, images, labels, idx, config=config, data=data, generator=generator
    )
    return time.perf_counter() - start, loss


def precision_case(
    data: ImageData, settings: BenchSettings, *, model: str, batch_size: int, threads: int
) -> dict[str, Any]:
    """Training images/s in fp32 and in bf16 autocast, A/B alternated after one warm-up each."""
    images = as_tensor(data.train_images)
    labels = as_tensor(data.train_labels)
    train_idx, _ = trial_split(data, TrialConfig(dataset=data.name))
    count = settings.resnet_images if model.startswith("resnet") else settings.lenet_images
    idx = torch.from_numpy(train_idx[:count].astype(np.int64))
    configs = {
        p: TrialConfig(dataset=data.name, model=model, batch_size=batch_size, precision=p, device="cpu")
        for p in PRECISIONS
    }
    with torch_threads(threads):
        for config in configs.values():  # warm-up: oneDNN builds its kernels on first use
            timed_pass(data, config, images, labels, idx[: 2 * batch_size])
        rounds = alternate(
            settings.precision_rounds,
            lambda: timed_pass(data, configs["fp32"], images, labels, idx),
            lambda: timed_pass(data, configs["bf16"], images, labels, idx),
        )
    fp32_s = median([a[0] for a, _ in rounds])
    bf16_s = median([b[0] for _, b in rounds])
    return {
        "model": model,
        "batch_size": batch_size,
        "threads": threads,
        "images": len(idx),
        "steps": steps_per_epoch(len(idx), batch_size),
        "rounds": len(rounds),
        "fp32_images_per_s": len(idx) / fp32_s,
        "bf16_images_per_s": len(idx) / bf16_s,
        "bf16_speedup": fp32_s / bf16_s,
        "fp32_loss": rounds[-1][0][1],
        "bf16_loss": rounds[-1][1][1],
    }


def precision_ab(data: ImageData, settings: BenchSettings) -> list[dict[str, Any]]:
    default = settings.precision_threads
    return [
        precision_case(data, settings, model=model, batch_size=batch, threads=threads or default)
        for model, batch, threads in PRECISION_CASES
    ]


def accuracy_ab(
    data: ImageData, *, settings: BenchSettings, model: str = "resnet18", say: Callable[[str], None]
) -> dict[str, Any]:
    """Test accuracy of ``model`` trained in fp32 and in bf16 over ``settings.seeds`` seeds for
    ``settings.epochs`` epochs, the ensemble ResNet's config otherwise, in this process.

    ``within_tolerance`` says only that the mean difference lies within the tolerance; whether
    bf16 is shown equivalent to fp32 is the paired TOST over seeds (``study.common.stats.tost``)
    with the tolerance as its margin: ``tost_p``, ``tost_margin_points``, ``equivalent`` and
    ``equivalence`` ("equivalent within ±0.5" or "not shown equivalent within ±0.5" points), with
    the 90% interval of the difference it rests on. Few seeds rarely show equivalence.
    """
    from lenet_core.train import train_trial
    from study.common.stats import tost  # pandas and scipy: only this section needs them

    accs: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for seed in range(settings.seeds):
        for precision in PRECISIONS if seed % 2 == 0 else PRECISIONS[::-1]:
            config = TrialConfig(
                dataset=data.name,
                model=model,
                epochs=settings.epochs,
                seed=seed,
                precision=precision,
                device="cpu",
                threads=settings.precision_threads,
            )
            result = train_trial(config, data)
            accs[precision].append(result.test_acc)
            seconds[precision].append(sum(row["seconds"] for row in result.history))
            say(f"  {model} seed {seed} {precision}: test accuracy {result.test_acc:.4f}")
    means = {p: float(np.mean(accs[p])) for p in PRECISIONS}
    difference = 100 * (means["bf16"] - means["fp32"])
    # paired over seeds (the same seed in both precisions), in points
    equivalence = tost(
        100 * np.asarray(accs["bf16"]), 100 * np.asarray(accs["fp32"]), ACCURACY_TOLERANCE_POINTS
    )
    return {
        "model": model,
        "dataset": data.name,
        "epochs": settings.epochs,
        "seeds": settings.seeds,
        "threads": settings.precision_threads,
        **{f"{p}_test_acc": accs[p] for p in PRECISIONS},
        **{f"{p}_mean": means[p] for p in PRECISIONS},
        **{f"{p}_training_s_mean": float(np.mean(seconds[p])) for p in PRECISIONS},
        "difference_points": difference,
        "tolerance_points": ACCURACY_TOLERANCE_POINTS,
        "within_tolerance": abs(difference) <= ACCURACY_TOLERANCE_POINTS,  # the point estimate only
        "tost_margin_points": ACCURACY_TOLERANCE_POINTS,
        "tost_p": equivalence["p"],
        "equivalent": equivalence["equivalent"],
        "equivalence": equivalence["verdict"] + " points",
        "difference_ci90_points": [equivalence["ci_low"], equivalence["ci_high"]],
    }
