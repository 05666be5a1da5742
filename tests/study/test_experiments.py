"""Experiment files: every file parses and asks its question at a faithful budget; the sweep
files run with --smoke on the digits and yield their tables and figures; `study report` writes a
REPORT.md whose sentences quote the numbers in them. Selection by validation, equal-steps budgets
and the per-grid format are checked on hand-made tables and configs."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from lenet_core.errors import ConfigError
from study.cli import app
from study.common.context import RunContext
from study.experiments import EQUAL_EPOCHS, EQUAL_STEPS, load_experiment, parse_experiment
from study.stages.sweep.tables import select_by_validation, selected_view
from tests.conftest import PROJECT_ROOT

EXPERIMENTS = PROJECT_ROOT / "experiments"
# name -> (per-epoch figure, rows of the smoke runs table, trained runs); smoke keeps at most 2
# values of every swept list (the compare_at value among them) and caps every run at 1 epoch
SWEEPS = {
    "optimizers": ("train_loss_per_epoch.png", 12, 12),
    "learning-rates": ("train_loss_per_epoch.png", 2, 2),
    "lenet-variants": ("val_acc_per_epoch.png", 8, 8),
    "data-fraction": ("error_vs_training_examples.png", 4, 2),  # 2 budgets x 2 fractions, shared
    "augmentation": ("val_acc_per_epoch.png", 2, 2),
    "fashion-augment": ("val_acc_per_epoch.png", 2, 2),
    "lenet-vs-resnet": ("test_error_per_epoch.png", 2, 2),
    "pytorch-mnist-example": ("val_acc_per_epoch.png", 1, 1),
    "budget-check": ("val_acc_per_epoch.png", 2, 1),  # smoke caps both budgets at 1 epoch: one run
}
# the grids that add nothing the others do not check run with the slow tests (resnet50 is heavy)
SLOW = {
    "lenet-variants",
    "augmentation",
    "fashion-augment",
    "lenet-vs-resnet",
    "learning-rates",
    "data-fraction",
    "pytorch-mnist-example",
    "budget-check",
}
# Adadelta at lr 1 with batch 64 takes 20 steps of the 8x8 digits in a smoke epoch and collapses:
# smaller batches give the report a number to quote (the file's recipe is checked on its own)
# ResNet-50 trains and tests every epoch: a quarter of the digits' training split is enough to
# check the parameters and time columns
SMOKE_FLAGS = {
    "pytorch-mnist-example": ["--batch-size", "16"],
    "lenet-vs-resnet": ["--train-fraction", "0.25"],
}
# a valid tune-ensemble file to break one anchor key of
ANCHORED = {"kind": "tune-ensemble", "space": {"lr": {"low": 0.1, "high": 1.0}}, "anchor_source": "x"}
runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(shared_ray, tmp_path_factory):
    """``smoke(name)``: the folder of `study run experiments/NAME.toml --smoke --dataset digits`
    and its REPORT.md, run once per module whichever tests ask for it."""
    done: dict[str, Path] = {}

    def run(name: str) -> Path:
        if name not in done:
            out = tmp_path_factory.mktemp("smoke")
            path = str(EXPERIMENTS / f"{name}.toml")
            flags = SMOKE_FLAGS.get(name, [])
            args = ["run", path, "--smoke", "--dataset", "digits", *flags, "--out", str(out)]
            result = runner.invoke(app, args)
            assert result.exit_code == 0, result.output
            report = runner.invoke(app, ["report", str(out / name)])
            assert report.exit_code == 0, report.output
            done[name] = out / name
        return done[name]

    return run


# ------------------------------------------------------------------ the files themselves


def test_every_experiment_file_parses_with_five_seeds_and_a_stated_budget():
    names = {p.stem for p in EXPERIMENTS.glob("*.toml")}
    assert names == {*SWEEPS, "search", "ensemble", "fashion"}
    for path in EXPERIMENTS.glob("*.toml"):
        experiment = load_experiment(path)
        assert experiment.description
        if experiment.kind in ("sweep", "data-fraction"):
            # ResNets are costly: 3 seeds is the stated minimum there, 5 everywhere else
            assert experiment.seeds >= (3 if path.stem == "lenet-vs-resnet" else 5), path.stem
            base = experiment.base_config()
            # trained to a validation plateau, or the budget is part of the question it states
            assert base.patience > 0 or "epochs" in experiment.description, path.stem


def test_optimizers_each_get_their_own_learning_rate_range():
    experiment = load_experiment(EXPERIMENTS / "optimizers.toml")
    assert experiment.select == "lr" and experiment.compare_at == {"lr": 1e-3}
    lrs: dict[str, list[float]] = {}
    for point in experiment.grid_points():
        lrs.setdefault(point["optimizer"], []).append(point["lr"])
    assert set(lrs) == {"sgd", "adadelta", "adagrad", "rmsprop", "adam", "adamax"}
    for optimizer, grid in lrs.items():
        assert len(grid) >= 4 and max(grid) / min(grid) >= 1e3 - 1e-6, optimizer  # 3 decades at least
        assert 1e-3 in grid, optimizer  # the fixed-lr view needs every optimizer at 1e-3
    assert 1.0 in lrs["adadelta"] and 10.0 in lrs["adadelta"]  # Adadelta's default is 1.0
    assert max(lrs["sgd"]) == 1.0 and max(lrs["rmsprop"]) == 0.1 and min(lrs["adam"]) == 1e-4
    runs = experiment.configs()
    assert len(runs) == sum(map(len, lrs.values())) * experiment.seeds
    # a fixed budget (issue #24): 20 epochs, no early stopping, the best validation epoch kept
    assert {c.epochs for c in runs} == {20} and {c.patience for c in runs} == {0}
    assert {c.seed for c in runs} == set(range(experiment.seeds))


def test_smoke_cuts_to_one_epoch_one_seed_and_two_values_keeping_compare_at():
    smoke = load_experiment(EXPERIMENTS / "optimizers.toml").smoke()
    configs = smoke.configs()
    assert {c.epochs for c in configs} == {1} and {c.seed for c in configs} == {0}
    per_optimizer: dict[str, set[float]] = {}
    for c in configs:
        per_optimizer.setdefault(c.optimizer, set()).add(c.lr)
    assert all(len(v) == 2 and 1e-3 in v for v in per_optimizer.values()), per_optimizer
    fractions = load_experiment(EXPERIMENTS / "data-fraction.toml").smoke()
    # equal steps would train 1/16 of the data for 16x the epochs: smoke caps every run at 1
    assert {c.epochs for c in fractions.configs()} == {1} and len(fractions.configs()) == 2


def test_lenet_variants_cover_both_skeletons_and_their_own_defaults():
    experiment = load_experiment(EXPERIMENTS / "lenet-variants.toml")
    configs = experiment.configs()
    points = {(c.variant, c.activation, c.pooling) for c in configs}
    assert ("classic", "scaled_tanh", "subsample") in points  # the 1998 network itself
    assert ("modern", "relu", "max") in points
    assert {c.activation for c in configs} >= {"scaled_tanh", "tanh", "relu"}
    assert {c.pooling for c in configs} == {"subsample", "avg", "max"}
    assert len(points) == 2 * 4 * 3 and len(configs) == len(points) * experiment.seeds


def test_lenet_variants_is_a_factorial_design_and_the_optimizers_grids_are_not():
    from study.stages.sweep.tables import factorial_factors

    def planned_runs(name: str) -> tuple[pd.DataFrame, list[str]]:
        experiment = load_experiment(EXPERIMENTS / f"{name}.toml")
        rows = [{**p.labels, "seed": p.config.seed} for p in experiment.planned()]
        return pd.DataFrame(rows), experiment.swept_fields()

    runs, swept = planned_runs("lenet-variants")
    assert factorial_factors(runs, swept) == ["variant", "activation", "pooling"]  # 2 x 4 x 3
    runs, swept = planned_runs("optimizers")  # each optimizer over its own lrs: no product
    assert factorial_factors(runs, swept) == []


def test_lenet_vs_resnet_trains_every_model_for_the_same_epochs():
    experiment = load_experiment(EXPERIMENTS / "lenet-vs-resnet.toml")
    configs = experiment.configs()
    assert {c.model for c in configs} == {"lenet5", "resnet18", "resnet50"}
    assert len({c.epochs for c in configs}) == 1 and {c.patience for c in configs} == {0}
    assert experiment.seeds >= 3 and all(c.test_every_epoch for c in configs)
    assert {c.precision for c in configs} == {"bf16"}  # one arithmetic for every model


def test_pytorch_example_file_is_the_examples_recipe():
    experiment = load_experiment(EXPERIMENTS / "pytorch-mnist-example.toml")
    base = experiment.base_config()
    assert (base.optimizer, base.lr, base.lr_schedule, base.lr_gamma) == ("adadelta", 1.0, "step", 0.7)
    assert (base.batch_size, base.epochs, base.patience) == (64, 20, 0)
    assert experiment.sweep == [] and experiment.swept_fields() == ["condition"]  # one condition
    assert len(experiment.configs()) == experiment.seeds >= 5
    assert experiment.reference["test_acc"] == 0.9766 and "97.66%" in experiment.description
    assert "60,000" in experiment.reference["note"]  # says what differs from the example


# ------------------------------------------------------------------ the format


def test_several_grids_run_their_union_with_columns_from_the_config():
    raw = {
        "kind": "sweep",
        "seeds": 2,
        "sweep": [
            {"optimizer": "sgd", "lr": [0.1, 1.0]},
            {"optimizer": ["adam"], "lr": [1e-3, 1e-2]},
            {"optimizer": "adam", "lr": 1e-3, "batch_size": [64]},  # batch 64 is a new point
            {"optimizer": "sgd", "lr": 0.1},  # already in the first grid: runs once
        ],
    }
    experiment = parse_experiment(raw, name="grids")
    assert experiment.swept_fields() == ["optimizer", "lr", "batch_size"]
    planned = experiment.planned()
    assert len(planned) == 5 * 2 and len(experiment.configs()) == 10
    labels = [p.labels for p in planned[::2]]
    assert labels[0] == {"optimizer": "sgd", "lr": 0.1, "batch_size": 32}  # the default, as run
    assert labels[-1] == {"optimizer": "adam", "lr": 1e-3, "batch_size": 64}


def test_equal_steps_scales_each_fractions_epochs_and_patience():
    raw = {
        "kind": "data-fraction",
        "seeds": 2,
        "fractions": [1.0, 0.5, 0.3, 0.0625],
        "fixed": {"epochs": 10, "patience": 2},
    }
    experiment = parse_experiment(raw, name="fractions")
    assert experiment.equal_steps and experiment.budgets() == [EQUAL_STEPS, EQUAL_EPOCHS]
    by_budget: dict[str, dict[float, tuple[int, int]]] = {}
    for p in experiment.planned():
        by_budget.setdefault(p.labels["budget"], {})[p.config.train_fraction] = (
            p.config.epochs,
            p.config.patience,
        )
    # epochs x 1/fraction rounded: 10 / 0.3 = 33.3 -> 33; patience likewise
    assert by_budget[EQUAL_STEPS] == {1.0: (10, 2), 0.5: (20, 4), 0.3: (33, 7), 0.0625: (160, 32)}
    assert by_budget[EQUAL_EPOCHS] == {f: (10, 2) for f in raw["fractions"]}
    # fraction 1 is the same run under both budgets: 4 + 4 points, 7 distinct, times 2 seeds
    assert len(experiment.planned()) == 16 and len(experiment.configs()) == 14
    smoke = experiment.smoke()  # 1 epoch, which equal steps would make 16 at 1/16: capped at 1
    assert smoke.fraction_epochs(0.0625, EQUAL_STEPS)[0] == 16 and {c.epochs for c in smoke.configs()} == {1}
    only_epochs = parse_experiment({**raw, "equal_steps": False}, name="fractions")
    assert {p.labels["budget"] for p in only_epochs.planned()} == {EQUAL_EPOCHS}


def _runs(rows: list[tuple[str, float, int, str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["optimizer", "lr", "seed", "status", "best_val_acc", "test_error"])


def test_selection_picks_by_validation_never_by_test_error():
    runs = _runs(
        [
            # sgd: lr 0.1 validates best (0.97) yet tests worse than lr 0.01 (0.95 val, best test)
            *[("sgd", 0.1, s, "completed", 0.97, 0.040 + 0.001 * s) for s in range(3)],
            *[("sgd", 0.01, s, "completed", 0.95, 0.020 + 0.001 * s) for s in range(3)],
            # lr 1.0's diverged runs must not count, however they validated
            *[("sgd", 1.0, s, "diverged", 0.99, 0.010) for s in range(3)],
            # adam: lr 1e-3 has one failed seed; the mean of its two ok seeds still wins
            ("adam", 1e-3, 0, "collapsed", 0.10, 0.90),
            *[("adam", 1e-3, s, "completed", 0.98, 0.030) for s in (1, 2)],
            *[("adam", 1e-2, s, "completed", 0.96, 0.010) for s in range(3)],
            # adagrad: every run failed, nothing to choose
            *[("adagrad", 0.1, s, "diverged", np.nan, np.nan) for s in range(3)],
        ]
    )
    selection = select_by_validation(runs, swept=["optimizer", "lr"], field="lr")
    chosen = selection[selection["selected"]].set_index("optimizer")["lr"].to_dict()
    assert chosen == {"sgd": 0.1, "adam": 1e-3}  # not sgd 0.01 or sgd 1.0, not adam 1e-2
    row = selection.set_index(["optimizer", "lr"]).loc[("adam", 1e-3)]
    assert row["n"] == 2 and row["failed"] == 1 and row["best_val_acc_mean"] == pytest.approx(0.98)

    _, selected = selected_view(runs, swept=["optimizer", "lr"], field="lr")
    table = selected.set_index("optimizer")
    assert set(table.index) == {"sgd", "adam"} and table.loc["sgd", "lr"] == 0.1
    # the comparison is on test error of the chosen lr: sgd's 0.04x, not the 0.02x of lr 0.01
    assert table.loc["sgd", "test_error_mean"] == pytest.approx(0.041)
    assert table.loc["adam", "test_error_mean"] == pytest.approx(0.030)
    # the reference among the chosen points is again chosen by validation: adam's 0.98 over sgd's 0.97
    assert selected.iloc[0]["optimizer"] == "adam" and selected.iloc[0]["verdict"] == "reference"
    assert selected["reference"].tolist() == [True, False]


def test_selection_tie_goes_to_the_first_in_grid_order():
    runs = _runs([("adam", lr, 0, "completed", 0.9, err) for lr, err in ((1e-2, 0.2), (1e-3, 0.1))])
    selection = select_by_validation(runs, swept=["optimizer", "lr"], field="lr")
    assert selection[selection["selected"]]["lr"].tolist() == [1e-2]


# ------------------------------------------------------------------ smoke runs on the digits


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(SWEEPS)]
)
def test_sweep_experiments_smoke_on_digits(smoke, name):
    figure, rows, trained = SWEEPS[name]
    folder = smoke(name)
    runs = pd.read_parquet(folder / "runs.parquet")
    assert len(runs) == rows and sorted(set(runs["run"])) == list(range(trained))
    assert pd.read_csv(folder / "runs.csv").shape[0] == rows
    assert {"epochs", "epochs_run", "best_epoch", "stopped_early", "parameters"} <= set(runs.columns)
    summary = pd.read_parquet(folder / "summary.parquet")
    columns = {
        "n",
        "failed",
        "test_error_mean",
        "test_error_std",
        "ci95_low",
        "ci95_high",
        "best_val_acc_mean",
        "reference",
        "p_holm_vs_ref",
        "verdict",
        "seconds_mean",
        "parameters",
    }
    assert columns <= set(summary.columns)
    assert summary["verdict"].iloc[0] in ("reference", "failed")
    assert set(summary["verdict"]) <= {
        "reference",
        "better",
        "worse",
        "no significant difference",
        "n/a",
        "failed",
    }
    assert set(pd.read_parquet(folder / "epochs.parquet")["run"]) == set(range(trained))
    for png in (figure, "test_error.png", "learning_curves.png"):
        assert (folder / png).read_bytes()[:8] == PNG
    text = (folder / "REPORT.md").read_text()
    assert "sha256" in text and f"]({figure})" in text
    selected = folder / "selected.parquet"
    shown = pd.read_parquet(selected) if selected.is_file() else summary  # select: the answer's table
    ok = shown[shown["n"] > 0]
    if len(ok) > 1:  # the sentence names the reference, chosen by validation, and quotes its number
        reference = ok[ok["reference"]].iloc[0]
        assert reference["best_val_acc_mean"] == ok["best_val_acc_mean"].max()
        assert f"its mean test error is {100 * reference['test_error_mean']:.2f}%" in text
        assert "is the reference, chosen by validation accuracy" in text
    assert "tied" not in text


def test_optimizers_smoke_writes_the_selected_and_fixed_lr_views(smoke):
    folder = smoke("optimizers")
    for stem in ("selected", "selection", "compare_at"):
        for suffix in (".csv", ".parquet", ".md"):
            assert (folder / f"{stem}{suffix}").is_file(), stem + suffix
    for png in ("val_acc_vs_lr.png", "selected_test_error.png", "test_error_at_lr_0.001.png"):
        assert (folder / png).read_bytes()[:8] == PNG
    runs = pd.read_parquet(folder / "runs.parquet")
    selection = pd.read_parquet(folder / "selection.parquet")
    ok = runs[~runs["status"].isin(["diverged", "collapsed"])]
    for optimizer, part in ok.groupby("optimizer"):  # the highest validation of each, recomputed
        chosen = selection[(selection["optimizer"] == optimizer) & selection["selected"]]
        assert chosen["lr"].tolist() == [part.loc[part["best_val_acc"].idxmax(), "lr"]], optimizer
    at = pd.read_parquet(folder / "compare_at.parquet")
    assert set(at["lr"]) == {1e-3} and set(at["optimizer"]) == set(runs["optimizer"])
    text = (folder / "REPORT.md").read_text()
    selected = pd.read_parquet(folder / "selected.parquet")
    for row in selected.itertuples():
        assert f"{row.optimizer}: lr {row.lr:g} (validation {100 * row.best_val_acc_mean:.2f}%" in text
    assert "test error plays no part in the choice" in text and "With every condition at lr=0.001" in text


@pytest.mark.slow
def test_data_fraction_smoke_reports_both_budgets(smoke):
    folder = smoke("data-fraction")
    runs = pd.read_parquet(folder / "runs.parquet")
    assert set(runs["budget"]) == {EQUAL_STEPS, EQUAL_EPOCHS} and set(runs["epochs"]) == {1}
    # fraction 1 (and, capped at 1 epoch, 1/16 too) is one run counted in both views
    assert runs.groupby("run")["budget"].nunique().eq(2).all()
    summary = pd.read_parquet(folder / "summary.parquet")
    assert (summary["verdict"] == "reference").sum() == 2  # each budget compared on its own
    text = (folder / "REPORT.md").read_text()
    for view in ("Equal steps", "Equal epochs"):
        part = runs[runs["budget"] == view.lower().replace(" ", "_")]
        largest = part[part["train_fraction"] == 1.0]["test_error"].mean()
        assert f"{view}: mean test error fell from" in text and "log-log slope" in text
        assert f"{100 * largest:.2f}% with {part['train_images'].max():,}" in text


@pytest.mark.slow
def test_pytorch_example_smoke_prints_our_number_next_to_the_published_one(smoke):
    folder = smoke("pytorch-mnist-example")
    summary = pd.read_parquet(folder / "summary.parquet")
    assert summary["condition"].tolist() == ["pytorch-mnist-example"]
    text = (folder / "REPORT.md").read_text()
    ours = 1 - summary["test_error_mean"].iloc[0]
    assert "reports 97.66% test accuracy" in text and "What differs:" in text
    assert f"Ours: {100 * ours:.2f}% mean test accuracy over 1 seed(s)" in text
    assert f"a test accuracy of {100 * ours:.2f}%" in text


@pytest.mark.slow
def test_learning_rate_smoke_keeps_diverging_runs(smoke):
    folder = smoke("learning-rates")
    runs = pd.read_parquet(folder / "runs.parquet")
    assert (runs.loc[runs["lr"] == 10.0, "status"] == "diverged").all()
    summary = pd.read_parquet(folder / "summary.parquet").set_index("lr")
    assert summary.loc[10.0, "n"] == 0 and summary.loc[10.0, "failed"] == 1  # counted, never averaged in
    assert summary.loc[10.0, "verdict"] == "failed"
    text = (folder / "REPORT.md").read_text()
    assert "failed and are left out of every mean" in text and "lr=10.0 (diverged)" in text


@pytest.mark.slow
def test_lenet_vs_resnet_smoke_reports_parameters_and_time(smoke):
    folder = smoke("lenet-vs-resnet")
    summary = pd.read_parquet(folder / "summary.parquet").set_index("model")
    assert summary.loc["lenet5", "parameters"] == 61_706 and summary.loc["resnet50", "parameters"] > 23e6
    text = (folder / "REPORT.md").read_text()
    for model, row in summary.iterrows():
        if row["n"] > 0:
            assert f"model={model}: {row['parameters']:,} parameters, {row['seconds_mean']:,.0f} s" in text


def test_ensemble_file_runs_three_repeats_of_every_baseline():
    experiment = load_experiment(EXPERIMENTS / "ensemble.toml")
    specs = experiment.ensemble_plan().specs([experiment.base_config()], experiment.base_config())
    groups = [(s.group, s.repeat) for s in specs]
    assert experiment.repeats == 3 and experiment.resample == "bootstrap"
    for repeat in range(3):  # 5 bagged + 5 seed members and the ResNet in each repeat
        assert groups.count(("bagged", repeat)) == groups.count(("seed", repeat)) == 5
        assert groups.count(("baseline", repeat)) == 1
    resnets = [s.config for s in specs if s.group == "baseline"]
    assert {c.model for c in resnets} == {"resnet18"} and {c.precision for c in resnets} == {"bf16"}
    assert {s.config.precision for s in specs if s.group != "baseline"} == {"fp32"}


def test_fashion_file_tunes_the_full_space_then_ensembles_the_best():
    experiment = load_experiment(EXPERIMENTS / "fashion.toml")
    assert experiment.kind == "tune-ensemble" and experiment.trials >= 40
    assert experiment.base_config().dataset == "fashion-mnist"
    space = experiment.space
    assert {"optimizer", "lr", "activation", "pooling", "batch_size"} <= set(space)
    assert {"lr_schedule", "augment"} <= set(space) and "flip_shift" in space["augment"]["choices"]
    # a fixed budget: patience is not searched, it is 0 for every trial and member
    assert "patience" not in space and experiment.base_config().patience == 0
    assert experiment.members == 5 and experiment.resample == "bootstrap"
    assert experiment.resnet == "resnet18" and experiment.resnet_precision == "bf16"
    base = experiment.base_config()
    specs = experiment.ensemble_plan().specs([base], base)
    assert {(s.config.model, s.config.epochs) for s in specs} == {("lenet5", 30), ("resnet18", 5)}
    assert experiment.repeats == 3 and experiment.seeds_per_trial == 2
    assert experiment.smoke().resnet_epochs == 1 and experiment.smoke().seeds_per_trial == 1
    published = {a["model"]: a["test_acc"] for a in experiment.anchor}
    assert published["human"] == 0.835 and published["2 conv + max pooling"] == [0.876, 0.916]
    assert len(published) == 5 and experiment.anchor_source


def test_a_tune_files_search_settings_reach_the_study(monkeypatch, tmp_path, digits):
    import study.stages.tune.run as tune_run
    from study.experiments import execute

    seen = {}
    monkeypatch.setattr(tune_run, "run_study", lambda **kwargs: seen.update(kwargs))
    raw = {
        "kind": "tune",
        "trials": 4,
        "grace_period": 2,
        "reduction_factor": 4,
        "seeds_per_trial": 3,
        "fixed": {"dataset": "digits", "epochs": 6},
        "space": {"lr": {"low": 1e-3, "high": 1e-1, "log": True}},
    }
    context = RunContext(data=digits, out=tmp_path, name="t")
    execute(parse_experiment(raw, name="t"), context=context)
    settings = seen["settings"]
    assert (settings.trials, settings.grace_period, settings.reduction_factor) == (4, 2, 4.0)
    assert settings.seeds_per_trial == 3 and seen["base"].epochs == 6


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")  # one local Ray for the module (conftest.py)
def test_fashion_smoke_tunes_then_ensembles_the_best_trial_and_places_it(tmp_path):
    """The tune-ensemble kind end to end on the digits: the members are the tune's best config,
    REPORT.md holds the search, the ensemble and the anchor table, and --resume trains nothing."""
    args = [
        "run",
        str(EXPERIMENTS / "fashion.toml"),
        "--smoke",
        "--dataset",
        "digits",
        "--train-fraction",  # ResNet-18 is its cost: a third of the digits' split checks the plumbing
        "0.3",
        "--out",
        str(tmp_path),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "fashion"
    best = json.loads((folder / "tune" / "best.json").read_text())["config"]
    trials = pd.read_parquet(folder / "tune" / "trials.parquet")
    assert len(trials) == 2 and best["epochs"] == 1
    members = pd.read_parquet(folder / "ensemble" / "members.parquet")
    configs = [json.loads(c) for c in members.loc[members["group"] != "baseline", "config"]]
    assert len(configs) == 4  # 2 bagged + 2 seed members
    for field in ("optimizer", "lr", "activation", "pooling", "batch_size", "lr_schedule", "augment"):
        assert {c[field] for c in configs} == {best[field]}, field
    report = (folder / "REPORT.md").read_text()
    assert "trials:" in report and "ensemble(s) of 2 members" in report and "McNemar" in report
    assert "Budget: LeNet-5 members at most 1 epochs, ran 1-1" in report
    # one epoch is always the best one: both models are named as stopped while improving
    assert "Still improving at the cap (best validation epoch = last): lenet5, resnet18;" in report
    table = report.split("## Placed among published results", 1)[1]
    assert "| human" in table and "87.6-91.6%" in table and "**LeNet-5 single model** (ours)" in table
    assert "**resnet18** (ours)" in table and "61,706" in table
    again = runner.invoke(app, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    assert "has ended; its best config is reused" in again.output
    assert "0 models to train" in again.output
    assert (folder / "REPORT.md").read_text().split("### What was run")[0] == report.split(
        "### What was run"
    )[0]


def test_anchor_table_puts_ours_in_bold_among_published_rows_by_accuracy():
    from study.stages.ensemble.report import anchor_rows

    anchors = [
        {"model": "human", "test_acc": 0.835},
        {"model": "2 conv + max pooling", "test_acc": [0.876, 0.916], "parameters": "< 100K"},
    ]
    comparison = pd.DataFrame(
        [
            {
                "model": "single model",
                "test_acc": 0.90,
                "ci95_low": 0.89,
                "ci95_high": 0.91,
                "n": 5,
                "parameters": 61_706,
                "training_seconds": 30.0,
                "models": 1,
            },
            {
                "model": "seed ensemble, hard vote",
                "test_acc": 0.85,
                "ci95_low": 0.84,
                "ci95_high": 0.86,
                "n": 1,
                "parameters": 5 * 61_706,
                "training_seconds": 600.0,
                "models": 5,
            },
        ]
    )
    table = anchor_rows(anchors, comparison)
    # 0.90 > midpoint 0.896 > 0.85 > 0.835
    assert list(table["model"]) == [
        "**LeNet-5 single model** (ours)",
        "2 conv + max pooling",
        "**LeNet-5 seed ensemble, hard vote** (ours)",
        "human",
    ]
    assert table["test accuracy"][1] == "87.6-91.6%" and table["test accuracy"][3] == "83.5%"
    assert table["test accuracy"][0] == "**90.00%** [89.00%, 91.00%]"
    assert list(table["parameters"]) == ["61,706", "< 100K", "308,530", ""]
    assert list(table["training time"]) == ["30 s", "", "10.0 min for 5 models", ""]


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"kind": "grid"}, "kind must be one of"),
        ({"kind": "sweep", "sweep": {"lr": [0.1]}, "trials": 3}, "unknown key 'trials'"),
        ({"kind": "sweep", "sweep": {"learning_rate": [0.1]}}, "unknown key 'learning_rate'"),
        ({"kind": "sweep", "sweep": {"lr": []}}, "non-empty list"),
        ({"kind": "sweep", "sweep": {"lr": [-1.0]}}, "lr must be > 0, got -1.0"),
        ({"kind": "sweep", "sweep": {"lr": [0.1]}, "seeds": "3"}, "seeds must be int"),
        ({"kind": "sweep", "sweep": {"lr": [0.1]}, "seeds": 0}, "seeds must be >= 1"),
        ({"kind": "sweep", "sweep": {"lr": [0.1]}, "fixed": {"lr": 0.2}}, "both fixed and swept"),
        ({"kind": "sweep", "sweep": [{"lr": 0.1}, {"optimizer": "sgd"}], "fixed": {"lr": 0.2}}, "both fixed"),
        ({"kind": "sweep", "sweep": {"lr": [0.1]}, "curve": "loss"}, "curve must be one of"),
        ({"kind": "sweep", "sweep": 3}, "sweep must be a"),
        ({"kind": "sweep", "sweep": [{"lr": [0.1]}, {}]}, "must name at least one field"),
        ({"kind": "sweep", "sweep": [{"lr": [0.1], "seed": [1]}]}, "unknown key 'seed'"),
        ({"kind": "sweep", "sweep": {"lr": [0.1], "optimizer": ["sgd"]}, "select": "momentum"}, "select"),
        ({"kind": "sweep", "sweep": {"lr": [0.1, 1.0]}, "select": "lr"}, "needs another swept field"),
        ({"kind": "sweep", "sweep": {"lr": [0.1]}, "compare_at": {"batch_size": 64}}, "compare_at"),
        ({"kind": "sweep", "sweep": {"lr": [0.1]}, "compare_at": {"lr": 1e-3}}, "not among the swept"),
        ({"kind": "sweep", "reference": {"test_acc": 97.66, "source": "x"}}, "fraction in"),
        ({"kind": "sweep", "reference": {"test_acc": 0.9, "source": "x", "url": "y"}}, "unknown key 'url'"),
        ({"kind": "sweep", "reference": {"test_acc": 0.9}}, "reference needs source"),
        ({"kind": "data-fraction", "fractions": [0.5, 2.0]}, "fractions must be"),
        ({"kind": "data-fraction", "fractions": [0.5], "equal_steps": "yes"}, "equal_steps must be bool"),
        ({"kind": "data-fraction", "fractions": [0.5], "fixed": {"train_fraction": 0.5}}, "both fixed"),
        ({"kind": "data-fraction", "fractions": [0.5], "select": "lr"}, "unknown key 'select'"),
        ({"kind": "tune", "space": {"lr": {"low": 1.0, "high": 0.1}}}, "range reversed"),
        ({"kind": "ensemble", "members": 0}, "members must be >= 1"),
        ({"kind": "ensemble", "resample": "jackknife"}, "unknown --resample"),
        ({"kind": "ensemble", "repeats": "3"}, "repeats must be int"),
        ({"kind": "ensemble", "anchor": []}, "unknown key 'anchor'"),
        ({"kind": "ensemble", "resnet_epochs": 0}, "resnet_epochs must be >= 1"),
        ({"kind": "tune", "seeds_per_trial": 0}, "seeds_per_trial must be >= 1"),
        ({"kind": "tune", "seeds_per_trial": 2.0}, "seeds_per_trial must be int"),
        ({"kind": "ensemble", "seeds_per_trial": 2}, "unknown key 'seeds_per_trial'"),
        ({"kind": "tune-ensemble", "members": 1, "space": {"lr": {"low": 0.1, "high": 1.0}}}, "vote"),
        ({"kind": "tune-ensemble", "anchor": [{"model": "x", "test_acc": 0.9}]}, "need anchor_source"),
        (ANCHORED | {"anchor": [{"model": "x", "test_acc": 92.5}]}, "test_acc must be a fraction"),
        (ANCHORED | {"anchor": [{"model": "x", "test_acc": [0.9, 0.8]}]}, "test_acc must be a fraction"),
        (ANCHORED | {"anchor": [{"model": "x", "test_acc": 0.9, "year": 2017}]}, "unknown key 'year'"),
        (ANCHORED | {"anchor": [{"test_acc": 0.9}]}, "needs model"),
    ],
)
def test_bad_experiment_files_are_rejected_by_name(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_experiment(raw, name="bad")


def test_bad_experiment_file_on_the_command_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('kind = "sweep"\nseedz = 3\n[sweep]\nlr = [0.1]\n')
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "unknown key 'seedz'" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_report_of_a_folder_without_results(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "holds no tune, ensemble, train or experiment" in result.stderr
    result = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "is not a results folder" in result.stderr
