"""`study ensemble`: LeNet ensembles against fair baselines, trained as Ray tasks, then voted.

Every model shares one train/validation split (``split_seed``). Per repeat, with M members:

- a *seed ensemble*: M LeNets on the full training split, differing only by seed; each of them
  is also one draw of the *single model* baseline (mean and interval over seeds);
- a *bagged ensemble* (``resample="bootstrap"``): M LeNets, each on a seeded bootstrap resample
  of the split, with the same M seeds (so bagging is the only difference); out-of-bag images are
  known, so OOB accuracy comes for free;
- the ResNet baseline on the full split.

``repeats`` independent ensembles use disjoint seeds. LeNet members of one config (seed and
bagged alike: a bootstrap resample has the split's length) train as packs of up to ``--pack`` in
one Ray task each (``lenet_core.packed``); the ResNet trains alone. Members are checkpointed as
they finish, a pack's as soon as it returns (weights, test and OOB probabilities); ``--resume``
reuses them and packs only the members still missing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lenet_core.config import TrialConfig, from_dict
from lenet_core.errors import ConfigError, StudyError
from study.common.context import RunContext
from study.common.executor import UnreadableOutput, run_units
from study.common.files import provenance, read_json
from study.common.placement import without_placement
from study.common.results import write_run_info
from study.stages.ensemble.members import (
    MemberOutput,
    MemberSpec,
    UnreadableCheckpoint,
    load_member,
    member_specs,
    resnet_specs,
    save_member,
    train_member,
    train_members,
)
from study.stages.ensemble.results import EnsembleResults

STAGE = "ensemble"  # OUT/NAME/ensemble

# ------------------------------------------------------------------ where configs come from


def find_tune_folder(from_dir: Path) -> Path:
    """The tune stage folder of a study (results/NAME) or the folder itself (results/NAME/tune)."""
    from study.stages.tune.results import BEST_FILE

    for candidate in (from_dir / "tune", from_dir):
        if (candidate / BEST_FILE).is_file():
            return candidate
    raise StudyError(
        f"--from {from_dir}: no {BEST_FILE} there (looked in {from_dir}/tune and {from_dir}); "
        "run study tune first or pass --config"
    )


def config_from_best(path: Path) -> dict[str, Any]:
    """The tuned config of a best.json, less where it ran: members run where Ray places them."""
    payload = read_json(path, what="tuned config")
    if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict):
        raise StudyError(f"{path}: missing the 'config' entry of a best.json")
    return without_placement(payload["config"])


def top_k_configs(tune_folder: Path, k: int, overrides: dict[str, Any]) -> list[TrialConfig]:
    """The K best distinct completed configs of a tune study, by the one selection metric (the
    same ranking as its best.json), with ``overrides`` applied."""
    from study.stages.tune.results import TuneResults

    ranked = TuneResults.read(tune_folder).top_configs(k)
    configs = list(
        dict.fromkeys(
            from_dict({**without_placement(c.to_dict()), **overrides}, source=str(tune_folder))
            for c in ranked
        )
    )
    if len(configs) < k:
        raise StudyError(f"--top-k {k}: the study has only {len(configs)} distinct completed trials")
    return configs


@dataclass(frozen=True)
class MemberStore:
    """Each trained model's checkpoint under ``members/NAME``, so a resume can skip it."""

    folder: Path

    def load(self, spec: MemberSpec) -> MemberOutput | None:
        try:
            return load_member(spec, self.folder)
        except UnreadableCheckpoint as exc:
            raise UnreadableOutput(str(exc)) from exc

    def save(self, spec: MemberSpec, output: MemberOutput) -> None:
        save_member(output, self.folder)

    def note(self, spec: MemberSpec, output: MemberOutput) -> str:
        return f"{spec.name} test acc {output.summary['test_acc']:.4f}"


@dataclass(frozen=True)
class EnsemblePlan:
    """What `study ensemble` trains besides the members' own config."""

    members: int = 5
    repeats: int = 1
    resample: str = "bootstrap"  # "none": the seed ensemble and the single model only
    resnet: str = "resnet18"
    resnet_precision: str | None = None  # None: the members' precision
    resnet_epochs: int | None = None  # None: the members' epochs (the ResNet never stops early)

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
    configs: list[TrialConfig], *, base: TrialConfig, plan: EnsemblePlan, context: RunContext
) -> EnsembleResults:
    """Train (or, with ``resume``, read back) every model, vote, and write every table and figure
    to OUT/NAME/ensemble/."""
    from study.stages.ensemble.analysis import analyze, write_figures

    specs = plan.specs(configs, base)  # validates the plan before anything is written
    # Longest first: the ResNets start at once on their own CPUs while the LeNet members share
    # the rest, so no core waits for one long task at the end (2 cores: ResNet || 2x5 LeNets).
    order = sorted(specs, key=lambda spec: spec.group != "baseline")
    with context.stage_folder(STAGE) as folder:

        def tables(outputs: dict[str, MemberOutput]) -> EnsembleResults:
            trained = [outputs[s.name] for s in specs]
            run = provenance(context.data, kind=STAGE, plan=vars(plan), pack=context.pack)
            results = dataclasses.replace(analyze(trained, context.data, run=run), folder=folder)
            results.write_tables(folder)
            write_figures(trained, results, context.data, folder)
            write_run_info(folder, results.run)  # last: the run's files are complete
            return results

        results = run_units(
            order,
            work=train_member,
            work_pack=train_members,  # LeNets of one config (seed and bagged) train as packs
            pack=context.pack,
            store=MemberStore(folder),
            context=context,
            label="models",
            then=tables,
        )
    for line in results.console_lines():
        context.progress(line)
    context.progress(f"results -> {folder}")
    return results
