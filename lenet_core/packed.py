"""Packed training: K LeNet-5s of one architecture trained together, one vectorized step for all.

``train_packed(configs, data)`` gives what ``[train_trial(c, data) for c in configs]`` gives (the
same TrialResult per member, history, status and kept weights) in less time: the K members'
parameters are stacked, the convolutions run as one grouped convolution (``groups=K``, member k
owning channels [k*C, (k+1)*C)) and the dense layers as one batched matmul (``torch.baddbmm``
over (K, batch, features)), so every kernel call does K models' work. LeNet-5's layers are so
small that one model leaves a CPU core mostly waiting on per-call overhead and 6- or 16-channel
vectors; K members fill it. Measured with ``study bench --no-core --pack`` (1 thread, batch 64,
the default LeNet-5 and Adam, on this project's shared 2-core machine): 1.36x the training images/s
of one model after another at K = 5, 1.34x-1.47x for K = 2..16, 0.97x for a pack of one.

What stays per member, exactly as ``train_trial`` does it:

- initialization: each member is ``build_trial_model(config)``, and the pack is made of its
  weights;
- batches and augmentation: each member draws its batch order and augmentation from its own
  ``torch.Generator(seed)`` in the same order as ``train_one_epoch``, from its own training
  indices (``train_indices[i]``, e.g. a bootstrap resample);
- the loss: the pack minimizes the sum of the members' mean cross-entropies, whose gradient with
  respect to a member's weights is that member's own (the members share no weight);
- the optimizer and schedule: ``make_optimizer`` and ``make_scheduler`` over the member model's
  parameters, which alias the member's rows of the stacked tensors; after each backward pass a
  member's gradients are set to views of its rows of the stacked gradients and the optimizer
  steps. Its lr, weight decay, momentum, schedule and optimizer state are its own. Members whose
  optimizer fields all agree (a seed ensemble) share one optimizer built over all their
  parameters (``make_optimizers``): every torch optimizer updates each parameter tensor from its
  own gradient and state alone, so that is the same math in fewer calls;
- the verdicts: patience, divergence (checked every DIVERGENCE_CHECK_EVERY steps, as in
  ``train_one_epoch``), collapse, and ``report``. A member that has finished stops stepping
  (its weights stop changing) and leaves the pack at the end of the epoch; the others go on.

Within rounding, not bitwise: a grouped convolution and a batched matmul add the same products in
another order than one model's convolution and ``nn.Linear`` do (float32 reassociation), so a
member's gradients differ from its separate twin's by about 1e-6 of their size. A pack of one
(modern skeleton) is bitwise train_trial; the classic skeleton's C5, a 5x5 convolution of a 5x5
map, runs as the matmul it is (3x faster than the convolution here). How far training carries the
rounding (SGD hardly, Adam and above all RMSprop more) is measured in tests/lenet_core/test_packed.py.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lenet_core.config import TrialConfig
from lenet_core.data import ImageData, as_tensor, augment_batch, normalize_, to_unit_float
from lenet_core.errors import ConfigError
from lenet_core.models import (
    ACTIVATIONS,
    C3_TABLE,
    LeNet5,
    avg_pool_2x2,
    max_pool_2x2,
    sum_pool_2x2,
)
from lenet_core.train import (
    DIVERGENCE_CHECK_EVERY,
    MEMORY_FORMAT,
    RunState,
    Split,
    TrialResult,
    build_trial_model,
    check_precision,
    evaluate,
    make_optimizer,
    make_scheduler,
    precision_autocast,
    resolve_device,
    torch_threads,
    training_loss,
    trial_split,
)

# Fields every member of a pack shares: one dataset and split, one architecture, one batch shape,
# one device. ``epochs`` may differ (a member that has run its epochs leaves the pack).
SHARED_FIELDS = (
    "dataset",
    "data_dir",
    "val_fraction",
    "split_seed",
    "train_fraction",
    "model",
    "variant",
    "activation",
    "pooling",
    "batch_size",
    "device",
    "precision",
    "threads",
)
# Fields each member has its own of, each handled as train_trial handles it.
MEMBER_FIELDS = (
    "seed",
    "lr",
    "lr_schedule",
    "lr_gamma",
    "lr_step_size",
    "warmup_epochs",
    "optimizer",
    "weight_decay",
    "momentum",
    "label_smoothing",
    "epochs",
    "patience",
    "augment",
    "test_every_epoch",
)
# The fields that decide a member's optimizer and lr schedule (epochs: a schedule spans them).
OPTIMIZER_FIELDS = (
    "optimizer",
    "lr",
    "weight_decay",
    "momentum",
    "lr_schedule",
    "lr_gamma",
    "lr_step_size",
    "warmup_epochs",
    "epochs",
)
# fp16 needs a gradient scaler, whose skipped steps would be shared by the pack: not packed.
PACKED_PRECISIONS = ("fp32", "bf16")

# report(member index, history row) after each epoch of that member; True stops that member.
PackedReport = Callable[[int, dict[str, Any]], bool | None]
# report_epoch({member index: history row}) once per epoch; True stops every member in it.
EpochReport = Callable[[dict[int, dict[str, Any]]], bool | None]


# --------------------------------------------------------------------------- checks


def pack_key(config: TrialConfig) -> tuple[Any, ...]:
    """What a config shares with the others of a pack (SHARED_FIELDS): group configs by it to
    pack them; ``check_packable`` has the last word (precision, fields it does not know)."""
    return tuple(getattr(config, name) for name in SHARED_FIELDS)


def check_packable(
    configs: Sequence[TrialConfig], train_indices: Sequence[np.ndarray | None] | None = None
) -> None:
    """Raise a one-line ConfigError unless ``configs`` (and ``train_indices``) can train as one pack."""
    if not configs:
        raise ConfigError("train_packed needs at least one config")
    others = [i for i, c in enumerate(configs) if c.model != "lenet5"]
    if others:
        i = others[0]
        raise ConfigError(f"train_packed packs lenet5 only; configs[{i}] has model {configs[i].model!r}")
    differing = [name for name in SHARED_FIELDS if len({getattr(c, name) for c in configs}) > 1]
    if differing:
        raise ConfigError(
            f"configs cannot be packed: they differ in {', '.join(differing)} (members must share "
            f"{', '.join(SHARED_FIELDS)})"
        )
    if configs[0].precision not in PACKED_PRECISIONS:
        raise ConfigError(
            f"train_packed trains in {' or '.join(PACKED_PRECISIONS)}, not precision "
            f"{configs[0].precision!r} (fp16's gradient scaler would skip steps for the whole pack)"
        )
    # A field packed training does not know (one added to TrialConfig later) must keep its default:
    # it could change the step in a way the pack does not reproduce.
    known = set(SHARED_FIELDS) | set(MEMBER_FIELDS)
    defaults = TrialConfig(model="lenet5")
    for f in dataclasses.fields(TrialConfig):
        if f.name in known:
            continue
        for i, c in enumerate(configs):
            if getattr(c, f.name) != getattr(defaults, f.name):
                raise ConfigError(
                    f"train_packed does not support {f.name} yet (configs[{i}] sets it to "
                    f"{getattr(c, f.name)!r}); train that config with train_trial"
                )
    if train_indices is not None:
        if len(train_indices) != len(configs):
            raise ConfigError(
                f"train_indices has {len(train_indices)} entries for {len(configs)} configs; give one "
                "per config (None: the config's training split)"
            )
        lengths = {len(idx) for idx in train_indices if idx is not None}
        if len(lengths) > 1:
            raise ConfigError(
                f"train_indices must all have one length to pack (one batch shape), got {sorted(lengths)}"
            )


# --------------------------------------------------------------------------- the stacked model


def _partial_conv_index() -> torch.Tensor:
    """For each entry of C3's dense (16, 6) weight, which of the 60 edge kernels it holds, or 60
    (a zero kernel) where Table I has no edge: (96,) int64, row-major over (out, in)."""
    index = torch.full((16, 6), len([i for inputs in C3_TABLE for i in inputs]), dtype=torch.long)
    edge = 0
    for out, inputs in enumerate(C3_TABLE):
        for i in inputs:
            index[out, i] = edge
            edge += 1
    return index.flatten()


class PackedLeNet:
    """K LeNet-5s of one architecture (variant, activation, pooling) as stacked tensors.

    Every parameter of the members is concatenated along its first dimension into one leaf
    tensor (member k owns rows [k*n, (k+1)*n)), and each member model's parameter is made a view
    of its rows: the member's optimizer updates the stack in place, and the member model reads
    the current weights with no copy (for evaluation and state dicts). ``forward`` takes
    (B, K, H, W) images, member k's batch in channel k, and returns (K, B, 10) logits.
    """

    def __init__(self, models: Sequence[LeNet5]) -> None:
        if not models:
            raise ConfigError("PackedLeNet needs at least one model")
        first = models[0]
        for model in models:
            if not isinstance(model, LeNet5):
                raise ConfigError(f"PackedLeNet packs LeNet5 models, got {type(model).__name__}")
            if (model.variant, model.activation, model.pooling) != (
                first.variant,
                first.activation,
                first.pooling,
            ):
                raise ConfigError("PackedLeNet packs models of one variant, activation and pooling")
        self.classic = first.variant == "classic"
        self.pooling = first.pooling
        self.pool_first = first.pool_first
        self.input_pad = first.input_pad
        self.conv1_padding = first.conv1.padding
        self.act = ACTIVATIONS[first.activation]()
        self.names = [name for name, _ in first.named_parameters()]
        self.device = first.conv1.weight.device
        self.conv2_index = _partial_conv_index().to(self.device) if self.classic else None
        self.models: list[LeNet5] = []
        self.params: dict[str, torch.Tensor] = {}  # the stacked leaves, by parameter name
        self.member_params: list[dict[str, torch.nn.Parameter]] = []  # each model's, by name
        self.repack(list(models))

    @property
    def k(self) -> int:
        return len(self.models)

    def repack(self, models: list[LeNet5]) -> None:
        """Stack ``models`` (the members still training, in pack order) into fresh leaf tensors
        and point each model's parameters at its rows. Models dropped from the pack get their
        own copy of their weights, so that nothing they do later touches the stack."""
        kept = {id(m) for m in models}
        for model in self.models:
            if id(model) not in kept:
                for p in model.parameters():
                    p.data = p.data.clone(memory_format=torch.preserve_format)
                    p.grad = None
        self.models = models
        self.params = {}
        self.member_params = per_model = [dict(m.named_parameters()) for m in models]
        if not models:
            return
        for name in self.names:
            parts = [params[name].detach() for params in per_model]
            # 4-d (conv) weights channels-last: each member's rows are then laid out as in
            # build_trial_model's model, and oneDNN takes them without reordering
            fmt = MEMORY_FORMAT if parts[0].dim() == 4 else torch.contiguous_format
            stacked = torch.cat(parts).contiguous(memory_format=fmt).requires_grad_()
            self.params[name] = stacked
            rows = parts[0].shape[0]
            for k, params in enumerate(per_model):
                params[name].data = stacked.detach()[k * rows : (k + 1) * rows]
                params[name].grad = None

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def hand_out_grads(self, lanes: Sequence[int]) -> None:
        """Give the members at pack positions ``lanes`` their rows of the stacked gradients, and
        the others none: an optimizer skips a parameter without a gradient."""
        stepping = set(lanes)
        for name, stacked in self.params.items():
            grad = stacked.grad
            rows = stacked.shape[0] // self.k
            for k, params in enumerate(self.member_params):
                given = grad is not None and k in stepping
                params[name].grad = grad[k * rows : (k + 1) * rows] if given else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) normalized images -> (K, B, 10) logits; member k sees channel k."""
        k, p = self.k, self.params
        if self.input_pad:
            x = F.pad(x, (self.input_pad,) * 4)  # (B, K, 32, 32)
        maps = F.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=self.conv1_padding, groups=k)
        pooled = self._pool_stage(maps, "pool1")  # (B, K*6, 14, 14)
        maps = F.conv2d(pooled, self._conv2_weight(), p["conv2.bias"], groups=k)  # (B, K*16, 10, 10)
        pooled = self._pool_stage(maps, "pool2")  # (B, K*16, 5, 5)
        batch, _, height, width = pooled.shape
        if self.classic:
            # C5, a 5x5 conv on a 5x5 map, is a dense map: over (row, column, channel), the order
            # of its channels-last weight (K*120, 16, 5, 5)
            flat = pooled.permute(0, 2, 3, 1).reshape(batch, height * width, k, -1).permute(2, 0, 1, 3)
            weight = self.params["conv3.weight"].permute(0, 2, 3, 1)  # (K*120, 5, 5, 16), contiguous
            hidden = self._dense(flat.reshape(k, batch, -1), "conv3", weight=weight)
        else:  # (B, K*16, 5, 5) -> (K, B, 400) in (channel, row, column) order, as flatten(1) gives
            hidden = self._dense(pooled.reshape(batch, k, -1).transpose(0, 1), "fc1")
        hidden = self.act(hidden)  # (K, B, 120)
        penultimate = self.act(self._dense(hidden, "fc2"))  # (K, B, 84)
        return self._dense(penultimate, "head")  # (K, B, 10)

    __call__ = forward

    def _dense(self, x: torch.Tensor, layer: str, *, weight: torch.Tensor | None = None) -> torch.Tensor:
        """(K, B, in) -> (K, B, out): each member's x @ W.T + b, one batched matmul."""
        k = self.k
        weight = self.params[f"{layer}.weight"] if weight is None else weight
        weight = weight.view(k, -1, x.shape[-1])  # (K, out, in)
        bias = self.params[f"{layer}.bias"].view(k, 1, -1)  # (K, 1, out)
        return torch.baddbmm(bias, x, weight.transpose(1, 2))

    def _conv2_weight(self) -> torch.Tensor:
        weight = self.params["conv2.weight"]
        if self.conv2_index is None:
            return weight  # (K*16, 6, 5, 5)
        # classic C3: (K*60, 5, 5) edge kernels -> (K*16, 6, 5, 5) dense, zero where Table I has no
        # edge; the same values PartialConv2d.dense_weight scatters
        edges = weight.view(self.k, -1, 25)
        padded = torch.cat([edges, edges.new_zeros(self.k, 1, 25)], dim=1)  # (K, 61, 25)
        return padded.index_select(1, self.conv2_index).view(-1, 6, 5, 5)

    def _pool_stage(self, maps: torch.Tensor, stage: str) -> torch.Tensor:
        """What LeNet5._conv_stage does after the conv, on K members' channels at once."""
        if self.pool_first:  # ReLU + max: pool first, as LeNet5 does
            return self.act(max_pool_2x2(maps))
        activated = self.act(maps)
        if self.pooling == "max":
            return max_pool_2x2(activated)
        if self.pooling == "avg":
            return avg_pool_2x2(activated)
        weight = self.params[f"{stage}.weight"].view(1, -1, 1, 1)
        bias = self.params[f"{stage}.bias"].view(1, -1, 1, 1)
        return self.act(sum_pool_2x2(activated) * weight + bias)


# --------------------------------------------------------------------------- one epoch


Optimizers = list[tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]]


def make_optimizers(configs: Sequence[TrialConfig], models: Sequence[LeNet5]) -> Optimizers:
    """(optimizer, scheduler) of each member: ``make_optimizer`` and ``make_scheduler`` of its
    config, shared by the members whose OPTIMIZER_FIELDS all agree and built over all of their
    parameters. Each torch optimizer (and fused Adam's one kernel) updates every parameter tensor
    from its own gradient and state with its group's hyperparameters, and skips one without a
    gradient, so a shared optimizer steps each member as its own would."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(tuple(getattr(config, f) for f in OPTIMIZER_FIELDS), []).append(i)
    built = {}
    for members in groups.values():
        config = configs[members[0]]
        optimizer = make_optimizer(config, [p for i in members for p in models[i].parameters()])
        scheduler = make_scheduler(config, optimizer)
        built.update(dict.fromkeys(members, (optimizer, scheduler)))
    return [built[i] for i in range(len(configs))]


@dataclass
class Lane:
    """One member's training state for ``train_packed_epoch``: its config, model (in the pack),
    optimizer, generator (batch order and augmentation) and training indices on the device."""

    config: TrialConfig
    model: LeNet5
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    train_idx: torch.Tensor


def train_packed_epoch(
    pack: PackedLeNet,
    lanes: Sequence[Lane],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    data: ImageData,
) -> list[tuple[float, float]]:
    """One pass of every lane (in pack order) over its training indices: what
    ``train_one_epoch`` returns for each, (mean loss, accuracy), (NaN, NaN) for a lane whose loss
    sum was not finite at a divergence check; that lane takes no step after it."""
    if [lane.model for lane in lanes] != pack.models:
        raise ValueError("lanes must be the pack's members, in pack order")
    k = len(lanes)
    device = images.device
    config = lanes[0].config
    batch_size = config.batch_size
    autocast = precision_autocast(config.precision, device)
    for lane in lanes:
        lane.model.train()
    n = len(lanes[0].train_idx)
    # each lane's order, drawn from its generator as train_one_epoch draws it: (K, n)
    orders = torch.stack(
        [lane.train_idx[torch.randperm(n, generator=lane.generator).to(device)] for lane in lanes]
    )
    loss_sum = torch.zeros(k, device=device)
    correct = torch.zeros(k, dtype=torch.long, device=device)
    stepping = list(range(k))  # lanes that still step; a diverged one leaves
    diverged: set[int] = set()
    seen = 0
    height, width = images.shape[1:]
    for step, start in enumerate(range(0, n, batch_size)):
        idx = orders[:, start : start + batch_size]  # (K, b)
        b = idx.shape[1]
        if b < 2 and seen:  # a 1-image tail batch: train_one_epoch skips it too
            break
        flat_idx = idx.reshape(-1)
        x = to_unit_float(images.index_select(0, flat_idx))  # (K*b, 1, H, W), lane-major
        for j, lane in enumerate(lanes):
            if lane.config.augment != "none":
                rows = slice(j * b, (j + 1) * b)
                x[rows] = augment_batch(x[rows], kind=lane.config.augment, generator=lane.generator)
        x = normalize_(x, mean=data.mean, std=data.std)
        # (K*b, 1, H, W) -> (b, K, H, W), channels-last: lane j's batch is channel j
        x = x.view(k, b, height, width).permute(1, 2, 3, 0).contiguous().permute(0, 3, 1, 2)
        y = labels.index_select(0, flat_idx).view(k, b)
        with autocast:
            logits = pack(x)  # (K, b, 10)
            # each lane's loss as train_one_epoch computes it (autocast runs it in fp32)
            losses = torch.stack(
                [training_loss(logits[j], y[j], lane.config) for j, lane in enumerate(lanes)]
            )
        pack.zero_grad()
        # the sum of the lanes' losses: a lane's gradient is that of its own loss
        losses.sum().backward()
        pack.hand_out_grads(stepping)
        for optimizer in {id(lanes[j].optimizer): lanes[j].optimizer for j in stepping}.values():
            optimizer.step()  # once each, shared or not
        with torch.no_grad():
            loss_sum += losses.detach().float() * b
            correct += (logits.argmax(-1) == y).sum(1)
        seen += b
        if step % DIVERGENCE_CHECK_EVERY == 0:
            finite = torch.isfinite(loss_sum).tolist()
            for j in [j for j in stepping if not finite[j]]:
                stepping.remove(j)
                diverged.add(j)
            if not stepping:
                break
    pack.zero_grad()
    for lane in lanes:
        lane.optimizer.zero_grad(set_to_none=True)
    sums, hits = loss_sum.tolist(), correct.tolist()
    results = []
    for j in range(k):
        mean_loss = sums[j] / max(seen, 1)
        if j in diverged:
            results.append((math.nan, math.nan))
        else:
            results.append((mean_loss if math.isfinite(mean_loss) else math.nan, hits[j] / max(seen, 1)))
    return results


# --------------------------------------------------------------------------- whole runs


@dataclass
class _Member:
    """A member of a pack: its lane, its schedule, and its run's state and verdicts (``RunState``,
    the same code that ``train_trial`` ends its epochs with)."""

    index: int  # position in train_packed's configs
    lane: Lane
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    run: RunState
    seconds: float = 0.0  # its share of the packed epochs' time plus its own evaluations

    @property
    def config(self) -> TrialConfig:
        return self.lane.config

    @property
    def model(self) -> LeNet5:
        return self.lane.model

    def evaluate_on(self, split: Split, *, data: ImageData) -> tuple[float, float]:
        return evaluate(self.model, split[0], split[1], data=data, precision=self.config.precision)


def train_packed(
    configs: Sequence[TrialConfig],
    data: ImageData,
    *,
    report: PackedReport | None = None,
    report_epoch: EpochReport | None = None,
    train_indices: Sequence[np.ndarray | None] | None = None,
) -> list[TrialResult]:
    """Train one LeNet-5 per config in one pack; the results in config order, each what
    ``train_trial(configs[i], data, train_indices=train_indices[i])`` returns (within rounding).

    The configs must share SHARED_FIELDS (one dataset, split, architecture, batch size, device,
    precision and thread count; else a one-line ConfigError names the fields that differ). Each
    member has its own seed, optimizer and its hyperparameters, schedule, epochs, patience,
    augmentation and ``train_indices[i]`` (None: the config's training split; all of one length).
    ``report(i, row)`` is called after each epoch of member i with its history row; True stops
    that member (Status.STOPPED), as ``train_trial``'s report does. ``report_epoch(rows)`` is
    called once per epoch, after every ``report`` of it, with the rows of the members that trained
    in it by member index; True stops all of them: for a caller that judges the pack as one (a
    Tune trial over several seeds, whose scheduler sees their mean).

    Time is shared: a member's history ``seconds`` (and so its ``images_per_s``) is its share of
    each packed epoch (the epoch's wall time over the members in it), and its ``seconds`` that
    share plus its own evaluations; the members' seconds add up to about the call's wall time.
    """
    check_packable(configs, train_indices)
    for config in configs:
        if config.dataset != data.name:
            raise ConfigError(f"config asks for dataset {config.dataset!r} but {data.name!r} was given")
    first = configs[0]
    device = resolve_device(first.device)
    check_precision(first.precision, device)
    with torch_threads(first.threads):
        started = time.perf_counter()
        split_train, val_idx = trial_split(data, first)  # the split fields are shared
        images = as_tensor(data.train_images).to(device)
        labels = as_tensor(data.train_labels).to(device)
        val_images, val_labels = images[val_idx], labels[val_idx]
        test_images = as_tensor(data.test_images).to(device)
        test_labels = as_tensor(data.test_labels).to(device)
        models = [build_trial_model(config).to(device) for config in configs]
        optimizers = make_optimizers(configs, models)
        members = []
        for i, (config, model, (optimizer, scheduler)) in enumerate(
            zip(configs, models, optimizers, strict=True)
        ):
            given = None if train_indices is None else train_indices[i]
            train_idx = split_train if given is None else np.asarray(given)
            lane = Lane(
                config=config,
                model=model,
                optimizer=optimizer,
                generator=torch.Generator().manual_seed(config.seed),
                train_idx=torch.from_numpy(train_idx.astype(np.int64)).to(device),
            )
            members.append(
                _Member(
                    index=i,
                    lane=lane,
                    scheduler=scheduler,
                    run=RunState(config=config, train_size=len(train_idx)),
                )
            )
        if len({m.run.train_size for m in members}) > 1:
            raise ConfigError(
                "train_indices must have the training split's length to pack with configs that use "
                f"the split ({len(split_train)} images)"
            )
        pack = PackedLeNet([m.model for m in members])
        setup_share = (time.perf_counter() - started) / len(members)
        for member in members:
            member.seconds += setup_share
        active = list(members)
        epoch = 0
        while active:
            epoch += 1
            lrs = [m.lane.optimizer.param_groups[0]["lr"] for m in active]  # this epoch's
            epoch_start = time.perf_counter()
            scores = train_packed_epoch(pack, [m.lane for m in active], images, labels, data=data)
            share = (time.perf_counter() - epoch_start) / len(active)
            val, test = (val_images, val_labels), (test_images, test_labels)
            for member, lr, (train_loss, train_acc) in zip(active, lrs, scores, strict=True):
                member.seconds += share
                evaluated = time.perf_counter()
                member.run.end_epoch(
                    epoch,
                    member.model,
                    lr=lr,
                    train_loss=train_loss,
                    train_acc=train_acc,
                    seconds=share,
                    evaluate_on=lambda split, m=member: m.evaluate_on(split, data=data),
                    val=val,
                    test=test,
                )
                member.seconds += time.perf_counter() - evaluated
            stops = {m.index for m in active if report is not None and report(m.index, m.run.history[-1])}
            if report_epoch is not None and report_epoch({m.index: m.run.history[-1] for m in active}):
                stops |= {m.index for m in active}
            for member in active:
                if member.index in stops and not member.run.done:
                    stopping = time.perf_counter()
                    member.run.stop(
                        member.model,
                        evaluate_on=lambda split, m=member: m.evaluate_on(split, data=data),
                        test=test,
                    )
                    member.seconds += time.perf_counter() - stopping
            still = [m for m in active if not m.run.done]
            # as train_trial: the schedule steps after each epoch a member goes on from (once per
            # epoch for a shared scheduler)
            for scheduler in {id(m.scheduler): m.scheduler for m in still if m.scheduler}.values():
                scheduler.step()
            if len(still) < len(active):
                pack.repack([m.model for m in still])
            active = still
        # the layout build_trial_model gives, for state dicts like train_trial's
        return [
            m.run.result(m.model.to(memory_format=MEMORY_FORMAT), data=data, seconds=m.seconds)
            for m in members
        ]
