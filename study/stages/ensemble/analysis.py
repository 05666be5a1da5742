"""`study ensemble` tables: every model on the one test set, per repeat and over repeats, with
intervals, calibration and paired tests; per-image predictions, per-class errors and diversity.

Rows of the comparison (each per repeat, then mean and 95% interval over repeats):
- single model: one LeNet on the full split, mean over the M seeds of the seed ensemble;
- seed ensemble, hard and soft vote: the same M models voting;
- bagged member: mean of the M bootstrap-trained members; bagged hard and soft vote;
- the ResNet baseline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lenet_core.data import ImageData
from study.common.results import expand_configs
from study.common.selection import SELECTION_METRIC
from study.common.stats import (
    brier,
    describe,
    expected_calibration_error,
    mcnemar_exact,
    nll,
    wilson_interval,
)
from study.stages.ensemble.members import MemberOutput
from study.stages.ensemble.results import GROUP_LABELS, EnsembleResults, class_name
from study.stages.ensemble.voting import (
    accuracy,
    accuracy_as_members_are_added,
    hard_vote,
    mean_pairwise_disagreement,
    oracle_accuracy,
    out_of_bag_vote,
    soft_vote,
    vote_share,
)


@dataclass
class Repeat:
    """One independent ensemble: its seed-ensemble and bagged members, and its baseline."""

    index: int
    groups: dict[str, list[MemberOutput]]  # "seed" / "bagged" -> members
    baseline: MemberOutput | None


def split_repeats(outputs: list[MemberOutput]) -> list[Repeat]:
    repeats: dict[int, Repeat] = {}
    for output in outputs:
        spec = output.spec
        repeat = repeats.setdefault(spec.repeat, Repeat(index=spec.repeat, groups={}, baseline=None))
        if spec.group == "baseline":
            repeat.baseline = output
        else:
            repeat.groups.setdefault(spec.group, []).append(output)
    return [repeats[k] for k in sorted(repeats)]


def _scores(proba: np.ndarray, labels: np.ndarray, *, pred: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy (of ``pred``, default the argmax) and calibration of one (N, C) probability table."""
    return {
        "test_acc": accuracy(proba.argmax(axis=1) if pred is None else pred, labels),
        "nll": nll(proba, labels),
        "brier": brier(proba, labels),
        "ece": expected_calibration_error(proba, labels),
    }


def _mean_scores(members: list[MemberOutput], labels: np.ndarray) -> dict[str, float]:
    scores = pd.DataFrame([_scores(m.test_proba, labels) for m in members])
    return scores.mean().to_dict()


def _seconds(members: list[MemberOutput]) -> float:
    return float(sum(m.summary["training_seconds"] for m in members))


def repeat_rows(repeat: Repeat, labels: np.ndarray) -> list[dict[str, Any]]:
    """One row per compared model of one repeat; votes and members score the same test set."""
    rows = []

    def add(model: str, scores: dict[str, float], *, parameters: int, seconds: float, n_models: int) -> None:
        rows.append(
            {
                "repeat": repeat.index,
                "model": model,
                **scores,
                "models": n_models,
                "parameters": parameters,
                "training_seconds": seconds,
            }
        )

    for group, members in repeat.groups.items():
        probas = np.stack([m.test_proba for m in members])  # (M, N, C)
        per_member = members[0].summary["parameters"]
        label = GROUP_LABELS[group]
        mean_member = "single model" if group == "seed" else "bagged member"
        add(
            mean_member,
            _mean_scores(members, labels),
            parameters=per_member,
            seconds=_seconds(members) / len(members),
            n_models=1,
        )
        total = dict(parameters=per_member * len(members), seconds=_seconds(members), n_models=len(members))
        # a hard vote's only probabilities are its vote shares; its ties break by summed probability
        add(f"{label}, hard vote", _scores(vote_share(probas), labels, pred=hard_vote(probas)[0]), **total)
        add(f"{label}, soft vote", _scores(probas.mean(axis=0), labels), **total)
    if repeat.baseline is not None:
        baseline = repeat.baseline
        add(
            baseline.spec.config.model,
            _scores(baseline.test_proba, labels),
            parameters=baseline.summary["parameters"],
            seconds=baseline.summary["training_seconds"],
            n_models=1,
        )
    return rows


def comparison_table(
    per_repeat: pd.DataFrame, member_accs: dict[str, np.ndarray], n_test: int
) -> pd.DataFrame:
    """Mean and 95% interval of every model over repeats (accuracy intervals clipped to [0, 1]).

    A one-model row (single model, bagged member) has its interval over every seed it was trained
    with (M per repeat), given in ``member_accs``. With one repeat, an ensemble's interval is
    Wilson's on its test accuracy (one test set, n images).
    """
    rows = []
    for model, part in per_repeat.groupby("model", sort=False):
        accs = member_accs.get(model, part["test_acc"].to_numpy())
        stats = describe(accs)
        if stats["n"] == 1:
            correct = round(stats["mean"] * n_test)
            stats["ci95_low"], stats["ci95_high"] = wilson_interval(correct, n_test)
            interval = f"Wilson, {n_test} test images"
        else:
            unit = "seeds" if model in member_accs else "repeats"
            interval = f"t over {stats['n']} {unit}"
            stats["ci95_low"], stats["ci95_high"] = max(stats["ci95_low"], 0.0), min(stats["ci95_high"], 1.0)
        rows.append(
            {
                "model": model,
                "n": stats["n"],
                "test_acc": stats["mean"],
                "test_error": 1 - stats["mean"],
                "ci95_low": stats["ci95_low"],
                "ci95_high": stats["ci95_high"],
                "interval": interval,
                "nll": part["nll"].mean(),
                "brier": part["brier"].mean(),
                "ece": part["ece"].mean(),
                "models": int(part["models"].iloc[0]),
                "parameters": int(part["parameters"].iloc[0]),
                "training_seconds": part["training_seconds"].mean(),
            }
        )
    return pd.DataFrame(rows)


def best_member(members: list[MemberOutput]) -> MemberOutput:
    """The member with the highest validation accuracy: every member shares one validation set."""
    return max(members, key=lambda m: m.summary[SELECTION_METRIC])


def mcnemar_rows(repeat: Repeat, labels: np.ndarray) -> list[dict[str, Any]]:
    """Exact McNemar tests on the one test set, per repeat: each vote against its best member,
    bagging against seeds, and each vote against the ResNet."""
    votes = {
        GROUP_LABELS[g]: hard_vote(np.stack([m.test_proba for m in ms]))[0] == labels
        for g, ms in repeat.groups.items()
    }
    pairs = []
    for group, members in repeat.groups.items():
        best = best_member(members)
        pairs.append(
            (f"{GROUP_LABELS[group]}, hard vote", best.spec.name, best.test_proba.argmax(1) == labels)
        )
    if len(votes) == 2:
        pairs.append(("bagged, hard vote", "seed ensemble, hard vote", votes["seed ensemble"]))
    if repeat.baseline is not None:
        resnet_correct = repeat.baseline.test_proba.argmax(1) == labels
        pairs += [
            (f"{label}, hard vote", repeat.baseline.spec.config.model, resnet_correct) for label in votes
        ]
    rows = []
    for a, b, b_correct in pairs:
        a_correct = votes[a.rsplit(",", 1)[0]]
        rows.append(
            {
                "repeat": repeat.index,
                "a": a,
                "b": b,
                "a_acc": float(a_correct.mean()),
                "b_acc": float(b_correct.mean()),
                "only_a_right": int((a_correct & ~b_correct).sum()),
                "only_b_right": int((~a_correct & b_correct).sum()),
                "mcnemar_p": mcnemar_exact(a_correct, b_correct),
            }
        )
    return rows


def diversity(repeats: list[Repeat], data: ImageData) -> dict[str, Any]:
    """Disagreement, oracle accuracy and out-of-bag estimate (means over repeats), and the
    vote-vs-members curves over random member orders of every repeat (mean and 95% band)."""
    labels = data.test_labels
    result: dict[str, Any] = {}
    for group in repeats[0].groups:
        entries, curves = [], []
        for repeat in repeats:
            members = repeat.groups[group]
            probas = np.stack([m.test_proba for m in members])  # (M, N, C)
            preds = probas.argmax(axis=2)
            curves.append(accuracy_as_members_are_added(probas, labels))  # (orders, M)
            entry = {
                "mean_pairwise_disagreement": mean_pairwise_disagreement(preds),
                "oracle_accuracy": oracle_accuracy(preds, labels),
                "seconds_per_member": _seconds(members) / len(members),
            }
            if group == "bagged":
                oob_acc, covered = out_of_bag_vote(
                    [(m.oob_idx, m.oob_proba) for m in members], data.train_labels, data.num_classes
                )
                entry["ensemble_oob_acc"], entry["ensemble_oob_images"] = oob_acc, covered
            entries.append(entry)
        pooled = np.concatenate(curves)  # (repeats * orders, M)
        result[GROUP_LABELS[group]] = {
            "members": len(repeats[0].groups[group]),
            "repeats": len(repeats),
            **pd.DataFrame(entries).mean().to_dict(),
            "best_member": best_member(repeats[0].groups[group]).spec.name,  # of the first repeat
            "vote_accuracy_by_members_mean": pooled.mean(axis=0).tolist(),
            "vote_accuracy_by_members_low": np.percentile(pooled, 2.5, axis=0).tolist(),
            "vote_accuracy_by_members_high": np.percentile(pooled, 97.5, axis=0).tolist(),
        }
    return result


def main_group(repeat: Repeat) -> str:
    """The ensemble the error analysis looks at: the bagged one when there is one."""
    return "bagged" if "bagged" in repeat.groups else "seed"


def predictions_table(repeat: Repeat, labels: np.ndarray) -> pd.DataFrame:
    """One row per test image (first repeat): every member's prediction and the votes."""
    table = pd.DataFrame({"index": np.arange(len(labels)), "label": labels})
    for members in repeat.groups.values():
        for member in members:
            table[f"{member.spec.name}_pred"] = member.test_proba.argmax(1)
    group = main_group(repeat)
    members = repeat.groups[group]
    probas = np.stack([m.test_proba for m in members])
    vote, votes, margin = hard_vote(probas)
    soft, soft_conf = soft_vote(probas)
    best = best_member(members).test_proba.argmax(1)
    table["votes"] = votes
    table["vote_margin"] = margin
    table["hard_vote_pred"] = vote
    table["soft_vote_pred"] = soft
    table["soft_vote_confidence"] = soft_conf
    if repeat.baseline is not None:
        table["resnet_pred"] = repeat.baseline.test_proba.argmax(1)
        table["resnet_confidence"] = repeat.baseline.test_proba.max(1)
    table["wrong_for_every_member"] = (probas.argmax(2) != labels[None, :]).all(axis=0)
    # the vote is right where the best single member (by validation accuracy) is wrong
    table["fixed_by_vote"] = (vote == labels) & (best != labels)
    return table


def per_class_table(
    predictions: pd.DataFrame, repeat: Repeat, num_classes: int, *, dataset: str = ""
) -> pd.DataFrame:
    """Test error of the best member, the vote and the ResNet on each class (first repeat); the
    class by its label and its name (Fashion-MNIST's, or the digit for MNIST and the digits)."""
    labels = predictions["label"].to_numpy()
    best = best_member(repeat.groups[main_group(repeat)])
    named = {
        "best_member": best.test_proba.argmax(1),
        "hard_vote": predictions["hard_vote_pred"].to_numpy(),
    }
    if "resnet_pred" in predictions:
        named["resnet"] = predictions["resnet_pred"].to_numpy()
    classes = np.arange(num_classes)
    table = pd.DataFrame({"class": classes, "class_name": [class_name(dataset, int(c)) for c in classes]})
    for key, pred in named.items():
        table[f"{key}_error"] = [
            float((pred[labels == c] != c).mean()) if (labels == c).any() else np.nan
            for c in range(num_classes)
        ]
    table["test_images"] = np.bincount(labels, minlength=num_classes)
    return table


def members_table(outputs: list[MemberOutput]) -> pd.DataFrame:
    """One row per trained model: which ensemble it belongs to, its seeds, where it ran, how it did."""
    return pd.DataFrame(
        [
            {
                "name": m.spec.name,
                "group": m.spec.group,
                "repeat": m.spec.repeat,
                "model": m.spec.config.model,
                "seed": m.spec.config.seed,
                "bootstrap_seed": m.spec.bootstrap_seed,
                "status": m.summary.get("status"),
                SELECTION_METRIC: m.summary.get(SELECTION_METRIC),
                "test_acc": m.summary.get("test_acc"),
                "training_seconds": m.summary.get("training_seconds"),
                "epochs_run": m.summary.get("epochs_run"),
                "best_epoch": m.summary.get("best_epoch"),
                "max_epochs": m.spec.config.epochs,
                "node_ip": m.summary.get("node_ip", ""),
                "node_id": m.summary.get("node_id", ""),
                # models trained together in its task (1: alone); its seconds are its share of them
                "pack_size": m.summary.get("pack_size", 1),
                # the whole TrialConfig as it ran: replay one member with `study train --config`
                "config": json.dumps(m.spec.config.to_dict(), sort_keys=True),
            }
            for m in outputs
        ]
    )


def analyze(outputs: list[MemberOutput], data: ImageData, *, run: dict[str, Any]) -> EnsembleResults:
    """Every ensemble table from the trained models: the comparison with intervals, McNemar
    tests, members, predictions, per-class errors and the diversity summary."""
    labels = data.test_labels
    repeats = split_repeats(outputs)
    per_repeat = pd.DataFrame([row for r in repeats for row in repeat_rows(r, labels)])
    member_accs = {
        name: np.array([accuracy(m.test_proba.argmax(1), labels) for r in repeats for m in r.groups[group]])
        for name, group in (("single model", "seed"), ("bagged member", "bagged"))
        if group in repeats[0].groups
    }
    first = repeats[0]
    predictions = predictions_table(first, labels)
    return EnsembleResults(
        members=expand_configs(members_table(outputs)),
        comparison=comparison_table(per_repeat, member_accs, len(labels)),
        comparison_by_repeat=per_repeat,
        mcnemar=pd.DataFrame([row for r in repeats for row in mcnemar_rows(r, labels)]),
        predictions=predictions,
        per_class=per_class_table(predictions, first, data.num_classes, dataset=data.name),
        diversity={
            "repeats": len(repeats),
            "members": len(next(iter(first.groups.values()))),
            "main_group": GROUP_LABELS[main_group(first)],
            "diversity": diversity(repeats, data),
            "baseline": first.baseline.spec.config.model if first.baseline else None,
        },
        run=run,
    )


def write_figures(
    outputs: list[MemberOutput], results: EnsembleResults, data: ImageData, folder: Path
) -> None:
    """The figures that need the models themselves (weights, probabilities), of the first repeat."""
    from study.stages.ensemble import figures

    first = split_repeats(outputs)[0]
    group = main_group(first)
    figures.write_figures(
        first,
        data,
        folder,
        group=group,
        label=GROUP_LABELS[group],
        member=best_member(first.groups[group]),
        diversity=results.diversity["diversity"],
        comparison=results.comparison,
        predictions=results.predictions,
        per_class=results.per_class,
    )
