"""study.stages.tune.figures: the learning-curve figure says how many trials it draws, on whole epochs;
the trial figures tell completed, pruned (with its epochs), collapsed and diverged trials apart; the
importance is Optuna's own, from enough completed trials or none."""

from __future__ import annotations

import matplotlib.legend
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import study.stages.tune.figures as figures
from tests.conftest import PROJECT_ROOT


def study_tables(completed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    trials = pd.DataFrame(
        {
            "trial_id": [f"t{i}" for i in range(7)],
            "trial": range(1, 8),
            "optimizer": "adam",
            "lr": 1e-3,
            "status": ["completed"] * completed + ["pruned"] * (7 - completed),
            "best_val_acc": [0.9 - 0.01 * i for i in range(7)],
        }
    )
    epochs = pd.DataFrame(
        [{"trial_id": f"t{i}", "epoch": e, "val_acc": 0.5 + 0.1 * e} for i in range(7) for e in (1, 2, 3)]
    )
    return trials, epochs


@pytest.mark.parametrize(("completed", "title"), [(7, "of the top 5 completed"), (2, "of all 2 completed")])
def test_learning_curves_say_how_many_trials_they_draw(monkeypatch, tmp_path, completed, title):
    drawn = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.update(fig=fig))
    figures.learning_curves(*study_tables(completed), tmp_path / "curves.png")
    ax = drawn["fig"].axes[0]
    assert title in ax.get_title()
    assert len(ax.lines) == min(completed, 5)
    drawn["fig"].canvas.draw()
    assert all(tick == int(tick) for tick in ax.get_xticks())  # no epoch 1.25
    plt.close(drawn["fig"])


def test_learning_curves_with_no_completed_trial_say_so_without_an_empty_legend(monkeypatch, tmp_path):
    drawn = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.update(fig=fig))
    figures.learning_curves(*study_tables(0), tmp_path / "curves.png")
    ax = drawn["fig"].axes[0]
    assert not ax.lines and ax.get_legend() is None
    assert [t.get_text() for t in ax.texts] == ["no trial completed"]
    plt.close(drawn["fig"])


def capture(monkeypatch) -> dict:
    drawn = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.update(fig=fig))
    return drawn


def mixed_study() -> pd.DataFrame:
    """Two completed trials, three pruned at two rungs, one collapsed, one diverged without an
    accuracy: the shapes of a real ASHA study (fashion: 8 completed, 32 pruned after 1-16 epochs)."""
    rows = [
        ("completed", 20, 0.91),
        ("pruned", 1, 0.48),
        ("completed", 13, 0.90),
        ("pruned", 1, 0.75),
        ("pruned", 4, 0.88),
        ("collapsed", 20, 0.10),
        ("diverged", 2, float("nan")),
    ]
    return pd.DataFrame(
        {
            "trial_id": [f"t{i}" for i in range(len(rows))],
            "trial": range(1, len(rows) + 1),
            "optimizer": ["adam", "sgd", "adam", "rmsprop", "adam", "sgd", "sgd"],
            "lr": [1e-3, 1e-2, 2e-3, 1e-4, 5e-3, 0.1, 1.0],
            "status": [r[0] for r in rows],
            "epochs_run": [r[1] for r in rows],
            "best_val_acc": [r[2] for r in rows],
            "config": ['{"epochs": 20, "optimizer": "adam"}'] * len(rows),
        }
    )


EXPECTED_LABELS = [
    "completed (2, 13-20 of 20 epochs)",
    "pruned after 1 of 20 epochs (2)",
    "pruned after 4 of 20 epochs (1)",
    "collapsed (1)",
    "diverged (1; 1 without accuracy, at the bottom)",
]


def inside(ax, artist) -> bool:
    """Whether every point of a scatter lies in the axes as drawn (edges included)."""
    points = artist.get_offset_transform().transform(artist.get_offsets())
    box = ax.bbox
    return bool(
        ((points[:, 0] >= box.x0 - 1) & (points[:, 0] <= box.x1 + 1)).all()
        and ((points[:, 1] >= box.y0 - 1) & (points[:, 1] <= box.y1 + 1)).all()
    )


def test_every_status_has_a_marker():
    from lenet_core.status import Status

    assert set(Status) == set(figures.PARTIAL) | set(figures.FULL_STYLES)


def test_optimization_history_tells_statuses_apart_and_says_pruned_points_are_partial(monkeypatch, tmp_path):
    drawn = capture(monkeypatch)
    figures.optimization_history(mixed_study(), tmp_path / "history.png")
    fig = drawn["fig"]
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == [*EXPECTED_LABELS, "best completed so far"]
    assert "partial budget" in ax.get_title() and "partial budget" in legend.get_title().get_text()
    scatters = {c.get_label(): c for c in ax.collections}
    # hollow markers for partial budgets, filled for full runs; a distinct shape per rung
    assert scatters["pruned after 1 of 20 epochs (2)"].get_facecolors().size == 0
    assert scatters["completed (2, 13-20 of 20 epochs)"].get_facecolors().size > 0
    diverged = [c for c in ax.collections if c.get_label() == EXPECTED_LABELS[-1]]
    assert diverged and all(inside(ax, c) for c in diverged)  # no accuracy, still drawn, at the bottom
    assert all(tick == int(tick) for tick in ax.get_xticks())  # trials are whole
    plt.close(fig)


def test_accuracy_vs_lr_marks_status_and_epochs_beside_the_optimizer_colours(monkeypatch, tmp_path):
    drawn = capture(monkeypatch)
    figures.accuracy_vs_lr(mixed_study(), tmp_path / "lr.png")
    fig = drawn["fig"]
    fig.canvas.draw()
    ax = fig.axes[0]
    legends = [a for a in ax.get_children() if isinstance(a, matplotlib.legend.Legend)]
    texts = [[t.get_text() for t in legend.get_texts()] for legend in legends]
    assert ["adam", "rmsprop", "sgd"] in texts
    assert EXPECTED_LABELS in texts
    assert "partial budget" in ax.get_title()
    # every trial is drawn inside the axes, the diverged one without accuracy on the bottom edge
    assert sum(len(c.get_offsets()) for c in ax.collections) == len(mixed_study())
    assert all(inside(ax, c) for c in ax.collections)
    plt.close(fig)


def importance_study(n: int) -> tuple[pd.DataFrame, dict]:
    """``n`` completed trials whose accuracy follows lr alone, and the search space."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    rng = np.random.default_rng(0)
    lr = 10.0 ** rng.uniform(-4, 0, n)
    trials = pd.DataFrame(
        {
            "trial": range(1, n + 3),
            "status": ["completed"] * n + ["pruned"] * 2,
            "lr": [*lr, 1e-3, 1e-2],
            "pooling": rng.choice(["max", "avg"], n + 2),
            "best_val_acc": [*(0.9 - 0.1 * np.abs(np.log10(lr) + 2.5)), 0.99, 0.1],
        }
    )
    space = {"lr": FloatDistribution(1e-4, 1.0, log=True), "pooling": CategoricalDistribution(("max", "avg"))}
    return trials, space


def test_importance_is_optunas_default_evaluator_on_completed_trials_with_their_count(monkeypatch, tmp_path):
    import optuna

    drawn = capture(monkeypatch)
    trials, space = importance_study(12)
    found = figures.param_importance(trials, space, tmp_path / "importance.png")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for row in trials[trials["status"] == "completed"].itertuples():
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": row.lr, "pooling": row.pooling}, distributions=space, value=row.best_val_acc
            )
        )
    expected = optuna.importance.get_param_importances(study)  # its default evaluator
    assert (
        found == pytest.approx(dict(expected)) and list(found) == list(expected) and next(iter(found)) == "lr"
    )
    ax = drawn["fig"].axes[0]
    assert "from 12 completed trials" in ax.get_title()
    assert len(ax.patches) == 2 and not ax.texts
    plt.close(drawn["fig"])


def test_importance_draws_no_bars_below_the_minimum_of_completed_trials(monkeypatch, tmp_path):
    drawn = capture(monkeypatch)
    trials, space = importance_study(figures.MIN_IMPORTANCE_TRIALS - 2)
    assert figures.param_importance(trials, space, tmp_path / "importance.png") == {}
    ax = drawn["fig"].axes[0]
    n = figures.MIN_IMPORTANCE_TRIALS - 2
    assert not ax.patches
    assert [t.get_text() for t in ax.texts] == [
        f"too few completed trials ({n} < {figures.MIN_IMPORTANCE_TRIALS}) for importance"
    ]
    assert f"from {n} completed trials" in ax.get_title()
    plt.close(drawn["fig"])


def test_importance_matches_optuna_on_the_committed_fashion_study(monkeypatch):
    """The audit: an old figure ranked patience first (0.34) where Optuna's own tools on the same
    optuna.db ranked lr first. Our importances are Optuna's, on whatever study is committed (the
    second Fashion run: lr first, 0.40, then weight decay, from 13 completed trials)."""
    import optuna

    import study as api
    from study.stages.tune.optuna_store import storage_url

    folder = PROJECT_ROOT / "results" / "fashion" / "tune"
    tune = api.load(folder.parent).tune
    monkeypatch.setattr(figures, "MIN_IMPORTANCE_TRIALS", 2)
    found = figures.importances(tune.trials, tune.space.optuna_distributions())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(folder / "optuna.db")
    stored = optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url)
    expected = optuna.importance.get_param_importances(stored)
    assert found == pytest.approx(dict(expected)) and list(found) == list(expected)
    assert next(iter(found)) == "lr" and sum(found.values()) == pytest.approx(1.0)
