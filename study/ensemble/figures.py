"""Error-analysis figures of `study ensemble`. Each has a title, axis labels and a legend or caption."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import confusion_matrix

from study.common.files import save_figure

DIGITS = list(range(10))


def confusion_matrices(
    labels: np.ndarray, vote: np.ndarray, resnet: np.ndarray | None, path: Path, *, resnet_name: str | None
) -> None:
    panels = [("hard vote", vote)] + ([(resnet_name or "resnet", resnet)] if resnet is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    for ax, (name, pred) in zip(axes[0], panels, strict=True):
        matrix = confusion_matrix(labels, pred, labels=DIGITS)
        image = ax.imshow(np.log1p(matrix), cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(
                    j,
                    i,
                    str(count),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if i == j else "black",
                )
        ax.set(
            title=f"Confusion matrix: {name}",
            xlabel="predicted digit",
            ylabel="true digit",
            xticks=DIGITS,
            yticks=DIGITS,
        )
        fig.colorbar(image, ax=ax, label="log(1 + count)", fraction=0.046)
    save_figure(fig, path)


def misclassified_grid(
    images: np.ndarray,
    labels: np.ndarray,
    pred: np.ndarray,
    confidence: np.ndarray,
    path: Path,
    *,
    limit: int,
) -> None:
    """The vote's most confident mistakes: true label, prediction and confidence under each."""
    wrong = np.flatnonzero(pred != labels)
    wrong = wrong[np.argsort(-confidence[wrong])][:limit]
    cols = 8
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.55), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong, strict=False):
        ax.imshow(images[i], cmap="gray_r")
        ax.set_title(f"true {labels[i]} → {pred[i]}\n{confidence[i]:.0%}", fontsize=8)
    fig.suptitle(
        f"Most confident mistakes of the vote ({len(np.flatnonzero(pred != labels))} "
        f"errors in all); caption: true → predicted, mean member probability"
    )
    if not len(wrong):
        axes.flat[0].text(0.5, 0.5, "no misclassified test images", ha="center")
    save_figure(fig, path)


def vote_accuracy_curve(
    accuracies: list[float], mean_member: float, resnet: float | None, path: Path
) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ks = np.arange(1, len(accuracies) + 1)
    ax.plot(ks, accuracies, marker="o", label="hard vote of the first k members")
    ax.axhline(mean_member, color="grey", linestyle="--", label="mean single member")
    if resnet is not None:
        ax.axhline(resnet, color="tab:red", linestyle=":", label="ResNet baseline")
    ax.set(
        title="Vote accuracy as members are added",
        xlabel="members in the vote",
        ylabel="test accuracy",
        xticks=ks,
    )
    ax.legend()
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
    features: np.ndarray, labels: np.ndarray, pred: np.ndarray, path: Path, *, points: int, title: str
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
    fig.colorbar(scatter, ax=ax, ticks=DIGITS, label="true digit")
    ax.set(title=title, xlabel="t-SNE 1", ylabel="t-SNE 2")
    ax.legend(loc="upper right")
    save_figure(fig, path)


def feature_maps(images: np.ndarray, features: dict[str, np.ndarray], labels: np.ndarray, path: Path) -> None:
    """For each example: the input, its 6 conv1 maps and 16 conv2 maps."""
    n = len(images)
    fig, axes = plt.subplots(n * 3, 16, figsize=(16 * 0.9, n * 3 * 1.0), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for e in range(n):
        top = e * 3
        axes[top, 0].imshow(images[e], cmap="gray_r")
        axes[top, 0].set_title(f"digit {labels[e]}", fontsize=8)
        for i in range(features["conv1"].shape[1]):
            axes[top + 1, i].imshow(features["conv1"][e, i], cmap="viridis")
            axes[top + 1, i].set_title(f"conv1 #{i}", fontsize=6)
        for i in range(features["conv2"].shape[1]):
            axes[top + 2, i].imshow(features["conv2"][e, i], cmap="viridis")
            axes[top + 2, i].set_title(f"conv2 #{i}", fontsize=6)
    fig.suptitle(
        "Feature maps for the two digits the vote gets wrong most often "
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
) -> None:
    """Each row: a test image, then its k nearest training images in penultimate-feature space."""
    # squared distances (Q, N) without forming differences of all pairs
    d2 = (
        (query_features**2).sum(1)[:, None]
        - 2 * query_features @ train_features.T
        + (train_features**2).sum(1)[None, :]
    )
    nearest = np.argsort(d2, axis=1)[:, :k]
    fig, axes = plt.subplots(
        len(query_images), k + 1, figsize=((k + 1) * 1.2, len(query_images) * 1.4), squeeze=False
    )
    for q, row in enumerate(axes):
        for ax in row:
            ax.axis("off")
        row[0].imshow(query_images[q], cmap="Reds")
        row[0].set_title("query", fontsize=8)
        for j, idx in enumerate(nearest[q]):
            row[j + 1].imshow(train_images[idx], cmap="gray_r")
            row[j + 1].set_title(f"label {train_labels[idx]}", fontsize=8)
    fig.suptitle(f"{k} nearest training images in the 84-d feature space (query in red)")
    save_figure(fig, path)
