"""study.stages.sweep.figures: panels that stay readable, bands that stay positive on log axes, and
nothing in a legend off the axes (failed runs beyond the y range marked on its edge and named)."""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.collections import PathCollection
from matplotlib.lines import Line2D
from PIL import Image

import study.stages.sweep.figures as figures
from study.stages.sweep.figures import _seed_band, curves, facet_field, learning_curves


def grid_runs(**values: list) -> pd.DataFrame:
    rows = [dict(zip(values, combo, strict=True)) for combo in itertools.product(*values.values())]
    return pd.DataFrame(rows)


def test_a_grid_too_large_for_one_panel_is_split_by_the_field_leaving_fewest_lines():
    variants = grid_runs(
        variant=["classic", "modern"],
        activation=["scaled_tanh", "tanh", "relu", "sigmoid"],
        pooling=["subsample", "avg", "max"],
    )
    assert facet_field(variants, ["variant", "activation", "pooling"]) == "activation"  # 4 panels x 6
    small = grid_runs(optimizer=["sgd", "adam"], lr=[1e-3, 1e-2])
    assert facet_field(small, ["optimizer", "lr"]) is None  # 4 lines fit one panel
    one_field = grid_runs(lr=[10.0**-k for k in range(12)])
    assert facet_field(one_field, ["lr"]) is None  # nothing to split by


def test_log_metric_band_is_the_geometric_mean_and_stays_positive():
    losses = pd.DataFrame({"epoch": [1, 1, 1], "train_loss": [1e-4, 1e-2, 1.0]})
    centre, low, high, count = _seed_band(losses, "train_loss")
    assert np.isclose(centre.loc[1], 1e-2)  # exp(mean(log)): the middle of 1e-4, 1e-2, 1
    assert low.loc[1] > 0 and np.isclose(low.loc[1] * high.loc[1], centre.loc[1] ** 2)  # symmetric in log
    assert count.loc[1] == 3
    # a linear band would have gone below zero here: mean 0.337 - std 0.574
    accuracy = pd.DataFrame({"epoch": [1, 1], "val_acc": [0.5, 0.7]})
    centre, low, high, _ = _seed_band(accuracy, "val_acc")
    assert np.isclose(centre.loc[1], 0.6)
    assert np.isclose(high.loc[1] - centre.loc[1], np.std([0.5, 0.7], ddof=1))


def test_curves_draw_one_panel_per_value_of_the_split_field(tmp_path):
    runs = grid_runs(variant=["classic", "modern"], activation=["tanh", "relu"], pooling=["avg", "max", "s"])
    runs["run"], runs["seed"], runs["status"] = range(len(runs)), 0, "completed"
    epochs = pd.DataFrame(
        [{"run": r, "epoch": e, "val_acc": 0.5 + 0.1 * e} for r in runs["run"] for e in (1, 2, 3)]
    )
    swept = ["variant", "activation", "pooling"]
    curves(runs, epochs, swept, "val_acc", tmp_path / "split.png", title="t")
    curves(runs[runs["pooling"] == "max"], epochs, swept, "val_acc", tmp_path / "one.png", title="t")
    split, one = (Image.open(tmp_path / name) for name in ("split.png", "one.png"))
    assert facet_field(runs, swept) == "pooling"  # 12 lines: 3 panels of 4
    assert split.height > 1.8 * one.height  # three stacked 3.4-inch panels against one 4.8-inch panel


def test_learning_curves_give_each_value_of_the_split_field_a_row(tmp_path):
    runs = grid_runs(variant=["classic", "modern"], activation=["tanh", "relu"], pooling=["avg", "max", "s"])
    runs["run"], runs["seed"], runs["status"] = range(len(runs)), 0, "completed"
    metrics = {"train_loss": 1.0, "val_loss": 1.2, "train_acc": 0.6, "val_acc": 0.55}
    per_epoch = [
        {"run": r, "epoch": e} | {k: v / e for k, v in metrics.items()} for r in runs["run"] for e in (1, 2)
    ]
    epochs = pd.DataFrame(per_epoch)
    swept = ["variant", "activation", "pooling"]
    learning_curves(runs, epochs, swept, tmp_path / "rows.png", title="t")
    learning_curves(runs[runs["pooling"] == "max"], epochs, swept, tmp_path / "grid.png", title="t")
    split, grid = (Image.open(tmp_path / name) for name in ("rows.png", "grid.png"))
    assert split.width > grid.width  # four metrics side by side, against a 2x2 grid
    assert split.height > grid.height  # three rows of 3.2 inches, against 8 inches


def diverging_sweep() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The learning-rates sweep's shape: lr=10 and 1 diverge after one epoch (training loss 1e10
    and 1e5, far above the ok runs), lr=0.1 collapses to chance accuracy, lr=1e-3 learns."""
    runs = grid_runs(lr=[10.0, 1.0, 0.1, 1e-3], seed=[0, 1])
    runs["run"] = range(len(runs))
    runs["status"] = runs["lr"].map({10.0: "diverged", 1.0: "diverged", 0.1: "collapsed", 1e-3: "completed"})
    rows = []
    for run in runs.itertuples():
        if run.status == "diverged":
            loss = 1e10 if run.lr == 10 else 1e5
            rows.append({"run": run.run, "epoch": 1, "train_loss": loss, "val_loss": 2.5, "val_acc": 0.1})
            continue
        for epoch in (1, 2, 3):
            if run.status == "collapsed":
                metrics = {"train_loss": 9.0 / epoch, "val_loss": 2.3, "val_acc": 0.1}
            else:
                metrics = {"train_loss": 0.5 / epoch, "val_loss": 0.4 / epoch, "val_acc": 0.8 + 0.05 * epoch}
            rows.append({"run": run.run, "epoch": epoch, **metrics})
    epochs = pd.DataFrame(rows)
    epochs["train_acc"] = epochs["val_acc"]
    return runs, epochs


def drawn_inside(ax, artist) -> bool:
    """Whether some point of a line or scatter is drawn inside the axes (its edges included)."""
    if isinstance(artist, Line2D):
        points = artist.get_transform().transform(artist.get_xydata())
    else:
        points = artist.get_offset_transform().transform(artist.get_offsets())
    box = ax.bbox
    return bool(
        (
            np.isfinite(points).all(axis=1)
            & (points[:, 0] >= box.x0 - 1)
            & (points[:, 0] <= box.x1 + 1)
            & (points[:, 1] >= box.y0 - 1)
            & (points[:, 1] <= box.y1 + 1)
        ).any()
    )


def assert_nothing_off_axis(ax) -> None:
    """Every legend entry has an artist drawn inside the axes, or the panel's off-scale note names
    it (beside the panel, or in the figure's footnote); every failed run's end marker is inside
    the axes (on an edge when beyond the y range)."""
    notes = " ".join(text.get_text() for text in [*ax.texts, *ax.figure.texts])
    for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
        point = label.split(":")[0].split(" (")[0]  # "lr=10: 2 diverged" -> "lr=10"
        assert drawn_inside(ax, handle) or ("off scale" in notes and f"{point} (" in notes), label
    for collection in ax.collections:
        if isinstance(collection, PathCollection):
            assert drawn_inside(ax, collection), collection.get_label()


def test_diverged_runs_beyond_the_axis_are_marked_on_its_edge_and_named(monkeypatch, tmp_path):
    runs, epochs = diverging_sweep()
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig))
    curves(runs, epochs, ["lr"], "train_loss", tmp_path / "loss.png", title="t")
    learning_curves(runs, epochs, ["lr"], tmp_path / "curves.png", title="t")
    for fig in drawn:
        fig.canvas.draw()
        for ax in fig.axes:
            assert_nothing_off_axis(ax)
            assert all(tick == int(tick) for tick in ax.get_xticks())  # epochs are whole
    loss = drawn[0].axes[0]
    labels = loss.get_legend_handles_labels()[1]
    assert {"lr=10: 2 diverged", "lr=1: 2 diverged", "lr=0.1: 2 collapsed"} <= set(labels)
    [note] = [t.get_text() for t in loss.texts]
    assert note.startswith("off scale (▲ above")
    assert "lr=10 (2 diverged, ended at 1e+10)" in note and "lr=1 (2 diverged, ended at 1e+05)" in note
    # the 2x2 grid names its off-scale ends in one footnote, each after its panel, none beside a
    # panel (that pushed the columns apart); validation accuracy: collapsed runs at 0.1, below
    grid = drawn[1]
    assert not any(ax.texts for ax in grid.axes)
    [footnote] = [t.get_text() for t in grid.texts if "off scale" in t.get_text()]
    lines = footnote.split("\n")
    assert any(
        line.startswith("validation accuracy: off scale (▼ below") and "lr=0.1 (2 collapsed" in line
        for line in lines
    )
    loss_line = "training loss: off scale (▲ above"
    assert any(line.startswith(loss_line) and "lr=10 (2 diverged" in line for line in lines)
    for fig in drawn:
        plt.close(fig)


def test_groups_failing_at_one_value_each_keep_a_visible_mark(monkeypatch, tmp_path):
    from study.stages.sweep.tables import SELECTION_MEAN, SELECTION_STD

    # sgd and rmsprop both fail at lr 0.1: two x marks there, one above the other, not one on top
    selection = pd.DataFrame(
        {
            "optimizer": ["sgd", "sgd", "rmsprop", "rmsprop", "adam", "adam"],
            "lr": [0.01, 0.1, 0.01, 0.1, 0.01, 0.1],
            SELECTION_MEAN: [0.95, np.nan, 0.96, np.nan, 0.97, 0.9],
            SELECTION_STD: [0.01, np.nan, 0.01, np.nan, 0.01, 0.02],
            "n": [3, 0, 3, 0, 3, 3],
            "selected": [True, False, True, False, True, False],
        }
    )
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig))
    figures.selection_plot(selection, ["optimizer"], "lr", tmp_path / "s.png", title="t")
    [ax] = drawn[0].axes
    marks = [
        tuple(offset)
        for collection in ax.collections
        if isinstance(collection, PathCollection) and collection.get_offset_transform() != ax.transData
        for offset in collection.get_offsets()
    ]
    assert len(marks) == 2 and len(set(marks)) == 2  # both failures at lr 0.1, at two heights
    assert {x for x, _ in marks} == {0.1}
    plt.close(drawn[0])


def test_the_thin_line_note_appears_only_where_an_ok_run_stopped_early(monkeypatch, tmp_path):
    metrics = {"train_loss": 1.0, "val_loss": 1.2, "train_acc": 0.6, "val_acc": 0.55}
    runs = pd.DataFrame(
        {"run": [0, 1], "seed": [0, 1], "lr": [0.1, 0.1], "status": ["completed", "diverged"]}
    )
    runs["stopped_early"] = [False, True]  # only the diverged run stopped: a fixed budget otherwise
    epochs = pd.DataFrame([{"run": r, "epoch": e} | metrics for r in (0, 1) for e in (1, 2)])
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig))
    learning_curves(runs, epochs, ["lr"], tmp_path / "a.png", title="t")
    runs.loc[0, "stopped_early"] = True  # an ok run stopped by patience
    learning_curves(runs, epochs, ["lr"], tmp_path / "b.png", title="t")
    fixed, patience = (fig._suptitle.get_text() for fig in drawn)
    assert "stopped early" not in fixed and "thin: after some seeds stopped early" in patience
    for fig in drawn:
        plt.close(fig)
