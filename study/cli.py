"""``study``: the command line. Each command parses flags into a ``TrialConfig`` and hands it on."""

from __future__ import annotations

import functools
import gc
import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from lenet_core.allocator import keep_freed_memory
from lenet_core.config import from_dict
from lenet_core.errors import StudyError
from study.common.cluster import ClusterOptions
from study.common.console import console, one_line_errors
from study.common.flags import ConfigFileOption, load_config_file, resolve_config, trial_config_flags
from study.common.placement import without_placement

app = typer.Typer(
    name="study",
    help="LeNet-5 hyperparameter and ensemble study on MNIST-style digits (Ray Tune + Optuna).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # help texts are plain text: "[fixed]" or "[space]" stay as written, not read as rich markup
    rich_markup_mode=None,
    add_completion=False,
)

OutOption = Annotated[Path, typer.Option("--out", help="Results root; files go to OUT/NAME/<command>/.")]
NameOption = Annotated[
    str | None,
    typer.Option("--name", help="Run name (folder under --out). Default: <command>-<dataset>-<time>."),
]

ResumeOption = Annotated[
    bool,
    typer.Option(help="Continue the run --name after an interrupt or crash; finished work is kept."),
]
OverwriteOption = Annotated[
    bool, typer.Option(help="Replace the results already in OUT/NAME for this command (they are deleted).")
]

# Where trials run: the same flags and meaning for `study tune` and `study ensemble`.
GpusOption = Annotated[
    str,
    typer.Option(
        "--gpus",
        help="GPUs the study may use in total: auto = every GPU CUDA sees here (with --address: what "
        "the cluster reports); a number caps it; 0 trains on the CPU.",
    ),
]
BindOption = Annotated[
    str,
    typer.Option(
        "--bind",
        help="Interface a local study's Ray listens on (GCS, raylet, object manager, agents, workers). "
        "Anything but 127.0.0.1 exposes them. --dashboard-host still sets the dashboard's.",
    ),
]
GpusPerTrialOption = Annotated[
    float | None,
    typer.Option(
        "--gpus-per-trial",
        help="GPUs per trial; a fraction packs trials (0.25 = four per GPU). Default 1 with --gpus.",
        show_default=False,
    ),
]
CpusPerTrialOption = Annotated[
    int,
    typer.Option("--cpus-per-trial", help="CPUs (and torch threads) per trial; 1 runs one trial per core."),
]
MaxConcurrentOption = Annotated[
    int | None,
    typer.Option(
        "--max-concurrent",
        help="Cap on trials running at once. Default: as many as resources allow.",
        show_default=False,
    ),
]
AddressOption = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Join an existing Ray cluster (HOST:PORT, e.g. from `ray start --head`).",
        show_default=False,
    ),
]
DashboardPortOption = Annotated[
    int | None,
    typer.Option(
        "--dashboard-port",
        help="Ray dashboard port (local Ray only). Default 8265, or the next free one after it.",
        show_default=False,
    ),
]
DashboardOption = Annotated[
    bool,
    typer.Option(
        "--dashboard/--no-dashboard",
        envvar="STUDY_DASHBOARD",
        help="Start the Ray dashboard with a local Ray (watch trials there). --no-dashboard or "
        "STUDY_DASHBOARD=0 skips it: about 1.5 s and one process less, for batch jobs and tests.",
    ),
]
DashboardHostOption = Annotated[
    str,
    typer.Option(
        "--dashboard-host",
        help="Interface the dashboard binds to. Anything but 127.0.0.1 exposes job submission.",
    ),
]


# Packing (lenet_core.packed): the same flags and meaning for `study ensemble` and `study run`.
PackOption = Annotated[
    str | None,
    typer.Option(
        "--pack",
        metavar="K",
        help="Train up to K LeNet-5s of one shape (ensemble members of one config, seed and bagged; "
        "sweep runs sharing architecture, batch size and split, such as a condition's seeds) as one "
        "pack in one Ray task: one vectorized step for all, 1.36x the images/s of one after another "
        "at K = 5 on a CPU core (study bench --pack), levelling off above about 4. Fewer per pack "
        "when K would leave cores idle; a ResNet or fp16 run trains alone. Default 5, on a GPU too "
        "until measured there.",
        show_default=False,
    ),
]
NoPackOption = Annotated[
    bool,
    typer.Option("--no-pack", help="Train every model alone, one per Ray task (as --pack 1)."),
]


def parse_pack(pack: str | None, no_pack: bool) -> int | None:
    """--pack K / --no-pack: K (a whole number >= 1), 1, or None for the default (DEFAULT_PACK)."""
    from study.common.context import check_pack

    if no_pack:
        if pack is not None:
            raise StudyError("give --pack K or --no-pack, not both")
        return 1
    if pack is None:
        return None
    try:
        value: object = int(pack.strip())
    except ValueError:
        value = pack  # not a number: check_pack says so, in its one line
    return check_pack(value)


CLUSTER_FLAGS: dict[str, tuple[Any, Any]] = {
    "gpus": (GpusOption, "auto"),
    "gpus_per_trial": (GpusPerTrialOption, None),
    "cpus_per_trial": (CpusPerTrialOption, 1),
    "max_concurrent": (MaxConcurrentOption, None),
    "address": (AddressOption, None),
    "dashboard": (DashboardOption, True),
    "dashboard_port": (DashboardPortOption, None),
    "dashboard_host": (DashboardHostOption, "127.0.0.1"),
    "bind": (BindOption, "127.0.0.1"),
}


def parse_gpus(value: str) -> float | None:
    """--gpus: "auto" (None: decided when Ray starts) or a number of GPUs."""
    if value.strip().lower() == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise StudyError(f"--gpus must be auto or a number >= 0, got {value!r}") from None


def cluster_flags(func: Any) -> Any:
    """Give a command taking ``cluster: ClusterOptions`` the flags that build it, in one place."""
    own = inspect.signature(func)
    params = [p for p in own.parameters.values() if p.name != "cluster"]
    params += [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
        for n, (a, d) in CLUSTER_FLAGS.items()
    ]

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        values = {n: kwargs.pop(n) for n in CLUSTER_FLAGS}
        values["gpus"] = parse_gpus(values["gpus"])
        cluster = ClusterOptions(**values)
        return func(**kwargs, cluster=cluster)

    wrapper.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


@app.callback()
def study() -> None:
    """LeNet-5 hyperparameter and ensemble study on MNIST-style digits."""


@app.command()
@one_line_errors
@trial_config_flags()
def train(
    *,
    config_file: ConfigFileOption = None,
    out: OutOption = Path("results"),
    name: NameOption = None,
    overwrite: OverwriteOption = False,
    overrides: dict[str, Any],
) -> None:
    """Train one model and write its history, metrics and weights.

    Example: study train --dataset digits --epochs 3
    """
    from lenet_core.data import load_dataset
    from study.api import context_for
    from study.common.console import print_table
    from study.stages.train import run_train

    config = resolve_config(config_file, overrides)
    data = load_dataset(config.dataset, data_dir=config.data_dir)
    context = context_for(
        data,
        stage="train",
        out=out,
        name=name,
        cluster=None,
        resume=False,
        overwrite=overwrite,
        progress=console().print,
    )
    results, _ = run_train(config, context=context)
    print_table([{k: v for k, v in row.items() if k != "status"} for row in results.history], "history")


def main() -> None:
    # Every command may train or evaluate here, in this process: keep freed tensors' memory for
    # reuse rather than fault it back in every step (lenet_core/allocator.py).
    keep_freed_memory()
    try:
        app()
    finally:
        # Exiting after a run walks every object torch, pandas and Ray created (about a second
        # after `study train`); frozen objects are skipped. Every file is written and closed by now.
        gc.freeze()


@app.command()
@one_line_errors
@cluster_flags
@trial_config_flags(exclude=("threads",))
def tune(
    *,
    trials: Annotated[int, typer.Option(help="Number of trials to run.")] = 20,
    space_file: Annotated[
        Path | None,
        typer.Option("--space", help="TOML search space replacing the default ([space] and [fixed] tables)."),
    ] = None,
    scheduler: Annotated[
        str,
        typer.Option(help="Early stopping of poor trials: asha (see --grace-period) or none."),
    ] = "asha",
    grace_period: Annotated[
        int | None,
        typer.Option(
            help="ASHA: epochs every trial trains before it may be stopped (>= 1). Default: 3, clipped "
            "to --epochs when larger (say 2 with --epochs 2). One epoch is too few for LeNet: slow "
            "starters (small lr, cosine, warm-up) were stopped while still climbing.",
            show_default=False,
        ),
    ] = None,
    reduction_factor: Annotated[
        float | None,
        typer.Option(
            help="ASHA: rungs at grace, grace*F, grace*F^2, ... epochs below --epochs, and only the "
            "top 1/F of the trials at a rung continue (> 1). Default: 3.",
            show_default=False,
        ),
    ] = None,
    time_budget: Annotated[
        str | None,
        typer.Option(
            "--time-budget",
            help="Wall-time limit, e.g. 90s, 30m, 1h, 1h30m (a plain number is seconds). Once spent, "
            "no trial starts and running ones stop; a normal end, not an interrupt.",
            show_default=False,
        ),
    ] = None,
    seeds_per_trial: Annotated[
        int,
        typer.Option(
            "--seeds-per-trial",
            metavar="S",
            help="Train each trial's config on S seeds (--seed, --seed + 1, ...) as one pack in its "
            "Ray trial (one vectorized step, lenet_core.packed), and score it by their mean: each "
            "epoch Tune (ASHA, Optuna) sees the mean over the seeds of their best validation "
            "accuracy so far, with the spread of the epoch's validation accuracy (val_acc_std). "
            "trials.parquet holds the means of best_val_acc and test_acc and their std over seeds; "
            "study.json records S (a resume must match). 1: one plain run per trial.",
        ),
    ] = 1,
    resume: ResumeOption = False,
    overwrite: OverwriteOption = False,
    config_file: ConfigFileOption = None,
    out: OutOption = Path("results"),
    name: NameOption = None,
    cluster: ClusterOptions,
    overrides: dict[str, Any],
) -> None:
    """Search optimizer, lr, activation, pooling, batch size, lr schedule, weight decay, label
    smoothing and augmentation with Ray Tune + Optuna (TPE) + ASHA.

    A TrialConfig flag (e.g. --optimizer adam) fixes that field for every trial and removes it
    from the search. Writes trials.parquet/csv, epochs.parquet, best.json, summary.md, figures,
    run.json (with why the study stopped) and the Optuna study optuna.db to OUT/NAME/tune/
    (optuna-dashboard sqlite:///OUT/NAME/tune/optuna.db).
    """
    from study import api
    from study.common.console import print_table
    from study.common.selection import SELECTION_METRIC
    from study.stages.tune.optuna_store import storage_url
    from study.stages.tune.results import OPTUNA_FILE
    from study.stages.tune.run import parse_duration
    from study.stages.tune.tables import ranked, status_counts

    if resume and not name:
        raise StudyError("--resume needs the --name of the study to continue")
    file_values = load_config_file(config_file) if config_file else {}
    say = console().print
    results = api.tune(
        fixed=overrides,
        space=space_file,
        config=file_values or None,
        trials=trials,
        scheduler=scheduler,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
        time_budget_s=parse_duration(time_budget) if time_budget is not None else None,
        seeds_per_trial=seeds_per_trial,
        out=out,
        name=name,
        cluster=cluster,
        resume=resume,
        overwrite=overwrite,
        progress=say,
    )
    trials_frame = results.trials
    say(f"statuses: {status_counts(trials_frame)}")
    top = ranked(trials_frame).head(5)
    shown = [c for c in ["trial", *results.space.params, "status", SELECTION_METRIC, "test_acc"] if c in top]
    print_table(
        top[shown], f"top completed trials by {SELECTION_METRIC} (test accuracy is never used to select)"
    )
    folder = results.folder or out
    say(f"results -> {folder}")
    say(f"Optuna study {folder.parent.name!r}: optuna-dashboard {storage_url(folder / OPTUNA_FILE)}")


@app.command()
@one_line_errors
@cluster_flags
@trial_config_flags(exclude=("threads",))
def ensemble(
    *,
    members: Annotated[int, typer.Option(help="LeNet members per ensemble (>= 2 for a vote).")] = 5,
    repeats: Annotated[
        int,
        typer.Option(help="Independent ensembles with disjoint seeds; every row gets mean and 95% interval."),
    ] = 1,
    resample: Annotated[
        str,
        typer.Option(
            help="bootstrap: also a bagged ensemble beside the seed ensemble (same seeds); none: seed "
            "ensemble and single model only."
        ),
    ] = "bootstrap",
    from_dir: Annotated[
        Path | None,
        typer.Option(
            "--from", help="A study folder (results/NAME): use its tune/best.json config.", show_default=False
        ),
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(
            help="Heterogeneous ensemble: members cycle over the K best distinct tune trials.",
            show_default=False,
        ),
    ] = None,
    resnet: Annotated[
        str,
        typer.Option(
            help="ResNet baseline on the full training split: resnet18, resnet34, resnet50 or none.",
        ),
    ] = "resnet18",
    resnet_precision: Annotated[
        str | None,
        typer.Option(
            help="Precision of the ResNet alone (fp32, bf16, fp16); bf16 pays for ResNets on CPUs with "
            "AVX-512 bf16. Default: the members' --precision.",
            show_default=False,
        ),
    ] = None,
    resnet_epochs: Annotated[
        int | None,
        typer.Option(
            help="Most epochs of the ResNet (a ResNet epoch costs ~100 LeNet epochs on a CPU); it stops "
            "early on the members' --patience too. Default: the members' --epochs.",
            show_default=False,
        ),
    ] = None,
    pack: PackOption = None,
    no_pack: NoPackOption = False,
    resume: ResumeOption = False,
    overwrite: OverwriteOption = False,
    config_file: ConfigFileOption = None,
    out: OutOption = Path("results"),
    name: NameOption = None,
    cluster: ClusterOptions,
    overrides: dict[str, Any],
) -> None:
    """LeNet-5 ensembles against fair baselines: seed ensemble, bagged ensemble, single model, ResNet.

    All share one train/validation split (--split-seed). Members use the best tuned config (--from
    or --config), or the flags' config. --resume reuses the members already trained. Writes the
    comparison (intervals, calibration), McNemar tests, predictions, per-class errors and figures
    to OUT/NAME/ensemble/.
    """
    from study import api

    packing = parse_pack(pack, no_pack)  # bad --pack before anything else
    if from_dir is not None and config_file is not None:
        raise StudyError("give --from or --config, not both")
    file_values = load_config_file(config_file) if config_file is not None else {}
    api.ensemble(
        config=from_dict(without_placement(file_values), source=str(config_file)) if file_values else None,
        fixed=overrides,
        from_study=from_dir,
        top_k=top_k,
        members=members,
        repeats=repeats,
        resample=resample,
        resnet=resnet,
        resnet_precision=resnet_precision,
        resnet_epochs=resnet_epochs,
        pack=packing,
        out=out,
        name=name,
        cluster=cluster,
        resume=resume,
        overwrite=overwrite,
        progress=console().print,
    )


@app.command()
@one_line_errors
def bench(
    *,
    quick: Annotated[bool, typer.Option(help="Fewer rounds and smaller sizes: a few minutes.")] = False,
    core: Annotated[
        bool,
        typer.Option(
            help="The core sections: whole-process study train vs a DataLoader script, bf16 vs fp32, "
            "and the training loop A/B. --no-core runs only the opt-in sections."
        ),
    ] = True,
    study: Annotated[
        bool,
        typer.Option(
            "--study",
            help="Also a whole study tune against a Ray-docs-style Tune + Optuna script (minutes).",
        ),
    ] = False,
    ensemble: Annotated[
        bool,
        typer.Option(
            "--ensemble",
            help="Also study ensemble (5 LeNets + ResNet-18) with the ResNet in bf16 against fp32 "
            "(about 15 minutes on 2 cores).",
        ),
    ] = False,
    accuracy: Annotated[
        bool,
        typer.Option(
            "--accuracy",
            help="Also ResNet-18 test accuracy in bf16 against fp32 over --seeds seeds (an hour on 2 cores).",
        ),
    ] = False,
    pack: Annotated[
        bool,
        typer.Option(
            "--pack",
            help="Also K LeNet-5s trained as one pack against one after another, K = 1..16 (minutes; "
            "--no-core --pack runs only that).",
        ),
    ] = False,
    device: Annotated[
        str, typer.Option(help="Device of the in-process loop and --pack sections: cpu or cuda.")
    ] = "cpu",
    threads: Annotated[int, typer.Option(help="torch threads of the train, loop and --pack sections.")] = 1,
    rounds: Annotated[
        int | None,
        typer.Option(help="A/B rounds of every section (default: per section).", show_default=False),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Epochs of --ensemble and --accuracy.")] = 10,
    seeds: Annotated[int, typer.Option(help="Seeds of --accuracy.")] = 3,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Fashion-MNIST IDX folder. Default: /usr/share/datasets/fashion-mnist.", show_default=False
        ),
    ] = None,
    mnist_dir: Annotated[
        Path | None,
        typer.Option(
            help="MNIST folder for --ensemble and --accuracy. Default: ../shared/data/mnist-5k.",
            show_default=False,
        ),
    ] = None,
    out: OutOption = Path("results"),
) -> None:
    """Measure the project against the usual way of doing the same work, as ratios.

    Each A/B alternates both sides in one run and takes the median; both sides report the work
    they did. Prints the tables and writes OUT/bench/<timestamp>.json.
    """
    from study.bench import bench_command

    bench_command(  # prints its tables and where it wrote them
        quick=quick,
        core=core,
        study=study,
        ensemble=ensemble,
        accuracy=accuracy,
        pack=pack,
        device=device,
        threads=threads,
        rounds=rounds,
        epochs=epochs,
        seeds=seeds,
        data_dir=data_dir,
        mnist_dir=mnist_dir,
        out=out,
    )


@app.command()
@one_line_errors
@cluster_flags
@trial_config_flags(exclude=("threads",))
def run(
    experiment_file: Annotated[
        Path, typer.Argument(help="An experiment file, e.g. experiments/optimizers.toml.")
    ],
    *,
    smoke: Annotated[
        bool,
        typer.Option(
            help="Check the pipeline fast: 1 epoch, 1 seed, at most 2 values per swept list and 2 "
            "fractions (equal-steps epochs capped), trials and members cut to 2."
        ),
    ] = False,
    out: OutOption = Path("results"),
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Run name (folder under --out). Default: the experiment file's name.",
            show_default=False,
        ),
    ] = None,
    pack: PackOption = None,
    no_pack: NoPackOption = False,
    resume: ResumeOption = False,
    overwrite: OverwriteOption = False,
    cluster: ClusterOptions,
    overrides: dict[str, Any],
) -> None:
    """Run an experiment file (sweep, data-fraction, tune or ensemble) through Ray.

    TrialConfig flags (e.g. --dataset digits, --data-dir DIR) override the file's [fixed] values.
    Writes tables (parquet + CSV), per-epoch curves, summaries and figures to OUT/NAME/, and
    OUT/NAME/REPORT.md (as study report does).
    """
    from study import api

    api.run_experiment(
        experiment_file,
        smoke=smoke,
        fixed=overrides,
        pack=parse_pack(pack, no_pack),
        out=out,
        name=name,
        cluster=cluster,
        resume=resume,
        overwrite=overwrite,
        progress=console().print,
    )


@app.command()
@one_line_errors
def report(
    folder: Annotated[Path, typer.Argument(help="A results folder: results/NAME.")],
    previous: Annotated[
        Path | None,
        typer.Option(
            "--previous",
            help="An earlier run of the same experiment (a folder as it wrote it): the report lists "
            "each of its verdicts beside this run's and whether it survived.",
            show_default=False,
        ),
    ] = None,
    reanalyse: Annotated[
        bool,
        typer.Option(
            "--reanalyse",
            help="First rewrite the folder's tables (and the figures drawn from them) with this "
            "version's statistics, from the runs it holds; nothing is trained again.",
        ),
    ] = False,
) -> None:
    """Write FOLDER/REPORT.md: what was run, summary tables, figures, and what they show.

    Works for tune, ensemble, train and experiment folders; every sentence is computed from the
    numbers in the folder.
    """
    from study.writeup import write_report

    if previous is not None and not previous.is_dir():
        raise StudyError(f"--previous {previous} is not a results folder")
    console().print(f"-> {write_report(folder, previous=previous, reanalyse=reanalyse)}")
