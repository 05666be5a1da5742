"""study.stages.ensemble.figures and the per-class table: Fashion-MNIST's classes by name wherever
a class is shown (confusion matrices, mistakes, neighbours, per-class errors), digits as digits;
the reliability diagram shows how many test images each bin holds."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import study.stages.ensemble.figures as figures
from lenet_core.names import CLASS_NAMES
from study.common.stats import reliability_curve
from study.stages.ensemble.analysis import Repeat, per_class_table
from study.stages.ensemble.members import MemberOutput, MemberSpec

FASHION = CLASS_NAMES["fashion-mnist"]
DIGITS = tuple(str(d) for d in range(10))


@pytest.fixture
def drawn(monkeypatch) -> list:
    figs: list = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: figs.append(fig))
    yield figs
    for fig in figs:
        plt.close(fig)


def predictions(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    pred = np.where(rng.random(n) < 0.8, labels, rng.integers(0, 10, n))
    return labels, pred


def tick_texts(labels) -> list[str]:
    return [label.get_text() for label in labels]


@pytest.mark.parametrize(("names", "shown"), [(FASHION, FASHION), (None, DIGITS)])
def test_confusion_matrices_name_the_classes(drawn, tmp_path, names, shown):
    labels, pred = predictions()
    figures.confusion_matrices(labels, [("vote", pred)], tmp_path / "c.png", class_names=names)
    for ax in drawn[0].axes:
        assert tick_texts(ax.get_xticklabels()) == list(shown)
        assert tick_texts(ax.get_yticklabels()) == list(shown)
        assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"


def test_misclassified_captions_name_true_and_predicted_class(drawn, tmp_path):
    labels, pred = predictions()
    images = np.zeros((len(labels), 28, 28), dtype=np.float32)
    confidence = np.linspace(0.5, 1.0, len(labels))
    figures.misclassified_grid(
        images, labels, pred, confidence, tmp_path / "m.png", limit=8, class_names=FASHION
    )
    titles = [ax.get_title() for ax in drawn[0].axes if ax.get_title()]
    wrong = np.flatnonzero(pred != labels)
    first = wrong[np.argmax(confidence[wrong])]  # the most confident mistake comes first
    assert titles[0] == f"{FASHION[labels[first]]}\n→ {FASHION[pred[first]]}\n{confidence[first]:.0%}"
    assert all("→" in t and not t.startswith("true ") for t in titles)
    figures.misclassified_grid(images, labels, pred, confidence, tmp_path / "d.png", limit=8)
    assert drawn[1].axes[0].get_title().startswith(f"true {labels[first]} → {pred[first]}")  # digits


def test_nearest_neighbours_name_each_class(drawn, tmp_path):
    rng = np.random.default_rng(0)
    train_labels = np.arange(40) % 10
    train_features = rng.normal(size=(40, 84))
    images = np.zeros((40, 28, 28), dtype=np.float32)
    figures.neighbour_grid(
        images[:2],
        train_features[:2],
        images,
        train_features,
        train_labels,
        tmp_path / "n.png",
        k=3,
        query_labels=np.array([6, 0]),
        class_names=FASHION,
    )
    titles = [ax.get_title() for ax in drawn[0].axes]
    assert titles[0] == "query: Shirt" and titles[4] == "query: T-shirt/top"
    # a query that is itself a training image finds itself first
    assert titles[1] == FASHION[train_labels[0]] and set(titles[1:4]) <= set(FASHION)


def test_reliability_diagram_shows_the_count_of_every_bin(drawn, tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 500)
    sharp = np.full((500, 10), 0.01)
    sharp[np.arange(500), labels] = 0.91
    flat = rng.dirichlet(np.ones(10), 500)
    figures.reliability_diagram([("sharp", sharp), ("flat", flat)], labels, tmp_path / "r.png")
    diagram, counts = drawn[0].axes
    assert diagram.get_ylabel() == "accuracy" and "per bin" in counts.get_ylabel()
    steps = counts.patches
    assert [s.get_label() for s in steps] == ["sharp", "flat"]
    for step, proba in zip(steps, (sharp, flat), strict=True):
        values, edges = step.get_data().values, step.get_data().edges
        curve = reliability_curve(proba, labels)
        assert np.array_equal(values, curve["count"]) and values.sum() == 500
        assert np.allclose(edges, np.linspace(0, 1, 16))


def test_per_class_table_names_classes_for_fashion_and_digits():
    labels = np.arange(30) % 10
    member = MemberOutput(
        spec=MemberSpec(name="r0_seed_00", config=None, bootstrap_seed=None),  # type: ignore[arg-type]
        summary={"best_val_acc": 0.9},
        state_dict={},
        test_proba=np.eye(10)[labels],
        oob_idx=np.array([], dtype=int),
        oob_proba=np.zeros((0, 10)),
    )
    repeat = Repeat(index=0, groups={"seed": [member]}, baseline=None)
    table = pd.DataFrame({"label": labels, "hard_vote_pred": labels})
    fashion = per_class_table(table, repeat, 10, dataset="fashion-mnist")
    assert list(fashion.columns[:2]) == ["class", "class_name"] and "digit" not in fashion
    assert list(fashion["class"]) == list(range(10)) and tuple(fashion["class_name"]) == FASHION
    digits = per_class_table(table, repeat, 10, dataset="mnist")
    assert tuple(digits["class_name"]) == DIGITS


def test_accuracy_for_compute_puts_seconds_on_a_log_axis_so_the_votes_spread(drawn, tmp_path):
    curve = {"mean": [0.96, 0.97, 0.975], "low": [0.95, 0.96, 0.97], "high": [0.97, 0.98, 0.98]}
    curves = {"seed ensemble": curve | {"seconds_per_member": 7.0}}
    figures.vote_accuracy_curve(curves, 0.96, ("resnet18", 0.98, 700.0), tmp_path / "v.png", repeats=3)
    left, right = drawn[0].axes
    assert left.get_xscale() == "linear" and right.get_xscale() == "log"
    low, high = right.get_xlim()
    assert low <= 7.0 and high >= 700.0  # the first vote and the ResNet both inside the axis
