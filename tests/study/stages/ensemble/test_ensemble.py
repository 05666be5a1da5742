"""`study ensemble` on the 8x8 digits: fair baselines on one split, repeats, calibration,
checkpoints, files."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from lenet_core.config import TrialConfig
from lenet_core.errors import ConfigError
from lenet_core.train import trial_split
from study.cli import app
from study.stages.ensemble.members import (
    UnreadableCheckpoint,
    bagging_indices,
    load_member,
    member_specs,
    save_member,
    train_member,
)
from study.stages.ensemble.report import recipe_sentences
from study.stages.ensemble.results import EnsembleResults
from study.stages.ensemble.run import EnsemblePlan
from tests.conftest import PROJECT_ROOT

runner = CliRunner()
FAST = TrialConfig(dataset="digits", epochs=1, threads=1)
PNG = b"\x89PNG\r\n\x1a\n"


def test_seed_and_bagged_members_share_seeds_and_repeats_never_do():
    specs = member_specs([FAST], 3, seed=10, repeats=2)
    by_group = {
        (s.repeat, s.group): [x.config.seed for x in specs if (x.repeat, x.group) == (s.repeat, s.group)]
        for s in specs
    }
    assert by_group[(0, "seed")] == by_group[(0, "bagged")] == [10, 11, 12]
    assert by_group[(1, "seed")] == [13, 14, 15]
    assert [s.bootstrap_seed for s in specs if s.group == "seed"] == [None] * 6
    assert [s.bootstrap_seed for s in specs if s.group == "bagged" and s.repeat == 0] == [10, 11, 12]
    assert len({s.name for s in specs}) == len(specs) == 12
    assert {s.group for s in member_specs([FAST], 3, seed=0, resample="none")} == {"seed"}
    with pytest.raises(ConfigError, match="--members must be >= 2"):
        member_specs([FAST], 1, seed=0)
    with pytest.raises(ConfigError, match="--repeats must be >= 1"):
        member_specs([FAST], 2, seed=0, repeats=0)
    with pytest.raises(ConfigError, match="unknown --resample"):
        member_specs([FAST], 2, seed=0, resample="jackknife")


def test_every_model_shares_one_validation_split(digits):
    plan = EnsemblePlan(members=3, repeats=2, resnet="resnet18")
    specs = plan.specs([FAST], FAST)
    splits = {tuple(trial_split(digits, s.config)[1]) for s in specs}
    assert len(splits) == 1  # one validation set for every member, seed, repeat and the ResNet
    assert {s.config.model for s in specs if s.group == "baseline"} == {"resnet18"}
    assert len({s.config.seed for s in specs if s.group == "baseline"}) == 2


def test_the_resnet_trains_one_fixed_recipe_whatever_the_members_were_tuned_to():
    tuned = FAST.replace(
        optimizer="rmsprop",
        lr=0.0025,
        lr_schedule="step",
        lr_gamma=0.5,
        lr_step_size=4,
        warmup_epochs=1,
        label_smoothing=0.1,
        weight_decay=1e-3,
        patience=6,
        augment="flip",
        batch_size=128,
        epochs=20,
    )
    plan = EnsemblePlan(members=2, resnet="resnet18", resnet_epochs=5, resnet_precision="bf16")
    (resnet,) = [s.config for s in plan.specs([tuned], tuned) if s.group == "baseline"]
    assert (resnet.optimizer, resnet.lr, resnet.weight_decay, resnet.momentum) == ("adam", 1e-3, 0.0, None)
    assert (resnet.lr_schedule, resnet.lr_step_size, resnet.warmup_epochs) == ("constant", None, 0)
    assert (resnet.label_smoothing, resnet.patience) == (0.0, 0)  # no early stopping: a fixed budget
    assert (resnet.epochs, resnet.precision) == (5, "bf16")  # the plan's budget, not the members'
    # the members' data: the same split, batch size (steps per epoch) and augmentation
    assert (resnet.dataset, resnet.batch_size, resnet.augment) == ("digits", 128, "flip")
    # the report states both recipes, the seeds aside
    members = pd.DataFrame(
        [
            {"model": spec.config.model, "config": json.dumps(spec.config.to_dict())}
            for spec in plan.specs([tuned], tuned)
        ]
    )
    [sentence] = recipe_sentences(members)
    lenet, resnet_part = sentence.split("LeNet-5 members: ")[1].split("; resnet18: ")
    assert (
        "optimizer rmsprop, lr 0.0025" in lenet and "lr_schedule step, lr_gamma 0.5, lr_step_size 4" in lenet
    )
    assert "label_smoothing 0.1" in lenet and "patience 6" in lenet and "seed " not in sentence
    assert resnet_part.startswith("optimizer adam, lr 0.001, weight_decay 0, lr_schedule constant")
    assert (
        "lr_gamma" not in resnet_part and "augment flip, batch_size 128, epochs 5, patience 0" in resnet_part
    )


def test_bootstrap_bookkeeping_keeps_validation_out_and_oob_exact(digits):
    spec = [s for s in member_specs([FAST], 2, seed=0) if s.group == "bagged"][1]
    in_bag, oob = bagging_indices(spec, digits)
    train_idx, val_idx = trial_split(digits, spec.config)
    assert len(in_bag) == len(train_idx)  # same size, drawn with replacement
    assert set(in_bag) <= set(train_idx) and not set(in_bag) & set(val_idx)
    assert set(oob) == set(train_idx) - set(in_bag)
    seed_member = [s for s in member_specs([FAST], 2, seed=0) if s.group == "seed"][1]
    assert bagging_indices(seed_member, digits)[0] is None  # the full split


def test_heterogeneous_members_cycle_over_configs():
    configs = [FAST, FAST.replace(lr=0.01)]
    specs = member_specs(configs, 3, seed=0, resample="none")
    assert [s.config.lr for s in specs] == [1e-3, 0.01, 1e-3]


def test_member_checkpoint_round_trip_mismatch_and_damage(digits, tmp_path):
    spec = member_specs([FAST], 2, seed=0)[0]
    output = train_member(spec, digits)
    assert output.test_proba.shape == (len(digits.test_labels), 10)
    save_member(output, tmp_path)
    loaded = load_member(spec, tmp_path)
    assert loaded is not None
    assert np.array_equal(loaded.test_proba, output.test_proba)
    assert loaded.summary["test_acc"] == output.summary["test_acc"]
    # where it ran is not what it is: other threads or device still reuse the checkpoint
    assert load_member(spec.__class__(**{**vars(spec), "config": spec.config.replace(threads=2)}), tmp_path)
    other = member_specs([FAST.replace(lr=0.01)], 2, seed=0)[0]
    assert load_member(other, tmp_path) is None  # a different config is not reused
    (tmp_path / "members" / spec.name / "predictions.npz").write_bytes(b"garbage")
    with pytest.raises(UnreadableCheckpoint, match="predictions|Error"):
        load_member(spec, tmp_path)


@pytest.fixture(scope="module")
def small_ensemble(shared_ray, tmp_path_factory):
    out = tmp_path_factory.mktemp("ens")
    args = [
        *("ensemble", "--dataset", "digits", "--members", "3", "--epochs", "2", "--repeats", "2"),
        *("--resnet", "none", "--out", str(out), "--name", "e"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out / "e" / "ensemble", result.output, args


MODELS = [
    "single model",
    "seed ensemble, hard vote",
    "seed ensemble, soft vote",
    "bagged member",
    "bagged, hard vote",
    "bagged, soft vote",
]


def test_comparison_has_every_fair_row_with_intervals_and_calibration(small_ensemble):
    folder, output, _ = small_ensemble
    comparison = pd.read_parquet(folder / "comparison.parquet")
    assert list(comparison["model"]) == MODELS
    for column in ("n", "test_acc", "ci95_low", "ci95_high", "interval", "nll", "brier", "ece"):
        assert comparison[column].notna().all(), column
    # --repeats 2 gives t-intervals over repeats; the single model's is over all 6 seeds
    by_model = comparison.set_index("model")
    assert by_model.loc["seed ensemble, hard vote", "n"] == 2
    assert by_model.loc["single model", "n"] == 6 and "seeds" in by_model.loc["single model", "interval"]
    assert (comparison["ci95_low"] <= comparison["test_acc"]).all()
    assert (comparison["test_acc"] <= comparison["ci95_high"]).all()
    assert (comparison["ci95_high"] - comparison["ci95_low"] > 0).any()  # real intervals, not points
    assert ((comparison["ece"] >= 0) & (comparison["ece"] <= 1)).all()
    per_repeat = pd.read_parquet(folder / "comparison_by_repeat.parquet")
    assert sorted(per_repeat["repeat"].unique()) == [0, 1] and len(per_repeat) == 2 * len(MODELS)
    # the mean over repeats is the table's number
    expected = per_repeat[per_repeat["model"] == "bagged, hard vote"]["test_acc"].mean()
    assert by_model.loc["bagged, hard vote", "test_acc"] == pytest.approx(expected)
    assert "single model: test accuracy" in output


def test_mcnemar_predictions_and_per_class_tables(small_ensemble, digits):
    folder, _, _ = small_ensemble
    mcnemar = pd.read_parquet(folder / "mcnemar.parquet")
    assert set(mcnemar["repeat"]) == {0, 1}
    assert ((mcnemar["mcnemar_p"] > 0) & (mcnemar["mcnemar_p"] <= 1)).all()
    assert {"bagged, hard vote", "seed ensemble, hard vote"} <= set(mcnemar["a"])
    predictions = pd.read_parquet(folder / "predictions.parquet")
    assert len(predictions) == len(digits.test_labels)
    for column in (
        "label",
        "r0_bagged_00_pred",
        "r0_seed_00_pred",
        "votes",
        "hard_vote_pred",
        "fixed_by_vote",
    ):
        assert column in predictions.columns
    comparison_r0 = pd.read_parquet(folder / "comparison_by_repeat.parquet").query("repeat == 0")
    hard_acc = (predictions["hard_vote_pred"] == predictions["label"]).mean()
    bagged = comparison_r0.set_index("model").loc["bagged, hard vote", "test_acc"]
    assert hard_acc == pytest.approx(bagged)
    per_class = pd.read_csv(folder / "per_class.csv")
    assert list(per_class["class"]) == list(range(10))
    assert list(per_class["class_name"]) == list(range(10))  # the digits' names are the digits
    diversity = json.loads((folder / "diversity.json").read_text())
    bagged_div = diversity["diversity"]["bagged"]
    assert 0 <= bagged_div["mean_pairwise_disagreement"] <= 1
    assert len(bagged_div["vote_accuracy_by_members_mean"]) == 3 and bagged_div["repeats"] == 2
    # the curve pools both repeats: with every member voting, each order gives that repeat's vote
    votes = pd.read_parquet(folder / "comparison_by_repeat.parquet").query("model == 'bagged, hard vote'")
    assert bagged_div["vote_accuracy_by_members_mean"][-1] == pytest.approx(votes["test_acc"].mean())
    assert all(
        lo - 1e-9 <= m <= hi + 1e-9
        for lo, m, hi in zip(
            bagged_div["vote_accuracy_by_members_low"],
            bagged_div["vote_accuracy_by_members_mean"],
            bagged_div["vote_accuracy_by_members_high"],
            strict=True,
        )
    )


def test_report_gives_every_repeats_mcnemar_and_a_paired_test_over_repeats(small_ensemble):
    from study.stages.ensemble.report import mcnemar_sentences

    folder, _, _ = small_ensemble
    results = EnsembleResults.read(folder)
    mcnemar = results.mcnemar
    lines = mcnemar_sentences(mcnemar, results.voting_member_names())
    pairs = {
        (r.a, r.b if not r.b.startswith("r0_") and not r.b.startswith("r1_") else "")
        for r in mcnemar.itertuples()
    }
    assert len(lines) == len(pairs) == 3  # each vote vs its best member, bagged vs seed
    best = [line for line in lines if line.startswith("- bagged, hard vote vs its best member")]
    assert len(best) == 1 and "repeat 0: " in best[0] and "repeat 1: " in best[0]
    row = mcnemar[(mcnemar["a"] == "bagged, hard vote") & (mcnemar["repeat"] == 1)].iloc[0]
    assert f"(p = {row.mcnemar_p:.2g})" in best[0] and "paired t-test p = " in best[0]


def test_ensemble_figures_are_non_empty_pngs(small_ensemble):
    folder, _, _ = small_ensemble
    for name in (
        "confusion_matrices",
        "misclassified",
        "tsne_penultimate",
        "conv1_kernels",
        "feature_maps",
        "nearest_neighbours",
        "vote_accuracy_by_members",
        "reliability",
    ):
        data = (folder / f"{name}.png").read_bytes()
        assert data[:8] == PNG and len(data) > 5000, name


def test_report_sets_each_earlier_verdict_beside_this_runs(small_ensemble, tmp_path):
    import shutil

    folder, _, _ = small_ensemble
    earlier = tmp_path / "earlier"
    shutil.copytree(folder, earlier / "ensemble", ignore=shutil.ignore_patterns("members"))
    mcnemar = pd.read_parquet(earlier / "ensemble" / "mcnemar.parquet")
    pair = (mcnemar["a"] == "bagged, hard vote") & (mcnemar["b"] == "seed ensemble, hard vote")
    mcnemar.loc[pair, "a_acc"], mcnemar.loc[pair, "b_acc"] = [0.9, 0.91], [0.5, 0.52]  # a clear win
    mcnemar.to_parquet(earlier / "ensemble" / "mcnemar.parquet")
    result = runner.invoke(app, ["report", str(folder.parent), "--previous", str(earlier)])
    assert result.exit_code == 0, result.output
    report = (folder.parent / "REPORT.md").read_text()
    section = report.split("### Earlier claims, against this run", 1)[1]
    lost = "bagged, hard vote vs seed ensemble, hard vote: bagged, hard vote better -> "
    assert f"and 1 did not: {lost}" in section
    assert "| seed ensemble, hard vote vs its best member " in section  # members named by role
    # the same folder as its own earlier run: every verdict survives
    same = tmp_path / "same"
    shutil.copytree(folder, same / "ensemble", ignore=shutil.ignore_patterns("members"))
    assert runner.invoke(app, ["report", str(folder.parent), "--previous", str(same)]).exit_code == 0
    assert "and 0 did not." in (folder.parent / "REPORT.md").read_text()


def test_writing_the_results_elsewhere_redraws_the_figure_drawn_from_tables(small_ensemble, tmp_path):
    # what study report --reanalyse does: tables and the vote-accuracy figure, no models needed
    folder, _, _ = small_ensemble
    EnsembleResults.read(folder).write(tmp_path)
    data = (tmp_path / "vote_accuracy_by_members.png").read_bytes()
    assert data[:8] == PNG and len(data) > 5000
    assert not (tmp_path / "tsne_penultimate.png").exists()  # that one needs the models


@pytest.mark.slow
def test_resume_reuses_checkpointed_members_and_plain_rerun_is_refused(small_ensemble):
    folder, _, args = small_ensemble
    before = (folder / "members" / "r0_seed_00" / "model.pt").stat().st_mtime_ns
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "already holds results" in refused.stderr
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert "0 models to train, 12 read back" in result.output
    assert (folder / "members" / "r0_seed_00" / "model.pt").stat().st_mtime_ns == before


@pytest.mark.slow
def test_a_damaged_checkpoint_is_named_and_retrained(small_ensemble):
    folder, _, args = small_ensemble
    (folder / "members" / "r1_bagged_02" / "predictions.npz").write_bytes(b"garbage")
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert "r1_bagged_02's saved output cannot be read" in result.output
    assert "1 models to train, 11 read back" in result.output


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")  # one local Ray for the module (conftest.py)
def test_resnet_baseline_row_and_its_tests(tmp_path):
    result = runner.invoke(
        app,
        [
            *("ensemble", "--dataset", "digits", "--members", "2", "--epochs", "2", "--resample", "none"),
            *("--resnet-epochs", "1", "--train-fraction", "0.3", "--out", str(tmp_path), "--name", "r"),
        ],
    )
    assert result.exit_code == 0, result.output
    folder = tmp_path / "r" / "ensemble"
    comparison = pd.read_parquet(folder / "comparison.parquet")
    assert list(comparison["model"]) == [
        "single model",
        "seed ensemble, hard vote",
        "seed ensemble, soft vote",
        "resnet18",
    ]
    resnet = comparison.set_index("model").loc["resnet18"]
    assert resnet["parameters"] > 11e6 and "Wilson" in resnet["interval"]
    mcnemar = pd.read_parquet(folder / "mcnemar.parquet")
    assert "resnet18" in set(mcnemar["b"])
    assert (folder / "reliability.png").is_file()
    members = pd.read_parquet(folder / "members.parquet").set_index("name")
    # --resnet-epochs caps the ResNet alone; every row says its cap and the epochs it ran
    assert members.loc["r0_resnet18", "max_epochs"] == members.loc["r0_resnet18", "epochs_run"] == 1
    assert set(members.loc[members["model"] == "lenet5", "max_epochs"]) == {2}


@pytest.mark.parametrize(
    ("name", "first", "sentence"),
    [
        ("fashion", "T-shirt/top", "The vote fails most on classes 6 (Shirt): 28.50% error and 2 (Pullover)"),
        ("ensemble", "0", "The vote fails most on classes "),
    ],
)
def test_a_legacy_per_class_table_reads_back_with_named_classes(tmp_path, name, first, sentence):
    """Committed runs wrote the label as ``digit``: read back, it is ``class`` with ``class_name``
    beside it (Fashion-MNIST's names; MNIST's digits), it writes in that form, and the report names
    the worst classes from it."""
    import shutil

    from study.stages.ensemble.report import ensemble_section

    folder = tmp_path / "legacy" / name / "ensemble"
    shutil.copytree(PROJECT_ROOT / "results" / name / "ensemble", folder)
    table = pd.read_parquet(folder / "per_class.parquet")  # as earlier versions wrote it:
    legacy = table.rename(columns={"class": "digit"}).drop(columns=["class_name"], errors="ignore")
    legacy.to_parquet(folder / "per_class.parquet", index=False)
    results = EnsembleResults.read(folder)
    per_class = results.per_class
    assert list(per_class.columns[:2]) == ["class", "class_name"] and "digit" not in per_class
    assert per_class["class_name"].iloc[0] == first
    results.write_tables(tmp_path / "again")
    again = EnsembleResults.read(tmp_path / "again")  # no run.json here: the names come from the table
    pd.testing.assert_frame_equal(again.per_class, per_class)
    text = "\n".join(ensemble_section(results, folder.parent))
    assert sentence in text
    if name == "ensemble":  # a digit is not named twice ("3 (3)")
        worst = per_class.sort_values("hard_vote_error", ascending=False)["class"].iloc[0]
        assert f"classes {worst}: " in text
