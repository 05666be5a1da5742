"""`study ensemble` on the 8x8 digits: bookkeeping, checkpoints, files, bad input."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from lenet_core.config import TrialConfig
from lenet_core.errors import ConfigError
from lenet_core.train import trial_split
from study.cli import app
from study.ensemble.run import bagging_indices, load_member, member_specs, save_member, train_member

runner = CliRunner()
FAST = TrialConfig(dataset="digits", epochs=1, threads=1)
PNG = b"\x89PNG\r\n\x1a\n"


def test_members_get_distinct_seeds_and_bootstraps(digits):
    specs = member_specs([FAST], 3, seed=10)
    assert [s.config.seed for s in specs] == [10, 11, 12]
    assert [s.bootstrap_seed for s in specs] == [10, 11, 12]
    with pytest.raises(ConfigError, match="--members must be >= 2"):
        member_specs([FAST], 1, seed=0)


def test_bootstrap_bookkeeping_keeps_validation_out_and_oob_exact(digits):
    spec = member_specs([FAST], 2, seed=0)[1]
    in_bag, oob = bagging_indices(spec, digits)
    train_idx, val_idx = trial_split(digits, spec.config)
    assert len(in_bag) == len(train_idx)  # same size, drawn with replacement
    assert set(in_bag) <= set(train_idx) and not set(in_bag) & set(val_idx)
    assert set(oob) == set(train_idx) - set(in_bag)
    again, _ = bagging_indices(spec, digits)
    assert np.array_equal(in_bag, again)


def test_heterogeneous_members_cycle_over_configs():
    configs = [FAST, FAST.replace(lr=0.01)]
    assert [s.config.lr for s in member_specs(configs, 3, seed=0)] == [1e-3, 0.01, 1e-3]


def test_member_checkpoint_round_trip_and_mismatch(digits, tmp_path):
    spec = member_specs([FAST], 2, seed=0)[0]
    output = train_member(spec, digits)
    assert output.test_proba.shape == (len(digits.test_labels), 10)
    assert len(output.oob_idx) == len(output.oob_proba) > 0
    save_member(output, tmp_path)
    loaded = load_member(spec, tmp_path)
    assert loaded is not None
    assert np.array_equal(loaded.test_proba, output.test_proba)
    assert np.array_equal(loaded.oob_idx, output.oob_idx)
    assert loaded.summary["test_acc"] == output.summary["test_acc"]
    other = member_specs([FAST.replace(lr=0.01)], 2, seed=0)[0]
    assert load_member(other, tmp_path) is None  # a different config is not reused
    (tmp_path / "members" / spec.name / "predictions.npz").write_bytes(b"garbage")
    assert load_member(spec, tmp_path) is None  # damaged: trained again


@pytest.fixture(scope="module")
def small_ensemble(tmp_path_factory):
    out = tmp_path_factory.mktemp("ens")
    args = [
        "ensemble",
        "--dataset",
        "digits",
        "--members",
        "3",
        "--epochs",
        "2",
        "--out",
        str(out),
        "--name",
        "e",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out / "e" / "ensemble", result.output, args


def test_ensemble_writes_every_table_readable_with_pandas(small_ensemble, digits):
    folder, output, _ = small_ensemble
    assert "mean single-member test accuracy" in output and "hard vote" in output
    comparison = pd.read_parquet(folder / "comparison.parquet")
    assert list(comparison["model"]) == [
        "member_00",
        "member_01",
        "member_02",
        "hard vote",
        "soft vote",
        "resnet18",
    ]
    assert (comparison["ci95_low"] <= comparison["test_acc"]).all()
    assert (comparison["test_acc"] <= comparison["ci95_high"]).all()
    assert comparison["test_error"].add(comparison["test_acc"]).eq(1).all()
    assert pd.read_csv(folder / "comparison.csv").shape == comparison.shape
    assert "hard vote" in (folder / "comparison.md").read_text()
    predictions = pd.read_parquet(folder / "predictions.parquet")
    assert len(predictions) == len(digits.test_labels)
    for column in (
        "label",
        "member_00_pred",
        "votes",
        "vote_margin",
        "hard_vote_pred",
        "soft_vote_pred",
        "resnet_pred",
        "resnet_confidence",
        "wrong_for_every_member",
        "fixed_by_vote",
    ):
        assert column in predictions.columns
    hard_acc = (predictions["hard_vote_pred"] == predictions["label"]).mean()
    assert hard_acc == pytest.approx(comparison.set_index("model").loc["hard vote", "test_acc"])
    per_class = pd.read_csv(folder / "per_class.csv")
    assert list(per_class["digit"]) == list(range(10))
    assert {"best_member_error", "hard_vote_error", "resnet_error"} <= set(per_class.columns)
    diversity = json.loads((folder / "diversity.json").read_text())
    assert 0 <= diversity["mean_pairwise_disagreement"] <= 1
    assert diversity["oracle_accuracy"] >= diversity["hard_vote_test_acc"] - 1e-9
    assert len(diversity["vote_accuracy_by_members"]) == 3


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
    ):
        data = (folder / f"{name}.png").read_bytes()
        assert data[:8] == PNG and len(data) > 5000, name


def test_rerun_reuses_checkpointed_members(small_ensemble):
    folder, _, args = small_ensemble
    before = (folder / "members" / "member_00" / "model.pt").stat().st_mtime_ns
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "0 models to train, 4 reused" in result.output
    assert (folder / "members" / "member_00" / "model.pt").stat().st_mtime_ns == before
