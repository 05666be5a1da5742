"""Ensemble members trained as packs (seed and bagged members of one config in one Ray task): the
same outputs, tables and checkpoints as members trained alone, and a resume packs only the
members still missing."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from lenet_core.config import TrialConfig
from study.cli import app
from study.stages.ensemble.members import load_member, member_specs, train_member, train_members

runner = CliRunner()
# Packed members add the same products in another order (lenet_core.packed): after 2 epochs of
# Adam on the digits their test accuracy is that of the member trained alone within 2 points
# (measured: equal on all 6 members; test probabilities within 0.06).
TEST_ACC_TOLERANCE = 0.02


def test_packed_members_match_members_trained_alone(digits):
    config = TrialConfig(dataset="digits", epochs=2, threads=1)
    specs = member_specs([config], 2, seed=0)  # 2 seed + 2 bagged members: one pack
    packed = train_members(specs, digits)
    for spec, together in zip(specs, packed, strict=True):
        solo = train_member(spec, digits)
        assert together.spec == spec
        assert set(together.summary) == set(solo.summary)
        assert together.summary["epochs_run"] == solo.summary["epochs_run"] == 2
        assert together.summary["test_acc"] == pytest.approx(solo.summary["test_acc"], abs=TEST_ACC_TOLERANCE)
        assert {k: v.shape for k, v in together.state_dict.items()} == {
            k: v.shape for k, v in solo.state_dict.items()
        }
        assert together.test_proba.shape == solo.test_proba.shape == (len(digits.test_labels), 10)
        # the bootstrap is the spec's: the same out-of-bag images, predicted by the packed weights
        assert np.array_equal(together.oob_idx, solo.oob_idx)
        assert together.oob_proba.shape == solo.oob_proba.shape
        assert (len(together.oob_idx) > 0) == (spec.group == "bagged")


ARGS = ["ensemble", "--dataset", "digits", "--members", "3", "--epochs", "1", "--resnet", "none"]


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")
def test_packed_ensemble_has_the_unpacked_tables_and_resume_packs_only_missing_members(tmp_path):
    packed = runner.invoke(app, [*ARGS, "--pack", "3", "--out", str(tmp_path), "--name", "p"])
    assert packed.exit_code == 0, packed.output
    assert "6 models to train, 0 read back" in packed.output and "in 2 packs of up to 3" in packed.output
    alone = runner.invoke(app, [*ARGS, "--no-pack", "--out", str(tmp_path), "--name", "a"])
    assert alone.exit_code == 0, alone.output
    assert "of them in" not in alone.output  # no pack
    folders = {name: tmp_path / name / "ensemble" for name in ("p", "a")}
    tables = {name: pd.read_parquet(folder / "members.parquet") for name, folder in folders.items()}
    assert list(tables["p"].columns) == list(tables["a"].columns)
    assert list(tables["p"]["name"]) == list(tables["a"]["name"])
    assert set(tables["p"]["pack_size"]) == {3} and set(tables["a"]["pack_size"]) == {1}
    assert np.allclose(tables["p"]["test_acc"], tables["a"]["test_acc"], atol=TEST_ACC_TOLERANCE)
    for name in tables["p"]["name"]:
        files = [sorted(p.name for p in (f / "members" / name).iterdir()) for f in folders.values()]
        assert files[0] == files[1]
    specs = member_specs([TrialConfig(dataset="digits", epochs=1)], 3, seed=0)
    for spec in specs:
        together, solo = (load_member(spec, folders[key]) for key in ("p", "a"))
        assert together is not None and solo is not None  # the same identity: either reuses it
        assert {k: v.shape for k, v in together.state_dict.items()} == {
            k: v.shape for k, v in solo.state_dict.items()
        }
        assert together.test_proba.shape == solo.test_proba.shape
        assert np.array_equal(together.oob_idx, solo.oob_idx)
    # a resume after losing two seed and two bagged members packs just those four (two packs of
    # two on two cores: pack_units keeps every core busy)
    members = folders["p"] / "members"
    kept = {p.name: (p / "model.pt").stat().st_mtime_ns for p in members.iterdir()}
    lost = ["r0_seed_00", "r0_seed_01", "r0_bagged_01", "r0_bagged_02"]
    for name in lost:
        (members / name / "result.json").unlink()
        kept.pop(name)
    resumed = runner.invoke(app, [*ARGS, "--pack", "3", "--out", str(tmp_path), "--name", "p", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "4 models to train, 2 read back, 2 at a time; 4 of them in 2 packs of up to 2" in resumed.output
    assert {name: (members / name / "model.pt").stat().st_mtime_ns for name in kept} == kept
    table = pd.read_parquet(folders["p"] / "members.parquet").set_index("name")
    assert table.loc[lost, "pack_size"].tolist() == [2] * 4
    assert table.drop(index=lost)["pack_size"].tolist() == [3] * 2  # read back as trained
