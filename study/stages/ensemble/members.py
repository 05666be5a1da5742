"""Ensemble members: what each model is (its spec), how it trains, and its checkpoint.

A member's spec names its group (seed ensemble, bagged, baseline), repeat and seeds; its
identity (what decides the trained model) leaves out where it ran.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lenet_core.config import TrialConfig, from_dict
from lenet_core.data import ImageData, as_tensor, bootstrap_indices
from lenet_core.errors import ConfigError, StudyError
from lenet_core.train import TrialResult, load_trial_model, predict_proba, train_trial, trial_split
from study.common.files import load_weights, save_weights, write_json, write_via_temp
from study.common.placement import without_placement
from study.stages.ensemble.results import MEMBER_PREDICTIONS, MEMBER_RESULT, MEMBER_WEIGHTS, MEMBERS_FOLDER

RESNETS = ("resnet18", "resnet34", "resnet50", "none")


RESAMPLES = ("bootstrap", "none")
GROUPS = ("seed", "bagged", "baseline")  # seed ensemble, bagged ensemble, ResNet


@dataclass(frozen=True)
class MemberSpec:
    """One model to train: its config, its group and repeat, and for bagged members the bootstrap seed."""

    name: str  # "r0_seed_00", "r0_bagged_03", "r1_resnet18", ...
    config: TrialConfig
    bootstrap_seed: int | None  # None: the whole training split
    group: str = "seed"  # one of GROUPS
    repeat: int = 0

    def identity(self) -> dict[str, Any]:
        """What decides the trained model; where it ran (device, threads) does not count."""
        config = without_placement(self.config.to_dict())
        return {"name": self.name, "config": config, "bootstrap_seed": self.bootstrap_seed}


@dataclass
class MemberOutput:
    spec: MemberSpec
    summary: dict[str, Any]  # TrialResult.summary()
    state_dict: dict[str, Any]
    test_proba: np.ndarray  # (N_test, 10)
    oob_idx: np.ndarray  # indices into the train split the member never saw (empty unless bagged)
    oob_proba: np.ndarray  # (len(oob_idx), 10)


def member_specs(
    configs: list[TrialConfig], members: int, *, seed: int, repeats: int = 1, resample: str = "bootstrap"
) -> list[MemberSpec]:
    """Seed-ensemble (and, with bootstrap, bagged) members of every repeat, cycling over ``configs``.

    Member i of repeat r uses seed ``seed + r * members + i`` for its initialization and batch
    order, and the bagged member i the same seed for its bootstrap: repeats never share a seed.
    """
    if members < 2:
        raise ConfigError(f"--members must be >= 2 for a vote, got {members}")
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}")
    if resample not in RESAMPLES:
        raise ConfigError(f"unknown --resample {resample!r}; choose one of: {', '.join(RESAMPLES)}")
    groups = ["seed", "bagged"] if resample == "bootstrap" else ["seed"]
    specs = []
    for repeat in range(repeats):
        for group in groups:
            for i in range(members):
                member_seed = seed + repeat * members + i
                specs.append(
                    MemberSpec(
                        name=f"r{repeat}_{group}_{i:02d}",
                        config=configs[i % len(configs)].replace(seed=member_seed),
                        bootstrap_seed=member_seed if group == "bagged" else None,
                        group=group,
                        repeat=repeat,
                    )
                )
    return specs


def bagging_indices(spec: MemberSpec, data: ImageData) -> tuple[np.ndarray | None, np.ndarray]:
    """(in-bag indices or None for the full split, out-of-bag indices), into the train arrays."""
    train_idx, _ = trial_split(data, spec.config)
    if spec.bootstrap_seed is None:
        return None, np.empty(0, dtype=np.int64)
    draw, _ = bootstrap_indices(len(train_idx), seed=spec.bootstrap_seed)
    in_bag = train_idx[draw]
    return in_bag, np.setdiff1d(train_idx, in_bag)


def train_member(spec: MemberSpec, data: ImageData) -> MemberOutput:
    """Train one member and predict the test split and its out-of-bag images."""
    in_bag, oob_idx = bagging_indices(spec, data)
    result = train_trial(spec.config, data, train_indices=in_bag)
    return member_output(spec, result, oob_idx, data)


def train_members(specs: list[MemberSpec], data: ImageData) -> list[MemberOutput]:
    """Train LeNet members of one shape as one pack (``lenet_core.packed.train_packed``), each on
    its own seed and in-bag indices (a bootstrap resample has the split's length, so seed and
    bagged members of one config share a pack), then predict as ``train_member`` does."""
    from lenet_core.packed import train_packed

    bags = [bagging_indices(spec, data) for spec in specs]
    results = train_packed([s.config for s in specs], data, train_indices=[in_bag for in_bag, _ in bags])
    return [
        member_output(spec, result, oob_idx, data)
        for spec, result, (_, oob_idx) in zip(specs, results, bags, strict=True)
    ]


def member_output(
    spec: MemberSpec, result: TrialResult, oob_idx: np.ndarray, data: ImageData
) -> MemberOutput:
    """A trained member's output: its kept weights' probabilities on the test split and on its
    out-of-bag images, and its summary; the same whether it trained alone or in a pack."""
    model = load_trial_model(spec.config, result.state_dict)
    # the member's own precision: a bf16 ResNet is voted on as it was tested, and no slower
    precision = spec.config.precision
    test_proba = predict_proba(model, as_tensor(data.test_images), data=data, precision=precision).numpy()
    oob_proba = (
        predict_proba(model, as_tensor(data.train_images[oob_idx]), data=data, precision=precision).numpy()
        if len(oob_idx)
        else np.empty((0, data.num_classes), dtype=np.float32)
    )
    summary = result.summary()
    summary["training_seconds"] = sum(row["seconds"] for row in result.history)
    return MemberOutput(
        spec=spec,
        summary=summary,
        state_dict=result.state_dict,
        test_proba=test_proba,
        oob_idx=oob_idx,
        oob_proba=oob_proba,
    )


# ------------------------------------------------------------------ checkpoints


def save_member(output: MemberOutput, folder: Path) -> None:
    """Weights and predictions first, then result.json: its presence means the member is whole."""
    member_dir = folder / MEMBERS_FOLDER / output.spec.name
    save_weights(output.state_dict, member_dir / MEMBER_WEIGHTS)

    def write_npz(path: Path) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, test_proba=output.test_proba, oob_idx=output.oob_idx, oob_proba=output.oob_proba)
        path.write_bytes(buffer.getvalue())

    write_via_temp(member_dir / MEMBER_PREDICTIONS, write_npz)
    write_json(member_dir / MEMBER_RESULT, {**output.summary, "member": output.spec.identity()})


class UnreadableCheckpoint(Exception):
    """A member's checkpoint exists but cannot be read back; the caller says so and retrains."""


def load_member(spec: MemberSpec, folder: Path) -> MemberOutput | None:
    """A finished member from an earlier run with the very same spec; None if there is none or
    it was trained from another spec. Raises ``UnreadableCheckpoint`` when it is damaged."""
    member_dir = folder / MEMBERS_FOLDER / spec.name
    result_path = member_dir / MEMBER_RESULT
    if not result_path.is_file():
        return None
    try:
        summary = json.loads(result_path.read_text())
        if summary.get("member") != json.loads(json.dumps(spec.identity())):
            return None
        with np.load(member_dir / MEMBER_PREDICTIONS, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("test_proba", "oob_idx", "oob_proba")}
        state_dict = load_weights(member_dir / MEMBER_WEIGHTS)
    except (OSError, ValueError, KeyError, StudyError) as exc:
        raise UnreadableCheckpoint(f"{member_dir}: {type(exc).__name__}: {exc}") from exc
    summary.pop("member")
    return MemberOutput(spec=spec, summary=summary, state_dict=state_dict, **arrays)


# The ResNet's one fixed recipe: the usual Adam 1e-3 at a constant lr for the whole budget, rather
# than whatever the LeNet's search chose (an optimizer, lr, schedule, smoothing or weight decay
# tuned for a 61k-parameter net need not suit an 11-23M parameter one with batch norm), and no
# early stopping (a fixed budget, its best validation epoch kept). It keeps the members' data: the
# dataset, split, batch size (the same steps per epoch) and augmentation; its epochs and precision
# are the plan's (--resnet-epochs, --resnet-precision).
RESNET_RECIPE = {
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "momentum": None,
    "lr_schedule": "constant",
    "lr_gamma": 0.1,  # unused at a constant lr; the default, so tables show one value
    "lr_step_size": None,
    "warmup_epochs": 0,
    "label_smoothing": 0.0,
    "patience": 0,
}


def resnet_specs(base: TrialConfig, resnet: str, *, seed: int, repeats: int = 1) -> list[MemberSpec]:
    """The ResNet baseline of every repeat: same data, split, epochs and batch size as the members,
    on the whole training split, seed ``seed + repeat``."""
    if resnet not in RESNETS:
        raise ConfigError(f"unknown --resnet {resnet!r}; choose one of: {', '.join(RESNETS)}")
    if resnet == "none":
        return []
    values = {
        **base.to_dict(),
        **RESNET_RECIPE,
        "model": resnet,
        "variant": None,
        "activation": None,
        "pooling": None,
    }
    config = from_dict(values, source="--resnet")
    return [
        MemberSpec(
            name=f"r{repeat}_{resnet}",
            config=config.replace(seed=seed + repeat),
            bootstrap_seed=None,
            group="baseline",
            repeat=repeat,
        )
        for repeat in range(repeats)
    ]
