"""study.stages.sweep.figures: panels that stay readable, bands that stay positive on log axes."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from PIL import Image

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
