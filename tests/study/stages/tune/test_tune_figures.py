"""study.stages.tune.figures: the learning-curve figure says how many trials it draws, on whole epochs."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import pytest

import study.stages.tune.figures as figures


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
