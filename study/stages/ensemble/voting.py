"""Votes and diversity for ensembles (intervals and tests: ``study.common.stats``). Pure numpy.

Shapes: M members, N images, C classes. ``probas`` is (M, N, C); ``preds`` is (M, N) int.
"""

from __future__ import annotations

import numpy as np

ORDERS = 50  # random member orders the accuracy-vs-members curve is averaged over


def hard_vote(probas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Majority vote of the members' argmax; ties go to the tied class with most summed probability.

    Returns (winner (N,), votes for the winner (N,), margin = winner votes - runner-up votes (N,)).
    """
    n_members, _, n_classes = probas.shape
    preds = probas.argmax(axis=2)  # (M, N)
    votes = np.stack([(preds == c).sum(axis=0) for c in range(n_classes)], axis=1)  # (N, C)
    summed = probas.sum(axis=0)  # (N, C), each row sums to M, so < M + 1
    # votes dominate; summed probability (scaled below one vote) only orders tied classes
    score = votes + summed / (n_members + 1)
    winner = score.argmax(axis=1)
    ordered = np.sort(votes, axis=1)
    return winner, votes[np.arange(len(winner)), winner], ordered[:, -1] - ordered[:, -2]


def vote_share(probas: np.ndarray) -> np.ndarray:
    """(N, C) fraction of members voting for each class: the only probability a hard vote has."""
    n_classes = probas.shape[2]
    preds = probas.argmax(axis=2)  # (M, N)
    return np.stack([(preds == c).mean(axis=0) for c in range(n_classes)], axis=1)


def soft_vote(probas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Argmax of the mean probability: (prediction (N,), its mean probability (N,))."""
    mean = probas.mean(axis=0)
    winner = mean.argmax(axis=1)
    return winner, mean[np.arange(len(winner)), winner]


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float((pred == labels).mean()) if len(labels) else float("nan")


def mean_pairwise_disagreement(preds: np.ndarray) -> float:
    """Average over member pairs of the fraction of images on which the two disagree."""
    m = len(preds)
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    if not pairs:
        return 0.0
    return float(np.mean([(preds[i] != preds[j]).mean() for i, j in pairs]))


def oracle_accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images at least one member gets right."""
    return float((preds == labels[None, :]).any(axis=0).mean())


def accuracy_as_members_are_added(
    probas: np.ndarray, labels: np.ndarray, *, orders: int = ORDERS, seed: int = 0
) -> np.ndarray:
    """Hard-vote accuracy of the first k members, k = 1..M, over random member orders.

    Returns (orders, M): one row per seeded random permutation of the members, so a curve is
    not the accident of one order; average the rows and take percentiles for a band.
    """
    rng = np.random.default_rng(seed)
    n_members = len(probas)
    curves = np.empty((orders, n_members))
    for row in range(orders):
        order = rng.permutation(n_members)
        curves[row] = [accuracy(hard_vote(probas[order[:k]])[0], labels) for k in range(1, n_members + 1)]
    return curves


def out_of_bag_vote(
    oob_probas: list[tuple[np.ndarray, np.ndarray]], labels: np.ndarray, n_classes: int
) -> tuple[float, int]:
    """Ensemble OOB estimate: each training image voted on only by members that did not see it.

    ``oob_probas`` holds, per member, (indices into the train split, probabilities (k, C)).
    Returns (accuracy over images out of bag for at least one member, how many such images).
    """
    votes = np.zeros((len(labels), n_classes))
    summed = np.zeros((len(labels), n_classes))
    for idx, proba in oob_probas:
        votes[idx, proba.argmax(axis=1)] += 1
        summed[idx] += proba
    covered = votes.sum(axis=1) > 0
    winner = (votes + summed / (len(oob_probas) + 1)).argmax(axis=1)
    return accuracy(winner[covered], labels[covered]), int(covered.sum())
