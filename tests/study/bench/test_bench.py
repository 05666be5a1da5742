"""`study bench`: every section runs end to end, and both sides of every A/B did the same work.

No timing assertions: speed is what the bench reports, not what a test can hold on a shared machine.
What is checked is that each ratio compares like with like (images, optimizer steps, evaluation
sizes, parameters), that the reference scripts really trained (their accuracies are real numbers
in (0, 1)), and that the JSON holds every section with finite figures.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from lenet_core.config import TrialConfig
from lenet_core.errors import StudyError
from lenet_core.train import build_trial_model, make_optimizer, train_one_epoch
from study.bench import BenchSettings, bench_command, report_tables
from study.bench.processes import ab_round, rotated_round, section, steps_per_epoch
from study.cli import app
from tests.conftest import FASHION_SUBSET, needs_fashion


def numbers(value, path="figures"):
    """Every number in a JSON tree, with where it sits."""
    if isinstance(value, bool):
        return
    if isinstance(value, int | float) or value is None:
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from numbers(item, f"{path}[{i}]")


def assert_all_finite(tree):
    for where, value in numbers(tree):
        assert value is not None and math.isfinite(value), where


@pytest.mark.slow
@needs_fashion
def test_quick_bench_compares_like_with_like_and_writes_every_section(fashion_subset, tmp_path, capsys):
    path = bench_command(quick=True, data_dir=fashion_subset, out=tmp_path, say=print)
    printed = capsys.readouterr().out
    assert path.parent == tmp_path / "bench"
    figures = json.loads(path.read_text())
    for key in ("train", "precision", "loop"):
        assert key in figures and figures[key]["section_seconds"] > 0, key
        assert figures[key]["load_before"] >= 0 and figures[key]["load_after"] >= 0
    assert_all_finite({k: figures[k] for k in ("train", "precision", "loop")})
    for title, _ in report_tables(figures):
        assert title.split(" (")[0] in printed, title

    # 1. the same epoch both ways: images, steps, evaluation sizes and the same LeNet-5
    train = figures["train"]
    ours, reference = train["ours_work"], train["reference_work"]
    train_images = FASHION_SUBSET["train"] * 9 // 10  # the other tenth is the validation split
    assert ours["train_images"] == reference["train_images"] == train_images
    assert ours["steps"] == reference["steps"] == -(-train_images // 64)
    assert ours["val_images"] == reference["val_images"] == FASHION_SUBSET["train"] - train_images
    assert ours["test_images"] == reference["test_images"] == FASHION_SUBSET["test"]
    assert ours["parameters"] == reference["parameters"] == 61_706
    assert ours["train_images_reported"] == ours["train_images"]  # what study train's history says
    for acc in train["ours_test_acc"] + train["reference_test_acc"]:
        assert 0.5 < acc < 1.0  # one real epoch of 5,400 Fashion-MNIST images, not a guess (0.1)
    assert train["speedup"] == pytest.approx(train["reference_wall_s"] / train["ours_wall_s"])
    # each side under the other's allocator: faster or not, it computes the same numbers
    assert train["reference_same_allocator_test_acc"] == train["reference_test_acc"]
    assert train["ours_default_allocator_test_acc"] == train["ours_test_acc"]
    assert train["speedup_same_allocator"] == pytest.approx(
        train["reference_same_allocator_wall_s"] / train["ours_wall_s"]
    )
    assert train["allocator_speedup"] == pytest.approx(
        train["ours_default_allocator_wall_s"] / train["ours_wall_s"]
    )
    for breakdown in (train["ours_breakdown_s"], train["reference_breakdown_s"]):
        parts = [v for k, v in breakdown.items() if k != "total"]
        assert all(v >= 0 for v in parts)
        assert sum(parts) >= breakdown["total"] * 0.9  # the phases account for the wall time

    # 2. bf16 against fp32: the same images and steps, both trained to a finite loss
    cases = figures["precision"]["cases"]
    assert [(c["model"], c["threads"]) for c in cases][:1] == [("resnet18", 2)]
    for case in cases:
        assert case["steps"] == steps_per_epoch(case["images"], case["batch_size"]) > 0
        assert case["fp32_images_per_s"] > 0 and case["bf16_images_per_s"] > 0

    # 3. the loop: both sides saw the same images in the same number of steps
    rows = figures["loop"]["rows"]
    assert [row["batch_size"] for row in rows] == [32, 64, 256]
    for row in rows:
        assert row["images"] == row["reference_images"] and row["steps"] == row["reference_steps"]


@pytest.mark.slow
@needs_fashion
def test_study_section_runs_the_same_trials_both_ways(fashion_subset, tmp_path):
    from lenet_core.data import load_dataset
    from study.bench.train import extract_for_torchvision
    from study.bench.tune import tune_overhead, whole_study

    settings = BenchSettings(quick=True, study=True)
    data = load_dataset("fashion-mnist", data_dir=fashion_subset)
    tv_root = extract_for_torchvision(fashion_subset, tmp_path / "tv")
    study = whole_study(
        data, data_dir=fashion_subset, tv_root=tv_root, settings=settings, work=tmp_path / "study"
    )
    ours, peer = study["ours"], study["peer"]
    for key in ("trials", "epochs", "train_images", "steps", "val_images"):
        assert ours[key] == peer[key], key
    assert ours["trials"] == settings.study_trials and ours["epochs"] == 2 * settings.study_epochs
    assert ours["errors"] == peer["errors"] == 0
    assert 0.1 < ours["best_val_acc"] < 1 and 0.1 < peer["best_val_acc"] < 1
    for side in (ours, peer):
        assert side["launch_to_first_trial_s"] > 0 and side["trials_span_s"] > 0
        assert side["last_trial_to_exit_s"] >= 0
    assert_all_finite({k: v for k, v in study.items() if k not in ("ours", "peer")})

    overhead = tune_overhead(data, settings)
    assert overhead["trials"] == settings.overhead_trials
    assert overhead["data_zero_copy_all_trials"] is True
    assert_all_finite(overhead)


@pytest.mark.slow
def test_ensemble_section_times_both_precisions_of_the_same_ensemble(tmp_path):
    from study.bench.ensemble import ensemble_ab

    settings = BenchSettings(quick=True, ensemble=True, epochs=1)
    figures = ensemble_ab(
        settings=settings, work=tmp_path, dataset="digits", data_dir=None, train_fraction=0.2
    )
    for precision in ("fp32", "bf16"):
        run = figures[precision]
        assert (
            f"--resnet-precision {precision}" in run["command"] and "--train-fraction 0.2" in run["command"]
        )
        assert run["models"] == 6 and run["lenets"] == 5
        assert run["resnet_training_s"] > 0 and 0 < run["resnet_test_acc"] <= 1
    assert_all_finite({k: v for k, v in figures.items() if k not in ("fp32", "bf16", "dataset")})


def test_accuracy_section_trains_every_seed_in_both_precisions(digits):
    from study.bench.precision import accuracy_ab

    settings = BenchSettings(quick=True, core=False, accuracy=True, epochs=1, seeds=2, precision_threads=1)
    lines = []
    sections = {}
    with section(sections, "accuracy", lines.append, "accuracy"):
        sections["accuracy"].update(accuracy_ab(digits, settings=settings, model="lenet5", say=lines.append))
    figures = sections["accuracy"]
    assert len(figures["fp32_test_acc"]) == len(figures["bf16_test_acc"]) == 2 and len(lines) == 1 + 4
    for acc in figures["fp32_test_acc"] + figures["bf16_test_acc"]:
        assert 0 < acc <= 1
    expected = 100 * (figures["bf16_mean"] - figures["fp32_mean"])
    assert figures["difference_points"] == pytest.approx(expected)
    assert figures["within_tolerance"] == (abs(expected) <= 0.5)
    [(title, rows)] = report_tables(sections)  # only the sections that ran are tabled
    assert title.startswith("6. lenet5 test accuracy") and [row["precision"] for row in rows] == [
        "fp32",
        "bf16",
    ]


@pytest.mark.parametrize("images", [1, 2, 63, 64, 65, 66, 130])
def test_steps_per_epoch_counts_the_optimizer_steps_lenet_core_takes(digits, images):
    config = TrialConfig(dataset="digits", batch_size=64, device="cpu")
    model = build_trial_model(config)
    optimizer = make_optimizer(config, model.parameters())
    steps = []
    optimizer.register_step_post_hook(lambda *_: steps.append(1))
    labels = torch.from_numpy(digits.train_labels)
    train_one_epoch(
        model,
        optimizer,
        torch.from_numpy(digits.train_images),
        labels,
        torch.arange(images),
        config=config,
        data=digits,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(steps) == steps_per_epoch(images, 64)


def test_rounds_alternate_which_side_goes_first():
    order = []
    results = [
        ab_round(i, lambda: order.append("A") or "a", lambda: order.append("B") or "b") for i in range(3)
    ]
    assert results == [("a", "b")] * 3
    assert order == ["A", "B", "B", "A", "A", "B"]


def test_three_sides_take_turns_leading_and_keep_their_order():
    order = []
    sides = [lambda name=name: order.append(name) or name.lower() for name in "ABC"]
    results = [rotated_round(i, sides) for i in range(3)]
    assert results == [("a", "b", "c")] * 3
    assert order == ["A", "B", "C", "B", "C", "A", "C", "A", "B"]


def test_bench_refuses_bad_settings_before_measuring(tmp_path):
    with pytest.raises(StudyError, match="--rounds must be >= 1"):
        BenchSettings(quick=True, rounds=0)
    with pytest.raises(StudyError, match="leaves nothing to measure"):
        BenchSettings(quick=True, core=False)
    with pytest.raises(StudyError, match="--device must be cpu or cuda"):
        BenchSettings(quick=True, device="tpu")
    with pytest.raises(StudyError, match="need MNIST"):
        bench_command(quick=True, out=tmp_path, ensemble=True, mnist_dir=tmp_path)
    assert not (tmp_path / "bench").exists()


def test_bench_rejects_bad_flags(tmp_path):
    result = CliRunner().invoke(app, ["bench", "--device", "tpu", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--device must be cpu or cuda" in result.stderr


@pytest.mark.parametrize(
    ("bf16_minus_fp32", "equivalent"),
    [
        ([0.20, 0.15, 0.15], True),  # consistent small differences: shown equivalent within 0.5 points
        ([0.40, -0.30, 0.30], False),  # mean 0.13, within the tolerance, but too noisy to show it
    ],
)
def test_bench_bf16_accuracy_claim_rests_on_a_paired_tost(monkeypatch, bf16_minus_fp32, equivalent):
    import types

    import lenet_core.train
    from study.bench.precision import accuracy_ab
    from study.bench.settings import BenchSettings

    fp32 = [0.970, 0.960, 0.980]
    accs = {("fp32", s): a for s, a in enumerate(fp32)}
    accs.update(
        {("bf16", s): a + d / 100 for s, (a, d) in enumerate(zip(fp32, bf16_minus_fp32, strict=True))}
    )

    def train_trial(config, data):
        return types.SimpleNamespace(
            test_acc=accs[(config.precision, config.seed)], history=[{"seconds": 1.0}]
        )

    monkeypatch.setattr(lenet_core.train, "train_trial", train_trial)
    settings = BenchSettings(quick=True, core=False, accuracy=True, epochs=1, seeds=3, precision_threads=1)
    figures = accuracy_ab(types.SimpleNamespace(name="digits"), settings=settings, model="lenet5", say=print)
    assert figures["within_tolerance"] is True  # the point estimate alone, as before
    assert figures["tost_margin_points"] == 0.5 and figures["equivalent"] is equivalent
    from study.common.stats import tost

    expected = tost(
        [100 * (a + d / 100) for a, d in zip(fp32, bf16_minus_fp32, strict=True)],
        [100 * a for a in fp32],
        0.5,
    )
    assert figures["tost_p"] == pytest.approx(expected["p"])
    assert (figures["tost_p"] < 0.05) is equivalent
    word = "equivalent" if equivalent else "not shown equivalent"
    assert figures["equivalence"] == f"{word} within ±0.5 points"
    low, high = figures["difference_ci90_points"]
    assert low < figures["difference_points"] < high
