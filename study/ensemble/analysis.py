"""Comparison tables, per-image predictions and error-analysis figures for `study ensemble`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lenet_core.data import ImageData, as_tensor, normalize_, to_unit_float
from lenet_core.train import load_trial_model
from study.common.files import write_json, write_table
from study.ensemble.run import MemberOutput
from study.ensemble.voting import (
    accuracy,
    accuracy_as_members_are_added,
    bootstrap_ci,
    hard_vote,
    mcnemar_exact,
    mean_pairwise_disagreement,
    oracle_accuracy,
    out_of_bag_vote,
    soft_vote,
)

TSNE_POINTS = 1500  # t-SNE is O(n^2)-ish on 2 cores; a stratified-enough random subset suffices
MISCLASSIFIED_SHOWN = 24
NEIGHBOURS = 8
QUERIES = 4


def _row(
    name: str,
    kind: str,
    pred: np.ndarray,
    labels: np.ndarray,
    *,
    parameters: int,
    seconds: float,
    seed: int,
    vote_correct: np.ndarray | None,
) -> dict[str, Any]:
    correct = pred == labels
    low, high = bootstrap_ci(correct, seed=seed)
    return {
        "model": name,
        "kind": kind,
        "test_acc": accuracy(pred, labels),
        "test_error": 1 - accuracy(pred, labels),
        "ci95_low": low,
        "ci95_high": high,
        "parameters": parameters,
        "training_seconds": seconds,
        "mcnemar_p_vs_hard_vote": (
            mcnemar_exact(vote_correct, correct) if vote_correct is not None else np.nan
        ),
    }


def analyze(
    members: list[MemberOutput], resnet: MemberOutput | None, data: ImageData, folder: Path, *, seed: int
) -> dict[str, Any]:
    """Write comparison, diversity, predictions and per-class tables and every figure."""
    labels = data.test_labels
    probas = np.stack([m.test_proba for m in members])  # (M, N, 10)
    preds = probas.argmax(axis=2)  # (M, N)
    vote, votes, margin = hard_vote(probas)
    soft, soft_conf = soft_vote(probas)
    vote_correct = vote == labels
    # "best single member" by validation accuracy: the test set never picks a model
    best = int(np.argmax([m.summary["val_acc"] for m in members]))

    rows = []
    for i, member in enumerate(members):
        row = _row(
            member.spec.name,
            "member",
            preds[i],
            labels,
            parameters=member.summary["parameters"],
            seconds=member.summary["training_seconds"],
            seed=seed,
            vote_correct=vote_correct,
        )
        row["oob_acc"] = accuracy(member.oob_proba.argmax(1), data.train_labels[member.oob_idx])
        rows.append(row)
    total_params = sum(m.summary["parameters"] for m in members)
    total_seconds = sum(m.summary["training_seconds"] for m in members)
    oob_acc, oob_covered = out_of_bag_vote(
        [(m.oob_idx, m.oob_proba) for m in members], data.train_labels, data.num_classes
    )
    rows.append(
        {
            **_row(
                "hard vote",
                "ensemble",
                vote,
                labels,
                parameters=total_params,
                seconds=total_seconds,
                seed=seed,
                vote_correct=None,
            ),
            "oob_acc": oob_acc,
        }
    )
    rows.append(
        {
            **_row(
                "soft vote",
                "ensemble",
                soft,
                labels,
                parameters=total_params,
                seconds=total_seconds,
                seed=seed,
                vote_correct=vote_correct,
            ),
            "oob_acc": np.nan,
        }
    )
    resnet_pred = resnet_conf = None
    if resnet is not None:
        resnet_pred = resnet.test_proba.argmax(1)
        resnet_conf = resnet.test_proba.max(1)
        rows.append(
            {
                **_row(
                    resnet.spec.name,
                    "baseline",
                    resnet_pred,
                    labels,
                    parameters=resnet.summary["parameters"],
                    seconds=resnet.summary["training_seconds"],
                    seed=seed,
                    vote_correct=vote_correct,
                ),
                "oob_acc": np.nan,
            }
        )
    comparison = pd.DataFrame(rows)
    write_table(comparison, folder / "comparison", markdown=True)

    member_accs = comparison.loc[comparison["kind"] == "member", "test_acc"]
    diversity = {
        "members": len(members),
        "mean_pairwise_disagreement": mean_pairwise_disagreement(preds),
        "oracle_accuracy": oracle_accuracy(preds, labels),
        "mean_member_test_acc": float(member_accs.mean()),
        "best_member": members[best].spec.name,
        "best_member_test_acc": float(member_accs.iloc[best]),
        "hard_vote_test_acc": accuracy(vote, labels),
        "soft_vote_test_acc": accuracy(soft, labels),
        "ensemble_oob_acc": oob_acc,
        "ensemble_oob_images": oob_covered,
        "mcnemar_p_hard_vote_vs_best_member": mcnemar_exact(vote_correct, preds[best] == labels),
        "mcnemar_p_hard_vote_vs_resnet": (
            mcnemar_exact(vote_correct, resnet_pred == labels) if resnet_pred is not None else None
        ),
        "resnet_test_acc": accuracy(resnet_pred, labels) if resnet_pred is not None else None,
        "vote_accuracy_by_members": accuracy_as_members_are_added(probas, labels),
    }
    write_json(folder / "diversity.json", diversity)

    predictions = pd.DataFrame({"index": np.arange(len(labels)), "label": labels})
    for i, member in enumerate(members):
        predictions[f"{member.spec.name}_pred"] = preds[i]
    predictions["votes"] = votes
    predictions["vote_margin"] = margin
    predictions["hard_vote_pred"] = vote
    predictions["soft_vote_pred"] = soft
    predictions["soft_vote_confidence"] = soft_conf
    if resnet_pred is not None:
        predictions["resnet_pred"] = resnet_pred
        predictions["resnet_confidence"] = resnet_conf
    predictions["wrong_for_every_member"] = (preds != labels[None, :]).all(axis=0)
    # the vote is right where the best single member (by validation accuracy) is wrong
    predictions["fixed_by_vote"] = vote_correct & (preds[best] != labels)
    write_table(predictions, folder / "predictions", csv=False)

    per_class = pd.DataFrame({"digit": np.arange(data.num_classes)})
    named = {"best_member": preds[best], "hard_vote": vote}
    if resnet_pred is not None:
        named["resnet"] = resnet_pred
    for key, pred in named.items():
        per_class[f"{key}_error"] = [
            float((pred[labels == c] != c).mean()) if (labels == c).any() else np.nan
            for c in range(data.num_classes)
        ]
    per_class["test_images"] = np.bincount(labels, minlength=data.num_classes)
    write_table(per_class, folder / "per_class")

    write_figures(
        members,
        best,
        resnet,
        data,
        folder,
        vote=vote,
        vote_conf=probas.mean(axis=0)[np.arange(len(vote)), vote],
        resnet_pred=resnet_pred,
        per_class=per_class,
        diversity=diversity,
    )
    return diversity


# ------------------------------------------------------------------ figures


def write_figures(
    members: list[MemberOutput],
    best: int,
    resnet: MemberOutput | None,
    data: ImageData,
    folder: Path,
    *,
    vote: np.ndarray,
    vote_conf: np.ndarray,  # mean member probability of the class the hard vote chose
    resnet_pred: np.ndarray | None,
    per_class: pd.DataFrame,
    diversity: dict[str, Any],
) -> None:
    from study.ensemble import figures as figs

    labels = data.test_labels
    figs.confusion_matrices(
        labels,
        vote,
        resnet_pred,
        folder / "confusion_matrices.png",
        resnet_name=resnet.spec.name if resnet else None,
    )
    figs.misclassified_grid(
        data.test_images,
        labels,
        vote,
        vote_conf,
        folder / "misclassified.png",
        limit=MISCLASSIFIED_SHOWN,
    )
    figs.vote_accuracy_curve(
        diversity["vote_accuracy_by_members"],
        diversity["mean_member_test_acc"],
        diversity.get("resnet_test_acc"),
        folder / "vote_accuracy_by_members.png",
    )
    member = members[best]
    model = load_trial_model(member.spec.config, member.state_dict).eval()
    figs.conv1_kernels(
        model.conv1.weight.detach().numpy(),
        folder / "conv1_kernels.png",
        title=f"Learned conv1 kernels ({member.spec.name})",
    )
    test_features = lenet_features(model, data.test_images, data, maps=False)
    figs.tsne_plot(
        test_features["penultimate"],
        labels,
        member.test_proba.argmax(1),
        folder / "tsne_penultimate.png",
        points=TSNE_POINTS,
        title=f"t-SNE of 84-d penultimate features ({member.spec.name}, test set)",
    )
    hardest = per_class.sort_values("hard_vote_error", ascending=False)["digit"].head(2).tolist()
    examples = [int(np.flatnonzero(labels == d)[0]) for d in hardest]
    figs.feature_maps(
        data.test_images[examples],
        lenet_features(model, data.test_images[examples], data),
        labels[examples],
        folder / "feature_maps.png",
    )
    train_features = lenet_features(model, data.train_images, data, maps=False)["penultimate"]
    rng = np.random.default_rng(0)
    queries = rng.choice(len(labels), size=QUERIES, replace=False)
    figs.neighbour_grid(
        data.test_images[queries],
        test_features["penultimate"][queries],
        data.train_images,
        train_features,
        data.train_labels,
        folder / "nearest_neighbours.png",
        k=NEIGHBOURS,
    )


@torch.inference_mode()
def lenet_features(
    model: Any, images: np.ndarray, data: ImageData, *, maps: bool = True, batch_size: int = 2048
) -> dict[str, np.ndarray]:
    """penultimate (N, 84) activations and, with ``maps``, conv1 (N,6,28,28) and conv2
    (N,16,10,10) feature maps, as numpy. Keep ``maps`` for a few images: they are large."""
    keys = ("conv1", "conv2", "penultimate") if maps else ("penultimate",)
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    tensor = as_tensor(images)
    for start in range(0, len(tensor), batch_size):
        x = normalize_(to_unit_float(tensor[start : start + batch_size]), mean=data.mean, std=data.std)
        features = model.features(x)
        for key in keys:
            chunks[key].append(features[key].numpy())
    return {k: np.concatenate(v) for k, v in chunks.items()}
