"""The single-trial train function that every stage (train, tune, ensemble, sweeps) calls.

Read top to bottom: ``train_trial`` prepares the split and the model, runs the epochs with
``train_one_epoch`` and ``evaluate``, and returns a ``TrialResult``. It never prints: the
``report`` callback (called after every epoch) is how callers watch or stop it.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lenet_core.config import TrialConfig
from lenet_core.data import (
    ImageData,
    as_tensor,
    augment_batch,
    normalize_,
    stratified_split,
    stratified_subset,
    to_unit_float,
)
from lenet_core.errors import ConfigError
from lenet_core.models import build_model, count_parameters

EVAL_BATCH_SIZE = 2048  # images; inference holds no activations for backward, so go large
# oneDNN's convolutions (forward and, above all, backward) run about 1.35x faster on LeNet's
# small maps in channels-last layout than in NCHW (measured at batch 64, 1 thread).
MEMORY_FORMAT = torch.channels_last
DIVERGENCE_CHECK_EVERY = 32  # steps; a loss read forces a device sync, so not every step
# A mean training loss above ten times that of a uniform guess (ln 10 = 2.30 for 10 classes)
# means the weights blew up, even when saturating units keep the loss finite.
DIVERGED_LOSS = 10 * math.log(10)

# What ``report`` receives after each epoch; returning True stops the trial (status "stopped").
Report = Callable[[dict[str, Any]], bool | None]


@dataclass
class TrialResult:
    """Everything one trial produced; ``summary()`` is what goes into tables and JSON."""

    config: TrialConfig
    status: str  # "completed", "diverged" or "stopped" (the report callback asked to stop)
    history: list[dict[str, Any]]  # one row per epoch run
    val_loss: float
    val_acc: float
    best_val_acc: float
    test_loss: float
    test_acc: float
    seconds: float  # wall time of the whole trial
    images_per_s: float  # training images per second, over all epochs run
    parameters: int
    data_checksum: str
    versions: dict[str, str]
    state_dict: dict[str, torch.Tensor] = field(repr=False)

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    def summary(self) -> dict[str, Any]:
        """Config, metrics and provenance as plain JSON-ready values (no weights, no history)."""
        return {
            "status": self.status,
            "epochs_run": self.epochs_run,
            "val_loss": self.val_loss,
            "val_acc": self.val_acc,
            "best_val_acc": self.best_val_acc,
            "test_loss": self.test_loss,
            "test_acc": self.test_acc,
            "seconds": self.seconds,
            "images_per_s": self.images_per_s,
            "parameters": self.parameters,
            "seed": self.config.seed,
            "data_checksum": self.data_checksum,
            "versions": self.versions,
            "config": self.config.to_dict(),
        }


def library_versions() -> dict[str, str]:
    """Versions that decide whether a replay can match, read without importing the packages."""
    versions = {"python": platform.python_version()}
    for package in ("lenet-study", "torch", "torchvision", "numpy", "ray", "optuna"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but CUDA sees no GPU on this machine")
    return torch.device(name)


def trial_split(data: ImageData, config: TrialConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) into ``data.train_images`` for this config's seed."""
    train_idx, val_idx = stratified_split(
        data.train_labels, held_out_fraction=config.val_fraction, seed=config.seed
    )
    if config.train_fraction < 1.0:
        keep = stratified_subset(
            data.train_labels[train_idx], fraction=config.train_fraction, seed=config.seed
        )
        train_idx = train_idx[keep]
    return train_idx, val_idx


def make_optimizer(config: TrialConfig, params: Any) -> torch.optim.Optimizer:
    lr, wd = config.lr, config.weight_decay
    makers: dict[str, Callable[[], torch.optim.Optimizer]] = {
        "sgd": lambda: torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=wd),
        "adadelta": lambda: torch.optim.Adadelta(params, lr=lr, weight_decay=wd),
        "adagrad": lambda: torch.optim.Adagrad(params, lr=lr, weight_decay=wd),
        "rmsprop": lambda: torch.optim.RMSprop(params, lr=lr, momentum=config.momentum, weight_decay=wd),
        # fused: one kernel per step for all parameters instead of several per tensor
        "adam": lambda: torch.optim.Adam(params, lr=lr, weight_decay=wd, fused=True),
        "adamax": lambda: torch.optim.Adamax(params, lr=lr, weight_decay=wd),
        "adamw": lambda: torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=True),
    }
    return makers[config.optimizer]()


def build_trial_model(config: TrialConfig) -> nn.Module:
    """The config's model, initialized from its seed without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config.model, **config.model_options())
    return model.to(memory_format=MEMORY_FORMAT)


def train_trial(
    config: TrialConfig,
    data: ImageData,
    *,
    report: Report | None = None,
    train_indices: np.ndarray | None = None,
) -> TrialResult:
    """Train one model as ``config`` says and evaluate it on validation and test.

    ``train_indices`` (into ``data.train_images``) replaces the config's training split, e.g. a
    bootstrap resample for an ensemble member; the validation split stays the config's.
    """
    if config.dataset != data.name:
        raise ConfigError(f"config asks for dataset {config.dataset!r} but {data.name!r} was given")
    started = time.perf_counter()
    device = resolve_device(config.device)
    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        split_train, val_idx = trial_split(data, config)
        train_idx = split_train if train_indices is None else np.asarray(train_indices)
        images = as_tensor(data.train_images).to(device)  # (N, 28, 28) uint8, no copy on CPU
        labels = as_tensor(data.train_labels).to(device)  # (N,) int64
        train_idx_t = torch.from_numpy(train_idx.astype(np.int64)).to(device)
        val_images, val_labels = images[val_idx], labels[val_idx]
        model = build_trial_model(config).to(device)
        optimizer = make_optimizer(config, model.parameters())
        generator = torch.Generator().manual_seed(config.seed)  # batch order and augmentation

        test_images = as_tensor(data.test_images).to(device)
        test_labels = as_tensor(data.test_labels).to(device)
        history: list[dict[str, Any]] = []
        status = "completed"
        train_seconds = 0.0
        test_loss = test_acc = math.nan
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            train_loss, train_acc = train_one_epoch(
                model,
                optimizer,
                images,
                labels,
                train_idx_t,
                config=config,
                data=data,
                generator=generator,
            )
            seconds = time.perf_counter() - epoch_start
            train_seconds += seconds
            if len(val_idx):
                val_loss, val_acc = evaluate(model, val_images, val_labels, data=data)
            else:
                val_loss, val_acc = math.nan, math.nan
            if not math.isfinite(train_loss) or train_loss > DIVERGED_LOSS:
                status = "diverged"
            final = status == "diverged" or epoch == config.epochs
            if final or config.test_every_epoch:  # the last row always carries test metrics
                test_loss, test_acc = evaluate(model, test_images, test_labels, data=data)
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "train_acc": train_acc,
                    "val_loss": val_loss,
                    "val_acc": val_acc,
                    "test_loss": test_loss,
                    "test_acc": test_acc,
                    "seconds": seconds,
                    "images_per_s": len(train_idx) / seconds if seconds > 0 else math.nan,
                    "status": status if final else "running",
                }
            )
            if report is not None and report(history[-1]) and not final:
                status = "stopped"
                test_loss, test_acc = evaluate(model, test_images, test_labels, data=data)
            if status != "completed":
                break

        val_accs = [row["val_acc"] for row in history if math.isfinite(row["val_acc"])]
        return TrialResult(
            config=config,
            status=status,
            history=history,
            val_loss=history[-1]["val_loss"],
            val_acc=history[-1]["val_acc"],
            best_val_acc=max(val_accs, default=math.nan),
            test_loss=test_loss,
            test_acc=test_acc,
            seconds=time.perf_counter() - started,
            images_per_s=len(train_idx) * len(history) / train_seconds if train_seconds else 0.0,
            parameters=count_parameters(model),
            data_checksum=data.checksum,
            versions=library_versions(),
            state_dict={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        )
    finally:
        torch.set_num_threads(previous_threads)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    train_idx: torch.Tensor,
    *,
    config: TrialConfig,
    data: ImageData,
    generator: torch.Generator,
) -> tuple[float, float]:
    """One pass in a seeded random order; returns (mean loss, accuracy), loss NaN if diverged."""
    model.train()
    n = len(train_idx)
    order = train_idx[torch.randperm(n, generator=generator).to(train_idx.device)]
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), dtype=torch.long, device=images.device)
    seen = 0
    for step, start in enumerate(range(0, n, config.batch_size)):
        idx = order[start : start + config.batch_size]
        if len(idx) < 2 and seen:  # a 1-image tail batch breaks BatchNorm and adds nothing
            break
        x = to_unit_float(images[idx]).contiguous(memory_format=MEMORY_FORMAT)  # (B,1,28,28) in [0,1]
        if config.augment != "none":
            x = augment_batch(x, kind=config.augment, generator=generator)
        x = normalize_(x, mean=data.mean, std=data.std)
        y = labels[idx]
        logits = model(x)  # (B, 10)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(1) == y).sum()
        seen += len(idx)
        if step % DIVERGENCE_CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
            return math.nan, math.nan
    mean_loss = float(loss_sum) / max(seen, 1)
    return (mean_loss if math.isfinite(mean_loss) else math.nan), float(correct) / max(seen, 1)


@torch.inference_mode()
def predict_logits(
    model: nn.Module, images: torch.Tensor, *, data: ImageData, batch_size: int = EVAL_BATCH_SIZE
) -> torch.Tensor:
    """(N, 28, 28) uint8 images -> (N, 10) float logits on the CPU, in large batches."""
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(images), batch_size):
        x = to_unit_float(images[start : start + batch_size].to(device))
        chunks.append(model(normalize_(x, mean=data.mean, std=data.std)).float().cpu())
    return torch.cat(chunks) if chunks else torch.empty(0, 10)


def predict_proba(model: nn.Module, images: torch.Tensor, *, data: ImageData) -> torch.Tensor:
    """(N, 10) class probabilities (softmax of the logits)."""
    return predict_logits(model, images, data=data).softmax(dim=1)


def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, data: ImageData
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on a split."""
    logits = predict_logits(model, images, data=data)
    targets = labels.cpu()
    loss = float(F.cross_entropy(logits, targets)) if len(targets) else math.nan
    acc = float((logits.argmax(1) == targets).float().mean()) if len(targets) else math.nan
    return (loss if math.isfinite(loss) else math.nan), acc


def load_trial_model(config: TrialConfig, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild a trained model from its config and weights (e.g. read back from model.pt)."""
    model = build_trial_model(config)
    model.load_state_dict(state_dict)
    return model
