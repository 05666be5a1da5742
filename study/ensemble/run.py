"""`study ensemble`: LeNet ensembles against fair baselines, trained as Ray tasks, then voted.

Every model shares one train/validation split (``split_seed``). Per repeat, with M members:

- a *seed ensemble*: M LeNets on the full training split, differing only by seed; each of them
  is also one draw of the *single model* baseline (mean and interval over seeds);
- a *bagged ensemble* (``resample="bootstrap"``): M LeNets, each on a seeded bootstrap resample
  of the split, with the same M seeds (so bagging is the only difference); out-of-bag images are
  known, so OOB accuracy comes for free;
- the ResNet baseline on the full split.

``repeats`` independent ensembles use disjoint seeds. Members are checkpointed as they finish
(weights, test and OOB probabilities); ``--resume`` reuses them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from lenet_core.config import TrialConfig, from_dict
from lenet_core.data import ImageData
from lenet_core.errors import ConfigError, StudyError
from study.common.files import read_json
from study.common.placement import without_placement
from study.ensemble.members import (
    MEMBERS_FOLDER,
    MemberOutput,
    MemberSpec,
    UnreadableCheckpoint,
    load_member,
    member_specs,
    resnet_specs,
    save_member,
    train_member,
)

T = TypeVar("T")

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
    then: Callable[[dict[str, MemberOutput]], T],
    say: Any = print,
) -> T:
    """Train every spec not already checkpointed in ``folder``, ``plan.concurrent`` at a time,
    and return ``then`` of every model's output by name; ``then`` (the analysis) starts as Ray
    shuts down (``ray_session_then``)."""
    from study.common.cluster import ray_session_then
    from study.common.executor import map_on_ray

    outputs, todo = reuse_checkpoints(specs, folder, say)
    # Longest first: the ResNets start at once on their own CPUs while the LeNet members share
    # the rest, so no core waits for one long task at the end (2 cores: ResNet || 2x5 LeNets).
    todo.sort(key=lambda spec: spec.group != "baseline")
    with ray_session_then(cluster) as (session, start):
        plan = session.plan
        say(
            f"{session.dashboard_text}; {len(todo)} models to "
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
        finished = start(then, outputs)
    return finished.result()


@dataclass(frozen=True)
class EnsemblePlan:
    """What `study ensemble` trains besides the members' own config."""

    members: int = 5
    repeats: int = 1
    resample: str = "bootstrap"  # "none": the seed ensemble and the single model only
    resnet: str = "resnet18"
    resnet_precision: str | None = None  # None: the members' precision
    resnet_epochs: int | None = None  # None: the members' epochs (patience applies to both)

    def specs(self, configs: list[TrialConfig], base: TrialConfig) -> list[MemberSpec]:
        """Every model to train, members first, then the ResNet of each repeat."""
        members = member_specs(
            configs, self.members, seed=base.seed, repeats=self.repeats, resample=self.resample
        )
        if self.resnet_epochs is not None and self.resnet_epochs < 1:
            raise ConfigError(f"--resnet-epochs must be >= 1, got {self.resnet_epochs}")
        resnet_base = base.replace(
            precision=self.resnet_precision or base.precision, epochs=self.resnet_epochs or base.epochs
        )
        return members + resnet_specs(resnet_base, self.resnet, seed=base.seed, repeats=self.repeats)


def run_ensemble(
    configs: list[TrialConfig],
    *,
    base: TrialConfig,
    plan: EnsemblePlan,
    data: ImageData,
    cluster: Any,
    out: Path,
    name: str,
    resume: bool = False,
    overwrite: bool = False,
    say: Any = print,
) -> dict[str, Any]:
    """Train (or, with ``resume``, reuse) every model, vote, and write every table and figure
    to OUT/NAME/ensemble/."""
    from study.common.files import run_folder, write_provenance
    from study.ensemble.analysis import analyze

    specs = plan.specs(configs, base)  # validates the plan before anything is written
    with run_folder(out, name, "ensemble", resume=resume, overwrite=overwrite) as folder:
        summary = train_all(
            specs,
            data=data,
            cluster=cluster,
            folder=folder,
            then=lambda outputs: analyze([outputs[s.name] for s in specs], data, folder),
            say=say,
        )
        write_provenance(folder, data=data, extra={"kind": "ensemble", "plan": vars(plan)})
    for line in summary["lines"]:
        say(line)
    say(f"results -> {folder}")
    return summary
