"""`study ensemble`: bagged LeNet members and a ResNet baseline, trained as Ray tasks, then voted.

Each member is ``train_trial`` on a seeded bootstrap resample of the training split (its
out-of-bag images are known, so OOB accuracy comes for free). Members are checkpointed as they
finish (weights, test and OOB probabilities), and a re-run with the same name reuses them.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lenet_core.config import TrialConfig, from_dict
from lenet_core.data import ImageData, as_tensor, bootstrap_indices
from lenet_core.errors import ConfigError, StudyError
from lenet_core.train import load_trial_model, predict_proba, train_trial, trial_split
from study.common.files import load_weights, read_json, save_weights, write_json, write_via_temp
from study.common.placement import without_placement

RESNETS = ("resnet18", "resnet34", "resnet50", "none")
MEMBERS_FOLDER = "members"


@dataclass(frozen=True)
class MemberSpec:
    """One model to train: its config and, for bagged members, the bootstrap seed."""

    name: str  # "member_00", ..., or the ResNet's name
    config: TrialConfig
    bootstrap_seed: int | None  # None: the whole training split (the ResNet baseline)

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
    oob_idx: np.ndarray  # indices into the train split the member never saw (empty for ResNet)
    oob_proba: np.ndarray  # (len(oob_idx), 10)


def member_specs(configs: list[TrialConfig], members: int, *, seed: int) -> list[MemberSpec]:
    """``members`` bagged members cycling over ``configs`` (one config: all members share it).

    Member i uses seed ``seed + i`` for its initialization, batch order and bootstrap.
    """
    if members < 2:
        raise ConfigError(f"--members must be >= 2 for a vote, got {members}")
    return [
        MemberSpec(
            name=f"member_{i:02d}",
            config=configs[i % len(configs)].replace(seed=seed + i),
            bootstrap_seed=seed + i,
        )
        for i in range(members)
    ]


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
    model = load_trial_model(spec.config, result.state_dict)
    test_proba = predict_proba(model, as_tensor(data.test_images), data=data).numpy()
    oob_proba = (
        predict_proba(model, as_tensor(data.train_images[oob_idx]), data=data).numpy()
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
    save_weights(output.state_dict, member_dir / "model.pt")

    def write_npz(path: Path) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, test_proba=output.test_proba, oob_idx=output.oob_idx, oob_proba=output.oob_proba)
        path.write_bytes(buffer.getvalue())

    write_via_temp(member_dir / "predictions.npz", write_npz)
    write_json(member_dir / "result.json", {**output.summary, "member": output.spec.identity()})


class UnreadableCheckpoint(Exception):
    """A member's checkpoint exists but cannot be read back; the caller says so and retrains."""


def load_member(spec: MemberSpec, folder: Path) -> MemberOutput | None:
    """A finished member from an earlier run with the very same spec; None if there is none or
    it was trained from another spec. Raises ``UnreadableCheckpoint`` when it is damaged."""
    member_dir = folder / MEMBERS_FOLDER / spec.name
    result_path = member_dir / "result.json"
    if not result_path.is_file():
        return None
    try:
        summary = json.loads(result_path.read_text())
        if summary.get("member") != json.loads(json.dumps(spec.identity())):
            return None
        with np.load(member_dir / "predictions.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("test_proba", "oob_idx", "oob_proba")}
        state_dict = load_weights(member_dir / "model.pt")
    except (OSError, ValueError, KeyError, StudyError) as exc:
        raise UnreadableCheckpoint(f"{member_dir}: {type(exc).__name__}: {exc}") from exc
    summary.pop("member")
    return MemberOutput(spec=spec, summary=summary, state_dict=state_dict, **arrays)


# ------------------------------------------------------------------ where configs come from


def find_best_json(from_dir: Path) -> Path:
    for candidate in (from_dir / "tune" / "best.json", from_dir / "best.json"):
        if candidate.is_file():
            return candidate
    raise StudyError(
        f"--from {from_dir}: no best.json there (looked in {from_dir}/tune and "
        f"{from_dir}); run study tune first or pass --config"
    )


def config_from_best(path: Path) -> dict[str, Any]:
    """The tuned config of a best.json, less where it ran: members run where Ray places them."""
    payload = read_json(path, what="best.json")
    if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict):
        raise StudyError(f"{path}: missing the 'config' entry of a best.json")
    return without_placement(payload["config"])


def top_k_configs(best_path: Path, k: int, overrides: dict[str, Any]) -> list[TrialConfig]:
    """The K best distinct completed configs of the tune study beside ``best_path``."""
    trials_path = best_path.parent / "trials.parquet"
    if not trials_path.is_file():
        raise StudyError(f"--top-k needs {trials_path} from study tune")
    trials = pd.read_parquet(trials_path)
    done = trials[trials["status"] == "completed"].sort_values("final_val_acc", ascending=False)
    configs: list[TrialConfig] = []
    for raw in done["config"]:
        config = from_dict({**without_placement(json.loads(raw)), **overrides}, source=str(trials_path))
        if config not in configs:
            configs.append(config)
        if len(configs) == k:
            break
    if len(configs) < k:
        raise StudyError(f"--top-k {k}: the study has only {len(configs)} distinct completed trials")
    return configs


# The ResNet gets the standard recipe rather than LeNet's tuned optimizer and learning rate,
# which need not suit a 11-23M parameter network with batch norm.
RESNET_RECIPE = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0}


def resnet_spec(base: TrialConfig, resnet: str, seed: int) -> MemberSpec | None:
    """The ResNet baseline: same data, epochs and batch size as the members, whole train split."""
    if resnet not in RESNETS:
        raise ConfigError(f"unknown --resnet {resnet!r}; choose one of: {', '.join(RESNETS)}")
    if resnet == "none":
        return None
    values = {
        **base.to_dict(),
        **RESNET_RECIPE,
        "model": resnet,
        "variant": None,
        "activation": None,
        "pooling": None,
        "seed": seed,
    }
    return MemberSpec(name=resnet, config=from_dict(values, source="--resnet"), bootstrap_seed=None)


# ------------------------------------------------------------------ training in parallel


def _train_member_task(spec: MemberSpec, data: ImageData) -> MemberOutput:
    """In a Ray worker: place the member on what Ray granted, then train it."""
    from study.common.placement import place

    config, placement = place(spec.config)
    output = train_member(replace(spec, config=config), data)
    output.summary.update(placement.as_columns())
    return output


def reuse_checkpoints(
    specs: list[MemberSpec], folder: Path, say: Any
) -> tuple[dict[str, MemberOutput], list[MemberSpec]]:
    """(members read back from ``folder``, members still to train); damaged ones are named."""
    outputs: dict[str, MemberOutput] = {}
    todo = []
    for spec in specs:
        try:
            loaded = load_member(spec, folder)
        except UnreadableCheckpoint as exc:
            say(f"warning: {spec.name}'s checkpoint cannot be read ({exc}); training it again")
            loaded = None
        if loaded is None:
            todo.append(spec)
        else:
            outputs[spec.name] = loaded
    return outputs, todo


def train_all(
    specs: list[MemberSpec],
    *,
    data: ImageData,
    cluster: Any,
    folder: Path,
    say: Any = print,
) -> dict[str, MemberOutput]:
    """Train every spec not already checkpointed in ``folder``, ``plan.concurrent`` at a time."""
    from study.common.cluster import map_on_ray, ray_session

    outputs, todo = reuse_checkpoints(specs, folder, say)
    with ray_session(cluster) as session:
        plan = session.plan
        say(
            f"Ray dashboard: {session.dashboard_url or 'not available'}; {len(todo)} models to "
            f"train, {len(outputs)} reused from {folder / MEMBERS_FOLDER}, {plan.concurrent} at a time"
        )

        def keep(spec: MemberSpec, output: MemberOutput) -> str:
            save_member(output, folder)
            outputs[spec.name] = output
            return f"{spec.name} test acc {output.summary['test_acc']:.4f}"

        map_on_ray(
            _train_member_task,
            todo,
            data=data,
            plan=plan,
            label="models",
            name=lambda spec: spec.name,
            on_result=keep,
            already_done=len(outputs),
        )
    return outputs


def run_ensemble(
    configs: list[TrialConfig],
    *,
    base: TrialConfig,
    members: int,
    resnet: str,
    data: ImageData,
    cluster: Any,
    out: Path,
    name: str,
    resume: bool = False,
    overwrite: bool = False,
    say: Any = print,
) -> dict[str, Any]:
    """Train (or, with ``resume``, reuse) the members and the baseline, vote, and write every
    table and figure to OUT/NAME/ensemble/."""
    from study.common.files import run_folder

    with run_folder(out, name, "ensemble", resume=resume, overwrite=overwrite) as folder:
        return _run_ensemble_in(
            folder, configs, base=base, members=members, resnet=resnet, data=data, cluster=cluster, say=say
        )


def _run_ensemble_in(
    folder: Path,
    configs: list[TrialConfig],
    *,
    base: TrialConfig,
    members: int,
    resnet: str,
    data: ImageData,
    cluster: Any,
    say: Any,
) -> dict[str, Any]:
    from study.common.files import write_provenance
    from study.ensemble.analysis import analyze

    specs = member_specs(configs, members, seed=base.seed)
    baseline = resnet_spec(base, resnet, seed=base.seed)
    outputs = train_all(
        specs + ([baseline] if baseline else []), data=data, cluster=cluster, folder=folder, say=say
    )
    summary = analyze(
        [outputs[s.name] for s in specs],
        outputs[baseline.name] if baseline else None,
        data,
        folder,
        seed=base.seed,
    )
    resnet_part = f"; {baseline.name} {summary['resnet_test_acc']:.4f}" if baseline else ""
    say(
        f"mean single-member test accuracy {summary['mean_member_test_acc']:.4f}; hard vote "
        f"{summary['hard_vote_test_acc']:.4f}; soft vote {summary['soft_vote_test_acc']:.4f}" + resnet_part
    )
    vs_resnet = f", vs {baseline.name} {summary['mcnemar_p_hard_vote_vs_resnet']:.3g}" if baseline else ""
    say(
        f"McNemar p (hard vote vs best member) {summary['mcnemar_p_hard_vote_vs_best_member']:.3g}"
        f"{vs_resnet}; disagreement {summary['mean_pairwise_disagreement']:.4f}, oracle "
        f"{summary['oracle_accuracy']:.4f}, ensemble OOB {summary['ensemble_oob_acc']:.4f}"
    )
    write_provenance(folder, data=data, extra={"kind": "ensemble", "members": members, "resnet": resnet})
    say(f"results -> {folder}")
    return summary
