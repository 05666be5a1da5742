"""The single-trial train function that every stage (train, tune, ensemble, sweeps) calls.

Read top to bottom: ``train_trial`` prepares the split and the model, runs the epochs with
``train_one_epoch`` and ``evaluate``, and returns a ``TrialResult``. It never prints: the
``report`` callback (called after every epoch) is how callers watch or stop it. All inference
(``predict_logits``, ``model_features``, and so ``evaluate``) goes through one batched loop.
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
from collections.abc import Callable, Iterator
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
from lenet_core.status import Status

# Inference batch (images) by device: a GPU wants large batches; on CPU a batch whose activations
# stay in cache wins. LeNet-5 over the 10,000 Fashion-MNIST test images on 1 thread took 0.25 s
# at 128-512 against 0.60 s at 2048, and ResNet-18 was faster at 256 too (measured on this CPU).
EVAL_BATCH_SIZES = {"cpu": 256}
EVAL_BATCH_SIZE_DEFAULT = 2048  # cuda and the rest: no activations kept for backward, so go large
# oneDNN's convolutions (forward and, above all, backward) run about 1.35x faster on LeNet's
# small maps in channels-last layout than in NCHW (measured at batch 64, 1 thread).
MEMORY_FORMAT = torch.channels_last
DIVERGENCE_CHECK_EVERY = 32  # steps; a loss read forces a device sync, so not every step
# A mean training loss above ten times that of a uniform guess (ln 10 = 2.30 for 10 classes)
# means the weights blew up, even when saturating units keep the loss finite.
DIVERGED_LOSS = 10 * math.log(10)
# A run whose kept weights score no better on validation than always answering the most frequent
# validation class, plus this margin (2 points of accuracy), learned nothing usable: "collapsed".
# The margin absorbs the few points a near-constant predictor gains by luck on a finite split.
COLLAPSE_MARGIN = 0.02
# autocast dtype per TrialConfig.precision; fp32 runs without autocast.
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# What ``report`` receives after each epoch; returning True stops the trial (Status.STOPPED).
Report = Callable[[dict[str, Any]], bool | None]


@dataclass
class TrialResult:
    """Everything one trial produced; ``summary()`` is what goes into tables and JSON.

    The metrics (val_*, test_*) and ``state_dict`` are those of the kept weights: the best
    validation epoch's (``best_epoch``), or the last epoch's when there was no validation split or
    the run diverged.
    """

    config: TrialConfig
    # COMPLETED; COLLAPSED (ran, but validation accuracy near always guessing the majority class);
    # DIVERGED (the loss blew up); STOPPED (the report callback asked to stop). A StrEnum: equal
    # to its text, and written as that text by json, csv and pyarrow.
    status: Status
    history: list[dict[str, Any]]  # one row per epoch run
    val_loss: float
    val_acc: float
    best_val_acc: float
    test_loss: float
    test_acc: float
    best_epoch: int  # the epoch whose weights were kept (1-based)
    stopped_early: bool  # patience ended the run before the last of its epochs
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
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
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
        raise ConfigError(
            "device 'cuda' asked for, but CUDA sees no GPU on this machine; use 'cpu' or 'auto'"
        )
    return torch.device(name)


def check_precision(precision: str, device: torch.device) -> None:
    # CPU autocast to float16 exists but is slow and has no gradient scaler worth the name.
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"precision 'fp16' needs CUDA (the device is {device.type}); use 'bf16' or 'fp32'")


def precision_autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The autocast context for ``precision`` on ``device``; fp32 runs without one."""
    check_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def trial_split(data: ImageData, config: TrialConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) into ``data.train_images``, drawn from ``split_seed``.

    ``config.seed`` plays no part, so every seed of a study trains and selects on the same split.
    Splits are cached in ``data.cache_dir``, the folder ``load_dataset`` was given or resolved
    (None: not cached), so the next trial skips importing scikit-learn.
    """
    cache = data.cache_dir
    train_idx, val_idx = stratified_split(
        data.train_labels, held_out_fraction=config.val_fraction, seed=config.split_seed, cache_dir=cache
    )
    if config.train_fraction < 1.0:
        keep = stratified_subset(
            data.train_labels[train_idx],
            fraction=config.train_fraction,
            seed=config.split_seed,
            cache_dir=cache,
        )
        train_idx = train_idx[keep]
    return train_idx, val_idx


OPTIMIZER_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adadelta": torch.optim.Adadelta,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
    "adam": torch.optim.Adam,
    "adamax": torch.optim.Adamax,
    "adamw": torch.optim.AdamW,
}
# fused: one kernel per step for all parameters instead of several per tensor
FUSED_OPTIMIZERS = ("adam", "adamw")


def make_optimizer(config: TrialConfig, params: Any) -> torch.optim.Optimizer:
    """The config's optimizer; hyperparameters the config leaves unset (None) keep PyTorch's defaults."""
    options: dict[str, Any] = {"lr": config.lr}
    if config.weight_decay is not None:
        options["weight_decay"] = config.weight_decay
    if config.momentum is not None:  # TrialConfig allows it only for sgd and rmsprop
        options["momentum"] = config.momentum
    if config.optimizer in FUSED_OPTIMIZERS:
        options["fused"] = True
    return OPTIMIZER_CLASSES[config.optimizer](params, **options)


# onecycle: torch's OneCycleLR with its default shape, stepped once per epoch over epochs + 1 steps:
# like cosine's 0, its floor (lr / 2.5e5) falls on the epoch after the cap, so every epoch trains.
# Momentum (or Adam's beta1) is not cycled: that would give SGD without momentum a momentum of
# 0.85-0.95, a second change hidden inside the schedule.
ONECYCLE = {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4, "anneal_strategy": "cos"}


def lr_factor(config: TrialConfig, epoch: int) -> float:
    """The multiple of ``config.lr`` that epoch ``epoch`` (from 1) trains at, for every schedule
    but onecycle (torch's OneCycleLR, see ``make_scheduler``).

    Warm-up W = ``warmup_epochs``: epoch e <= W trains at e / (W + 1). After it, with
    t = e - W - 1 and T = epochs - W (the scheduled epochs): constant 1; step
    ``lr_gamma ** (t // step_size)`` (step_size: ``lr_step_size``, default ceil(T / 3));
    cosine (1 + cos(pi t / T)) / 2, which would reach 0 one epoch after the cap.
    """
    warmup = config.warmup_epochs
    if epoch <= warmup:
        return epoch / (warmup + 1)
    t, scheduled = epoch - warmup - 1, config.scheduled_epochs()
    if config.lr_schedule == "step":
        return config.lr_gamma ** (t // config.step_size())
    if config.lr_schedule == "cosine":
        return (1 + math.cos(math.pi * t / scheduled)) / 2
    return 1.0


def make_scheduler(
    config: TrialConfig, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The lr schedule over the run's budget, stepped once per epoch (after it); None when the lr
    never changes (constant, no warm-up).

    Every schedule is defined over ``config.epochs``, the cap, whatever stops the run sooner
    (patience, ASHA): epoch e trains at ``lr * lr_factor(config, e)``, or, for onecycle, at
    torch's OneCycleLR(max_lr=lr, total_steps=epochs + 1) value at step e - 1 (ONECYCLE settings):
    up from lr/25 to lr over the first 30% of the steps, then cosine down towards lr/2.5e5.
    """
    if config.lr_schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=config.epochs + 1, cycle_momentum=False, **ONECYCLE
        )
    if config.lr_schedule == "constant" and not config.warmup_epochs:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda index: lr_factor(config, index + 1))


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def build_trial_model(config: TrialConfig) -> nn.Module:
    """The config's model, initialized from its seed without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config.model, **config.model_options())
    return model.to(memory_format=MEMORY_FORMAT)


def majority_fraction(labels: np.ndarray | torch.Tensor) -> float:
    """Accuracy of always answering the most frequent label."""
    counts = np.bincount(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels))
    return float(counts.max() / counts.sum()) if counts.sum() else math.nan


def collapse_threshold(val_labels: np.ndarray | torch.Tensor) -> float:
    """The validation accuracy at or below which a run learned nothing: always answering the
    majority class, plus COLLAPSE_MARGIN."""
    return majority_fraction(val_labels) + COLLAPSE_MARGIN


def is_collapsed(val_acc: float, val_labels: np.ndarray | torch.Tensor) -> bool:
    return val_acc <= collapse_threshold(val_labels)


@dataclass(frozen=True)
class EpochScore:
    """One epoch's validation metrics (NaN without a validation split)."""

    epoch: int
    val_loss: float
    val_acc: float


class BestEpoch:
    """The best validation epoch so far and a copy of its weights, for early stopping and restoring."""

    def __init__(self) -> None:
        self.score: EpochScore | None = None
        self._state: dict[str, torch.Tensor] = {}

    def offer(self, score: EpochScore, model: nn.Module) -> None:
        """Keep ``model``'s weights if ``score`` beats the best validation accuracy so far."""
        if self.score is not None and not score.val_acc > self.score.val_acc:
            return
        self.score = score
        # A copy on the model's device: 61,706 floats for LeNet-5, nothing next to an epoch.
        self._state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def patience_spent(self, patience: int, epoch: int) -> bool:
        """Whether ``patience`` (> 0) epochs up to ``epoch`` have passed without improvement."""
        return patience > 0 and self.score is not None and epoch - self.score.epoch >= patience

    def restore(self, model: nn.Module) -> EpochScore | None:
        """Load the best weights into ``model``; None (model untouched) if no epoch was scored."""
        if self.score is not None:
            model.load_state_dict(self._state)
        return self.score


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's CPU thread count set to ``threads`` (0: leave it) for the block, then put back."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


Split = tuple[torch.Tensor, torch.Tensor]  # (images (N, 28, 28) uint8, labels (N,) int64)
Evaluate = Callable[[Split], tuple[float, float]]  # a split -> (mean loss, accuracy) of the model


@dataclass
class RunState:
    """One run's state from epoch to epoch, and its verdicts: the one piece of code that ends an
    epoch, stops a run and builds its TrialResult, for ``train_trial`` and every member of a
    ``lenet_core.packed`` pack alike."""

    config: TrialConfig
    train_size: int  # training images an epoch goes through
    best: BestEpoch = field(default_factory=BestEpoch)
    history: list[dict[str, Any]] = field(default_factory=list)
    status: Status = Status.COMPLETED
    stopped_early: bool = False
    kept: EpochScore = field(default_factory=lambda: EpochScore(0, math.nan, math.nan))
    current: EpochScore = field(default_factory=lambda: EpochScore(0, math.nan, math.nan))
    test_loss: float = math.nan
    test_acc: float = math.nan
    train_seconds: float = 0.0
    done: bool = False  # the run has ended: its last epoch, divergence, patience or a stop

    def end_epoch(
        self,
        epoch: int,
        model: nn.Module,
        *,
        lr: float,
        train_loss: float,
        train_acc: float,
        seconds: float,
        evaluate_on: Evaluate,
        val: Split,
        test: Split,
    ) -> dict[str, Any]:
        """Validate, keep the best epoch, judge (diverged, patience, last epoch, collapsed), test
        when the run ends (or every epoch with test_every_epoch) and append the history row."""
        config = self.config
        self.train_seconds += seconds
        val_labels = val[1]
        val_loss, val_acc = evaluate_on(val) if len(val_labels) else (math.nan, math.nan)
        self.current = EpochScore(epoch, val_loss, val_acc)
        if math.isfinite(val_acc):
            self.best.offer(self.current, model)
        diverged = not math.isfinite(train_loss) or train_loss > DIVERGED_LOSS
        self.stopped_early = (
            not diverged and epoch < config.epochs and self.best.patience_spent(config.patience, epoch)
        )
        final = diverged or self.stopped_early or epoch == config.epochs
        if final:
            # A diverged run keeps its last weights: its metrics should show the failure.
            self.kept = self.current if diverged else (self.best.restore(model) or self.current)
            self.status = Status.DIVERGED if diverged else _ended_status(self.kept, val_labels)
        if final or config.test_every_epoch:  # the last row always carries test metrics
            self.test_loss, self.test_acc = evaluate_on(test)
        self.history.append(
            {
                "epoch": epoch,
                "lr": lr,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "test_loss": self.test_loss,
                "test_acc": self.test_acc,
                "seconds": seconds,
                "images_per_s": self.train_size / seconds if seconds > 0 else math.nan,
                "status": self.status if final else Status.RUNNING,
            }
        )
        self.done = final
        return self.history[-1]

    def stop(self, model: nn.Module, *, evaluate_on: Evaluate, test: Split) -> None:
        """A report asked the run to stop: keep its best epoch's weights and test them."""
        self.status = Status.STOPPED
        self.kept = self.best.restore(model) or self.current
        self.test_loss, self.test_acc = evaluate_on(test)
        self.done = True

    def result(self, model: nn.Module, *, data: ImageData, seconds: float) -> TrialResult:
        val_accs = [row["val_acc"] for row in self.history if math.isfinite(row["val_acc"])]
        return TrialResult(
            config=self.config,
            status=self.status,
            history=self.history,
            val_loss=self.kept.val_loss,
            val_acc=self.kept.val_acc,
            best_val_acc=max(val_accs, default=math.nan),
            test_loss=self.test_loss,
            test_acc=self.test_acc,
            best_epoch=self.kept.epoch,
            stopped_early=self.stopped_early,
            seconds=seconds,
            images_per_s=(
                self.train_size * len(self.history) / self.train_seconds if self.train_seconds else 0.0
            ),
            parameters=count_parameters(model),
            data_checksum=data.checksum,
            versions=library_versions(),
            state_dict={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        )


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

    The run ends after ``epochs``, when the loss diverges, after ``patience`` epochs without a
    better validation accuracy, or when ``report`` returns True. Except after divergence, the best
    validation epoch's weights are then restored and tested. History rows carry Status.RUNNING
    but the last one of a run that was not stopped, which carries the final status; that row's
    test metrics are those of the kept weights.
    """
    if config.dataset != data.name:
        raise ConfigError(f"config asks for dataset {config.dataset!r} but {data.name!r} was given")
    started = time.perf_counter()
    device = resolve_device(config.device)
    check_precision(config.precision, device)
    with torch_threads(config.threads):
        split_train, val_idx = trial_split(data, config)
        train_idx = split_train if train_indices is None else np.asarray(train_indices)
        images = as_tensor(data.train_images).to(device)  # (N, 28, 28) uint8, no copy on CPU
        labels = as_tensor(data.train_labels).to(device)  # (N,) int64
        train_idx_t = torch.from_numpy(train_idx.astype(np.int64)).to(device)
        val_images, val_labels = images[val_idx], labels[val_idx]
        test_images = as_tensor(data.test_images).to(device)
        test_labels = as_tensor(data.test_labels).to(device)
        model = build_trial_model(config).to(device)
        optimizer = make_optimizer(config, model.parameters())
        scheduler = make_scheduler(config, optimizer)
        scaler = make_grad_scaler(config.precision, device)
        generator = torch.Generator().manual_seed(config.seed)  # batch order and augmentation

        def evaluate_on(split: Split) -> tuple[float, float]:
            return evaluate(model, split[0], split[1], data=data, precision=config.precision)

        run = RunState(config=config, train_size=len(train_idx))
        val, test = (val_images, val_labels), (test_images, test_labels)
        for epoch in range(1, config.epochs + 1):
            lr = optimizer.param_groups[0]["lr"]  # the lr this epoch trains with
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
                scaler=scaler,
            )
            row = run.end_epoch(
                epoch,
                model,
                lr=lr,
                train_loss=train_loss,
                train_acc=train_acc,
                seconds=time.perf_counter() - epoch_start,
                evaluate_on=evaluate_on,
                val=val,
                test=test,
            )
            if report is not None and report(row) and not run.done:
                run.stop(model, evaluate_on=evaluate_on, test=test)
            if run.done:
                break
            if scheduler is not None:
                scheduler.step()
        return run.result(model, data=data, seconds=time.perf_counter() - started)


def _ended_status(kept: EpochScore, val_labels: torch.Tensor) -> Status:
    """COMPLETED, or COLLAPSED when the kept weights are no better than guessing the majority class.
    Without a validation split there is nothing to judge by, so the run counts as completed."""
    if len(val_labels) and is_collapsed(kept.val_acc, val_labels):
        return Status.COLLAPSED
    return Status.COMPLETED


def training_loss(logits: torch.Tensor, labels: torch.Tensor, config: TrialConfig) -> torch.Tensor:
    """The loss a training step minimizes: cross-entropy of (B, 10) logits against (B,) labels,
    with the config's label smoothing (validation and test losses stay plain cross-entropy)."""
    return F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)


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
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[float, float]:
    """One pass in a seeded random order; returns (mean loss, accuracy), loss NaN if diverged.

    Forward and loss run under ``config.precision``'s autocast. fp16 needs ``scaler``, kept across
    epochs by the caller so its scale adapts; without one a fresh scaler serves this epoch only.
    """
    device = images.device
    autocast = precision_autocast(config.precision, device)
    if scaler is None:
        scaler = make_grad_scaler(config.precision, device)
    model.train()
    n = len(train_idx)
    order = train_idx[torch.randperm(n, generator=generator).to(train_idx.device)]
    loss_sum = torch.zeros((), device=device)  # fp32 whatever the precision
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    for step, start in enumerate(range(0, n, config.batch_size)):
        idx = order[start : start + config.batch_size]
        if len(idx) < 2 and seen:  # a 1-image tail batch breaks BatchNorm and adds nothing
            break
        # index_select gathers whole 784-byte rows: 3 us for 64 images, where images[idx] took 33 us
        x = to_unit_float(images.index_select(0, idx)).contiguous(memory_format=MEMORY_FORMAT)  # (B,1,28,28)
        if config.augment != "none":
            x = augment_batch(x, kind=config.augment, generator=generator)
        x = normalize_(x, mean=data.mean, std=data.std)
        y = labels.index_select(0, idx)
        with autocast:
            logits = model(x)  # (B, 10), bf16/fp16 under autocast
            # autocast computes cross-entropy in fp32; smoothing shapes the training loss only
            loss = training_loss(logits, y, config)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)  # skipped when the scaled gradients overflowed
            scaler.update()
        with torch.no_grad():
            loss_sum += loss.detach().float() * len(idx)
            correct += (logits.argmax(1) == y).sum()
        seen += len(idx)
        if step % DIVERGENCE_CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
            return math.nan, math.nan
    mean_loss = float(loss_sum) / max(seen, 1)
    return (mean_loss if math.isfinite(mean_loss) else math.nan), float(correct) / max(seen, 1)


# --------------------------------------------------------------------------- inference

Images = np.ndarray | torch.Tensor  # (N, 28, 28) uint8, on any device


def _batched_inference(
    model: nn.Module,
    images: Images,
    *,
    data: ImageData,
    batch_size: int | None,
    precision: str,
    outputs: Callable[[torch.Tensor], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """The one inference loop: ``outputs`` of each normalized batch, concatenated, fp32 on the CPU.

    Batches move to the model's device one at a time, so the images may sit anywhere.
    """
    tensor = as_tensor(images) if isinstance(images, np.ndarray) else images
    if tensor.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (N, 28, 28), got {tensor.dtype}")
    device = next(model.parameters()).device
    batch_size = batch_size or eval_batch_size(device)
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {}
    with torch.inference_mode(), precision_autocast(precision, device):
        # At least one batch, even an empty one, so that empty input still gives shaped outputs.
        for start in range(0, max(len(tensor), 1), batch_size):
            x = to_unit_float(tensor[start : start + batch_size].to(device))  # (B, 1, 28, 28) in [0, 1]
            x = normalize_(x, mean=data.mean, std=data.std)
            for key, value in outputs(x).items():
                chunks.setdefault(key, []).append(value.float().cpu())
    return {key: torch.cat(parts) for key, parts in chunks.items()}


def eval_batch_size(device: torch.device) -> int:
    """The inference batch size that runs fastest on ``device`` (see EVAL_BATCH_SIZES)."""
    return EVAL_BATCH_SIZES.get(device.type, EVAL_BATCH_SIZE_DEFAULT)


def predict_logits(
    model: nn.Module,
    images: Images,
    *,
    data: ImageData,
    batch_size: int | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """(N, 28, 28) uint8 images -> (N, 10) float logits on the CPU, in batches of ``batch_size``
    (default: the device's, :func:`eval_batch_size`)."""
    return _batched_inference(
        model,
        images,
        data=data,
        batch_size=batch_size,
        precision=precision,
        outputs=lambda x: {"logits": model(x)},
    )["logits"]


def model_features(
    model: nn.Module,
    images: Images,
    *,
    data: ImageData,
    keys: tuple[str, ...] = ("penultimate",),
    batch_size: int | None = None,
    precision: str = "fp32",
) -> dict[str, np.ndarray]:
    """Intermediate activations from ``model.features`` (LeNet-5: conv1 (N,6,28,28), conv2
    (N,16,10,10), penultimate (N,84)) as fp32 numpy arrays. Only ``keys`` are kept: conv maps of
    many images are large."""

    def selected(x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = model.features(x)
        missing = [key for key in keys if key not in features]
        if missing:
            raise ValueError(f"model has no feature {missing[0]!r}; it has: {', '.join(features)}")
        return {key: features[key] for key in keys}

    found = _batched_inference(
        model, images, data=data, batch_size=batch_size, precision=precision, outputs=selected
    )
    return {key: value.contiguous().numpy() for key, value in found.items()}


def predict_proba(
    model: nn.Module, images: Images, *, data: ImageData, precision: str = "fp32"
) -> torch.Tensor:
    """(N, 10) class probabilities (softmax of the logits)."""
    return predict_logits(model, images, data=data, precision=precision).softmax(dim=1)


def evaluate(
    model: nn.Module, images: Images, labels: torch.Tensor, *, data: ImageData, precision: str = "fp32"
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on a split, computed in fp32."""
    logits = predict_logits(model, images, data=data, precision=precision)
    targets = torch.as_tensor(labels).cpu()
    loss = float(F.cross_entropy(logits, targets)) if len(targets) else math.nan
    acc = float((logits.argmax(1) == targets).float().mean()) if len(targets) else math.nan
    return (loss if math.isfinite(loss) else math.nan), acc


def load_trial_model(config: TrialConfig, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild a trained model from its config and weights (e.g. read back from model.pt)."""
    model = build_trial_model(config)
    model.load_state_dict(state_dict)
    return model
