"""Error-analysis figures of `study ensemble`. Each has a title, axis labels and a legend or caption."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter

from lenet_core.data import ImageData
from lenet_core.names import CLASS_NAMES
from study.common.files import save_figure

DIGITS = list(range(10))


def confusion_matrices(
    labels: np.ndarray,
    panels: list[tuple[str, np.ndarray]],
    path: Path,
    *,
    class_names: tuple[str, ...] | None = None,
) -> None:
    """Counts (top) and row-normalised rates (bottom: each true class's row sums to 1) per model;
    the axes name the classes (Fashion-MNIST's names, or the digits)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    named = class_names is not None
    size = (6.6, 12.4) if named else (5.4, 10)
    fig, axes = plt.subplots(2, len(panels), figsize=(size[0] * len(panels), size[1]), squeeze=False)
    for col, (name, pred) in enumerate(panels):
        for row, (normalize, fmt, what) in enumerate(
            ((None, "d", "counts"), ("true", ".2f", "row-normalised"))
        ):
            ax = axes[row, col]
            ConfusionMatrixDisplay.from_predictions(
                labels,
                pred,
                labels=DIGITS,
                display_labels=list(class_names) if named else DIGITS,
                normalize=normalize,
                values_format=fmt,
                cmap="Blues",
                ax=ax,
                colorbar=False,
                text_kw={"fontsize": 6},
                xticks_rotation=40 if named else "horizontal",
            )
            if named:
                plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
            ax.set_title(f"{name}: {what}")
            ax.set(xlabel="predicted class", ylabel="true class")
    fig.suptitle("Confusion matrices on the test set (row-normalised: share of each true class)")
    fig.tight_layout()
    save_figure(fig, path)


def _name(label: int, class_names: tuple[str, ...] | None) -> str:
    return class_names[label] if class_names else str(label)


def misclassified_grid(
    images: np.ndarray,
    labels: np.ndarray,
    pred: np.ndarray,
    confidence: np.ndarray,
    path: Path,
    *,
    limit: int,
    class_names: tuple[str, ...] | None = None,
) -> None:
    """The vote's most confident mistakes: true label, prediction and confidence under each
    (class names for Fashion-MNIST, on two lines: they are wider than a digit)."""
    wrong = np.flatnonzero(pred != labels)
    wrong = wrong[np.argsort(-confidence[wrong])][:limit]
    cols = 8
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    width, height = (1.5, 1.8) if class_names else (1.3, 1.55)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * width, rows * height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong, strict=False):
        ax.imshow(images[i], cmap="gray_r")
        true, guess = _name(labels[i], class_names), _name(pred[i], class_names)
        caption = f"{true}\n→ {guess}" if class_names else f"true {true} → {guess}"
        ax.set_title(f"{caption}\n{confidence[i]:.0%}", fontsize=8)
    fig.suptitle(
        f"Most confident mistakes of the vote ({len(np.flatnonzero(pred != labels))} "
        f"errors in all); caption: true → predicted, mean member probability"
    )
    if not len(wrong):
        axes.flat[0].text(0.5, 0.5, "no misclassified test images", ha="center")
    save_figure(fig, path)


def vote_accuracy_curve(
    curves: dict[str, dict[str, list[float] | float]],
    single_model: float,
    baseline: tuple[str, float, float] | None,
    path: Path,
    *,
    repeats: int = 1,
) -> None:
    """Left: hard-vote accuracy of k members, mean over random member orders (of every repeat)
    with a 95% band; the single model and the baseline are their means over seeds and repeats.
    Right: the same against training seconds, with the baseline as one point (accuracy for compute).

    ``curves``: group -> {"mean", "low", "high": per-k lists, "seconds_per_member": float};
    ``baseline``: (name, test accuracy, training seconds) or None.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = iter([("tab:blue", "o", "-"), ("tab:orange", "s", "--"), ("tab:green", "^", "-.")])
    for group, curve in curves.items():
        colour, marker, line = next(styles)
        mean = np.asarray(curve["mean"])
        ks = np.arange(1, len(mean) + 1)
        seconds = ks * float(curve["seconds_per_member"])
        for ax, x in ((left, ks), (right, seconds)):
            ax.plot(x, mean, marker=marker, linestyle=line, color=colour, label=f"{group}, hard vote")
            ax.fill_between(x, curve["low"], curve["high"], color=colour, alpha=0.15)
    left.axhline(single_model, color="grey", linestyle=":", label="single model (mean over seeds)")
    if baseline is not None:
        name, acc, seconds = baseline
        left.axhline(acc, color="tab:red", linestyle=(0, (5, 2)), label=f"{name} (mean)")
        right.scatter([seconds], [acc], marker="*", s=180, color="tab:red", label=f"{name} (mean)", zorder=3)
    left.set(
        title="Vote accuracy as members are added\n(mean and 95% band over random member orders"
        + (f" of {repeats} repeats)" if repeats > 1 else ")"),
        xlabel="members in the vote",
        ylabel="test accuracy",
        xticks=np.arange(1, max(len(c["mean"]) for c in curves.values()) + 1),
    )
    right.set(
        title="Accuracy for training compute",
        xlabel="training seconds (summed, log scale)",
        ylabel="test accuracy",
        xscale="log",  # a LeNet member takes seconds, a ResNet minutes: a linear axis piles the votes up
    )
    right.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    for ax in (left, right):
        ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)


def reliability_diagram(
    models: list[tuple[str, np.ndarray]], labels: np.ndarray, path: Path, *, which: str = ""
) -> None:
    """Accuracy against confidence in 15 bins per model; the diagonal is perfect calibration.
    Under it, how many test images fall in each bin (log): a point of a near-empty bin is noise,
    and the ECE weighs each bin by its count."""
    from study.common.stats import expected_calibration_error, reliability_curve

    fig, (ax, counts) = plt.subplots(
        2, 1, figsize=(6, 7.2), sharex=True, gridspec_kw={"height_ratios": (3, 1.2), "hspace": 0.08}
    )
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for (name, proba), marker, colour in zip(models, "os^D", plt.get_cmap("tab10").colors, strict=False):
        curve = reliability_curve(proba, labels)
        ece = expected_calibration_error(proba, labels)
        used = curve[curve["count"] > 0]
        ax.plot(
            used["confidence"], used["accuracy"], marker=marker, color=colour, label=f"{name} (ECE {ece:.3f})"
        )
        edges = np.append(curve["low"].to_numpy(), curve["high"].iloc[-1])
        counts.stairs(curve["count"].to_numpy(), edges, color=colour, linewidth=1.4, label=name)
    ax.set(
        title=f"Reliability diagram (test set, 15 bins{which})",
        ylabel="accuracy",
        xlim=(0, 1.02),
        ylim=(0, 1.02),
    )
    ax.legend(fontsize="small", loc="upper left")
    counts.set_yscale("log")
    counts.set(xlabel="confidence (top-class probability)", ylabel="test images\nper bin (log)")
    counts.set_ylim(bottom=0.8)
    save_figure(fig, path)


def conv1_kernels(weights: np.ndarray, path: Path, *, title: str) -> None:
    """weights: (6, 1, 5, 5)."""
    fig, axes = plt.subplots(1, len(weights), figsize=(1.6 * len(weights), 2.0), squeeze=False)
    limit = float(np.abs(weights).max()) or 1.0
    for i, ax in enumerate(axes[0]):
        image = ax.imshow(weights[i, 0], cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"kernel {i}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes[0].tolist(), label="weight", fraction=0.02)
    fig.suptitle(title + " (red positive, blue negative)")
    save_figure(fig, path)


def tsne_plot(
    features: np.ndarray,
    labels: np.ndarray,
    pred: np.ndarray,
    path: Path,
    *,
    points: int,
    title: str,
    class_names: tuple[str, ...] | None = None,
) -> None:
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(0)
    chosen = rng.choice(len(labels), size=min(points, len(labels)), replace=False)
    perplexity = float(min(30, max(5, len(chosen) // 4)))
    embedded = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0).fit_transform(
        features[chosen]
    )
    fig, ax = plt.subplots(figsize=(7, 6))
    scatter = ax.scatter(
        embedded[:, 0], embedded[:, 1], c=labels[chosen], cmap="tab10", s=6, vmin=-0.5, vmax=9.5
    )
    wrong = pred[chosen] != labels[chosen]
    ax.scatter(
        embedded[wrong, 0],
        embedded[wrong, 1],
        marker="x",
        c="black",
        s=30,
        label=f"misclassified ({int(wrong.sum())})",
    )
    bar = fig.colorbar(scatter, ax=ax, ticks=DIGITS, label="true class" if class_names else "true digit")
    if class_names:
        bar.ax.set_yticklabels([f"{i} {name}" for i, name in enumerate(class_names)])
    ax.set(title=title, xlabel="t-SNE 1", ylabel="t-SNE 2")
    ax.legend(loc="upper right")
    save_figure(fig, path)


def feature_maps(
    images: np.ndarray,
    features: dict[str, np.ndarray],
    labels: np.ndarray,
    path: Path,
    *,
    class_names: tuple[str, ...] | None = None,
) -> None:
    """For each example: the input, its 6 conv1 maps and 16 conv2 maps."""
    n = len(images)
    fig, axes = plt.subplots(n * 3, 16, figsize=(16 * 0.9, n * 3 * 1.0), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for e in range(n):
        top = e * 3
        axes[top, 0].imshow(images[e], cmap="gray_r")
        name = f"{labels[e]} {class_names[labels[e]]}" if class_names else f"digit {labels[e]}"
        axes[top, 0].set_title(name, fontsize=8)
        for i in range(features["conv1"].shape[1]):
            axes[top + 1, i].imshow(features["conv1"][e, i], cmap="viridis")
            axes[top + 1, i].set_title(f"conv1 #{i}", fontsize=6)
        for i in range(features["conv2"].shape[1]):
            axes[top + 2, i].imshow(features["conv2"][e, i], cmap="viridis")
            axes[top + 2, i].set_title(f"conv2 #{i}", fontsize=6)
    fig.suptitle(
        f"Feature maps for the two {'classes' if class_names else 'digits'} the vote gets wrong most often "
        "(rows: input, conv1 28x28 maps, conv2 10x10 maps)"
    )
    save_figure(fig, path)


def neighbour_grid(
    query_images: np.ndarray,
    query_features: np.ndarray,
    train_images: np.ndarray,
    train_features: np.ndarray,
    train_labels: np.ndarray,
    path: Path,
    *,
    k: int,
    query_labels: np.ndarray | None = None,
    class_names: tuple[str, ...] | None = None,
) -> None:
    """Each row: a test image (its true class above it), then its k nearest training images in
    penultimate-feature space, each with its label (class names for Fashion-MNIST)."""
    from sklearn.neighbors import NearestNeighbors

    nearest = NearestNeighbors(n_neighbors=k).fit(train_features).kneighbors(query_features)[1]  # (Q, k)
    width = 1.35 if class_names else 1.2
    fig, axes = plt.subplots(
        len(query_images), k + 1, figsize=((k + 1) * width, len(query_images) * 1.4), squeeze=False
    )
    for q, row in enumerate(axes):
        for ax in row:
            ax.axis("off")
        row[0].imshow(query_images[q], cmap="Reds")
        query = "query" if query_labels is None else f"query: {_name(query_labels[q], class_names)}"
        row[0].set_title(query, fontsize=8)
        for j, idx in enumerate(nearest[q]):
            row[j + 1].imshow(train_images[idx], cmap="gray_r")
            name = _name(train_labels[idx], class_names)
            row[j + 1].set_title(name if class_names else f"label {name}", fontsize=8)
    fig.suptitle(f"{k} nearest training images in the 84-d feature space (query in red)")
    save_figure(fig, path)


def vote_accuracy_figure(
    *, diversity: dict[str, Any], comparison: pd.DataFrame, baseline: str | None, folder: Path
) -> None:
    """vote_accuracy_by_members.png from the tables alone (diversity.json's curves, the comparison
    table's means), so a reanalysis redraws it without the models. ``baseline``: its model name."""
    by_model = comparison.set_index("model")
    repeats = int(next(iter(diversity.values()))["repeats"])
    point = None
    if baseline is not None:
        point = (
            baseline,
            float(by_model.loc[baseline, "test_acc"]),
            float(by_model.loc[baseline, "training_seconds"]),
        )
    curves = {
        name: {
            "mean": entry["vote_accuracy_by_members_mean"],
            "low": entry["vote_accuracy_by_members_low"],
            "high": entry["vote_accuracy_by_members_high"],
            "seconds_per_member": entry["seconds_per_member"],
        }
        for name, entry in diversity.items()
    }
    vote_accuracy_curve(
        curves,
        float(by_model.loc["single model", "test_acc"]),
        point,
        folder / "vote_accuracy_by_members.png",
        repeats=repeats,
    )


TSNE_POINTS = 1500  # t-SNE is O(n^2)-ish on 2 cores; a random subset of the test set suffices
MISCLASSIFIED_SHOWN = 24
NEIGHBOURS = 8
QUERIES = 4


def write_figures(
    repeat: Any,
    data: ImageData,
    folder: Path,
    *,
    group: str,
    label: str,
    member: Any,
    diversity: dict[str, Any],
    comparison: pd.DataFrame,
    predictions: pd.DataFrame,
    per_class: pd.DataFrame,
) -> None:
    """Every figure of one repeat's ``group`` ensemble; ``member`` is its best member by validation."""
    from lenet_core.train import load_trial_model, model_features

    class_names = CLASS_NAMES.get(data.name)  # None for the digits: the label is the name
    repeats = int(next(iter(diversity.values()))["repeats"])

    labels = data.test_labels
    members = repeat.groups[group]
    vote = predictions["hard_vote_pred"].to_numpy()
    probas = np.stack([m.test_proba for m in members])  # (M, N, C)
    panels = [(f"{label}, hard vote", vote)]
    if repeat.baseline is not None:
        panels.append((repeat.baseline.spec.config.model, predictions["resnet_pred"].to_numpy()))
    confusion_matrices(labels, panels, folder / "confusion_matrices.png", class_names=class_names)
    misclassified_grid(
        data.test_images,
        labels,
        vote,
        probas.mean(axis=0)[np.arange(len(vote)), vote],
        folder / "misclassified.png",
        limit=MISCLASSIFIED_SHOWN,
        class_names=class_names,
    )
    baseline = repeat.baseline.spec.config.model if repeat.baseline is not None else None
    vote_accuracy_figure(diversity=diversity, comparison=comparison, baseline=baseline, folder=folder)
    calibrated = [
        ("single model", repeat.groups["seed"][0].test_proba),
        (f"{label}, soft vote", probas.mean(0)),
    ]
    if repeat.baseline is not None:
        calibrated.append((repeat.baseline.spec.config.model, repeat.baseline.test_proba))
    # one model of each kind is drawn: those of the first repeat (the ECE beside each is theirs)
    which = f"; the models of repeat 0 of {repeats}" if repeats > 1 else ""
    reliability_diagram(calibrated, labels, folder / "reliability.png", which=which)

    model = load_trial_model(member.spec.config, member.state_dict).eval()
    conv1_kernels(
        model.conv1.weight.detach().numpy(),
        folder / "conv1_kernels.png",
        title=f"Learned conv1 kernels ({member.spec.name})",
    )
    test_features = model_features(model, data.test_images, data=data)["penultimate"]  # (N, 84)
    tsne_plot(
        test_features,
        labels,
        member.test_proba.argmax(1),
        folder / "tsne_penultimate.png",
        points=TSNE_POINTS,
        title=f"t-SNE of 84-d penultimate features ({member.spec.name}, test set)",
        class_names=class_names,
    )
    hardest = per_class.sort_values("hard_vote_error", ascending=False)["class"].head(2).tolist()
    examples = [int(np.flatnonzero(labels == d)[0]) for d in hardest]
    feature_maps(
        data.test_images[examples],
        model_features(model, data.test_images[examples], data=data, keys=("conv1", "conv2")),
        labels[examples],
        folder / "feature_maps.png",
        class_names=class_names,
    )
    train_features = model_features(model, data.train_images, data=data)["penultimate"]
    queries = np.random.default_rng(0).choice(len(labels), size=QUERIES, replace=False)
    neighbour_grid(
        data.test_images[queries],
        test_features[queries],
        data.train_images,
        train_features,
        data.train_labels,
        folder / "nearest_neighbours.png",
        k=NEIGHBOURS,
        query_labels=labels[queries],
        class_names=class_names,
    )
