"""The Python API: the same studies as the ``study`` command, from a notebook or a script.

    import study
    results = study.tune(fixed={"dataset": "digits", "epochs": 3}, trials=8, name="my-search")
    results.best_config                     # a TrialConfig
    members = study.ensemble(config=results.best_config, members=5, name="my-search")
    study.load("results/my-search").tune.trials

Every function is keyword-only, writes the same files as its command under OUT/NAME/<stage>/
and returns that stage's results type. Bad input raises ``lenet_core.StudyError`` (one line).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lenet_core.config import TrialConfig, from_dict
from lenet_core.errors import StudyError
from study.common.cluster import ClusterOptions
from study.common.context import DEFAULT_PACK, RunContext, check_pack
from study.common.files import default_run_name

if TYPE_CHECKING:
    from lenet_core.data import ImageData
    from study.reader import StudyResults
    from study.stages.ensemble.results import EnsembleResults
    from study.stages.tune.results import TuneResults
    from study.stages.tune.space import SearchSpace


def context_for(
    data: ImageData,
    *,
    stage: str,
    out: str | Path,
    name: str | None,
    cluster: ClusterOptions | None,
    resume: bool,
    overwrite: bool,
    progress: Callable[[str], None],
    pack: int | None = None,
) -> RunContext:
    """The RunContext of a stage; ``pack`` None is the default (``DEFAULT_PACK``), 1 no packing."""
    if resume and not name:
        raise StudyError("resume needs the name of the run to continue")
    return RunContext(
        data=data,
        out=Path(out),
        name=name or default_run_name(stage, data.name),
        cluster=cluster or ClusterOptions(),
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        pack=DEFAULT_PACK if pack is None else pack,
    )


def _load_data(config: TrialConfig, data: ImageData | None) -> ImageData:
    from lenet_core.data import load_dataset

    return data if data is not None else load_dataset(config.dataset, data_dir=config.data_dir)


def tune(
    *,
    fixed: Mapping[str, Any] | None = None,
    space: SearchSpace | str | Path | None = None,
    config: TrialConfig | Mapping[str, Any] | None = None,
    trials: int = 20,
    scheduler: str = "asha",
    grace_period: int | None = None,
    reduction_factor: float | None = None,
    time_budget_s: float | None = None,
    seeds_per_trial: int = 1,
    data: ImageData | None = None,
    out: str | Path = "results",
    name: str | None = None,
    cluster: ClusterOptions | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable[[str], None] = print,
) -> TuneResults:
    """A Ray Tune + Optuna (TPE) + ASHA search; its files go to OUT/NAME/tune/.

    ``fixed`` holds TrialConfig fields fixed for every trial (a searched one leaves the search);
    ``space`` replaces the default space (a ``SearchSpace`` or a TOML file); ``config`` fills the
    fields that are not searched (e.g. a best.json's config). ``data`` skips loading the dataset.
    ASHA lets every trial train ``grace_period`` epochs (default 3, clipped to the epoch cap)
    before it may stop it, then keeps the top 1/``reduction_factor`` (default 3) at each rung.
    ``seeds_per_trial`` S > 1 trains each trial's config on S seeds as one pack and scores it by
    their mean (trials get ``best_val_acc_std`` and ``test_acc_std``); 1 is one plain run.
    """
    from study.stages.tune.run import TuneSettings, run_study
    from study.stages.tune.space import (
        GRACE_PERIOD,
        REDUCTION_FACTOR,
        SearchSpace,
        default_space,
        load_space,
        split_base_and_space,
    )

    settings = TuneSettings(
        trials=trials,
        scheduler=scheduler,
        time_budget_s=time_budget_s,
        grace_period=GRACE_PERIOD if grace_period is None else grace_period,
        reduction_factor=REDUCTION_FACTOR if reduction_factor is None else reduction_factor,
        seeds_per_trial=seeds_per_trial,
    )
    searched = (
        space if isinstance(space, SearchSpace) else (load_space(Path(space)) if space else default_space())
    )
    given = config.to_dict() if isinstance(config, TrialConfig) else dict(config or {})
    base, searched = split_base_and_space(searched, given, dict(fixed or {}))
    loaded = _load_data(base, data)
    context = context_for(
        loaded,
        stage="tune",
        out=out,
        name=name,
        cluster=cluster,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
    )
    return run_study(base=base, space=searched, settings=settings, context=context)


def ensemble(
    *,
    config: TrialConfig | None = None,
    fixed: Mapping[str, Any] | None = None,
    from_study: str | Path | None = None,
    top_k: int | None = None,
    members: int = 5,
    repeats: int = 1,
    resample: str = "bootstrap",
    resnet: str = "resnet18",
    resnet_precision: str | None = None,
    resnet_epochs: int | None = None,
    pack: int | None = None,
    data: ImageData | None = None,
    out: str | Path = "results",
    name: str | None = None,
    cluster: ClusterOptions | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable[[str], None] = print,
) -> EnsembleResults:
    """Seed ensemble, bagged ensemble, single model and a ResNet on one split; files go to
    OUT/NAME/ensemble/.

    The members' config is ``config``, or the best trial of the tune study ``from_study``
    (results/NAME), with ``fixed`` fields on top; ``top_k`` cycles members over that study's K
    best distinct configs by the selection metric. LeNet members of one config train as packs of
    at most ``pack`` per Ray task (None: ``DEFAULT_PACK``, 5; 1: each alone).
    """
    from study.common.placement import without_placement
    from study.stages.ensemble.run import (
        EnsemblePlan,
        config_from_best,
        find_tune_folder,
        run_ensemble,
        top_k_configs,
    )
    from study.stages.tune.results import BEST_FILE

    if members < 2:
        raise StudyError(f"members must be >= 2 for a vote, got {members}")
    if pack is not None:
        check_pack(pack)
    if from_study is not None and config is not None:
        raise StudyError("give config or from_study, not both")
    overrides = dict(fixed or {})
    tune_folder = find_tune_folder(Path(from_study)) if from_study is not None else None
    # the study's published choice (its best.json, by the one selection metric), less placement
    values = config_from_best(tune_folder / BEST_FILE) if tune_folder is not None else {}
    if config is not None:
        values = without_placement(config.to_dict())
    base = from_dict({**values, **overrides}, source="ensemble config")
    if top_k is not None:
        if top_k < 1 or tune_folder is None:
            raise StudyError("top_k needs K >= 1 and a tune study (from_study)")
        configs = top_k_configs(tune_folder, top_k, overrides)
    else:
        configs = [base]
    if any(c.model != "lenet5" for c in configs):
        raise StudyError("ensemble members are LeNet-5; the ResNet baseline is set by resnet")
    plan = EnsemblePlan(
        members=members,
        repeats=repeats,
        resample=resample,
        resnet=resnet,
        resnet_precision=resnet_precision,
        resnet_epochs=resnet_epochs,
    )
    plan.specs(configs, base)  # bad members, repeats, resample, resnet: before loading data
    loaded = _load_data(base, data)
    context = context_for(
        loaded,
        stage="ensemble",
        out=out,
        name=name,
        cluster=cluster,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        pack=pack,
    )
    return run_ensemble(configs, base=base, plan=plan, context=context)


def run_experiment(
    path: str | Path,
    *,
    smoke: bool = False,
    fixed: Mapping[str, Any] | None = None,
    pack: int | None = None,
    data: ImageData | None = None,
    out: str | Path = "results",
    name: str | None = None,
    cluster: ClusterOptions | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable[[str], None] = print,
) -> StudyResults:
    """An experiment file (sweep, data-fraction, tune, ensemble, tune-ensemble) through its
    stages, then its REPORT.md; files go to OUT/NAME (NAME: the file's name by default). Sweep
    runs and ensemble members of one shape train as packs of at most ``pack`` per Ray task
    (None: ``DEFAULT_PACK``, 5; 1: each alone)."""
    from study.experiments import execute, load_experiment
    from study.reader import load
    from study.writeup import write_report

    if pack is not None:
        check_pack(pack)
    experiment = load_experiment(Path(path))
    if smoke:
        experiment = experiment.smoke()
    experiment = experiment.with_overrides(dict(fixed or {}))
    base = experiment.base_config()
    context = context_for(
        _load_data(base, data),
        stage=experiment.name,
        out=out,
        name=name or experiment.name,
        cluster=cluster,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        pack=pack,
    )
    root = execute(experiment, context=context)
    progress(f"results -> {root}; report -> {write_report(root)}")
    return load(root)
