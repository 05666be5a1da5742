import numpy as np
import pytest

from study.common.stats import mcnemar_exact
from study.stages.ensemble.voting import (
    accuracy_as_members_are_added,
    hard_vote,
    mean_pairwise_disagreement,
    oracle_accuracy,
    out_of_bag_vote,
    soft_vote,
    vote_share,
)


def one_hot_probas(preds, confidence=0.9, classes=3):
    """(M, N) predictions -> (M, N, C) probabilities with ``confidence`` on the prediction."""
    preds = np.asarray(preds)
    probas = np.full((*preds.shape, classes), (1 - confidence) / (classes - 1))
    np.put_along_axis(probas, preds[..., None], confidence, axis=2)
    return probas


def test_majority_wins():
    winner, votes, margin = hard_vote(one_hot_probas([[0, 1], [0, 1], [2, 1]]))
    assert winner.tolist() == [0, 1]
    assert votes.tolist() == [2, 3]
    assert margin.tolist() == [1, 3]


def test_tie_is_broken_by_summed_probability():
    # Two members say 0, two say 1: member 3 is very sure of 1, so 1 has more summed probability.
    probas = np.array([[[0.6, 0.4, 0.0]], [[0.6, 0.4, 0.0]], [[0.45, 0.55, 0.0]], [[0.0, 1.0, 0.0]]])
    winner, votes, margin = hard_vote(probas)
    assert winner.tolist() == [1] and votes.tolist() == [2] and margin.tolist() == [0]
    # the same tie the other way round
    winner, _, _ = hard_vote(probas[:, :, [1, 0, 2]])
    assert winner.tolist() == [0]


def test_summed_probability_never_overrides_more_votes():
    # One very sure member for class 2 against two lukewarm ones for class 0.
    probas = np.array([[[0.34, 0.33, 0.33]], [[0.34, 0.33, 0.33]], [[0.0, 0.0, 1.0]]])
    assert hard_vote(probas)[0].tolist() == [0]
    assert soft_vote(probas)[0].tolist() == [2]  # the soft vote does follow probability


def test_mcnemar_exact_matches_the_binomial_by_hand():
    # 10 images only A gets right, 2 only B: p = 2 * P(X <= 2 | n=12, 1/2) = 2 * 79 / 4096
    a = np.array([True] * 10 + [False] * 2 + [True] * 50)
    b = np.array([False] * 10 + [True] * 2 + [True] * 50)
    assert mcnemar_exact(a, b) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar_exact(a, a) == 1.0
    assert mcnemar_exact(a, b) == mcnemar_exact(b, a)


def test_diversity_measures_on_a_hand_made_case():
    labels = np.array([0, 1, 2, 0])
    preds = np.array([[0, 1, 2, 1], [0, 2, 2, 1], [1, 1, 0, 1]])
    # pairs: (0,1) differ on 1 of 4, (0,2) on 2 of 4, (1,2) on 3 of 4
    assert mean_pairwise_disagreement(preds) == pytest.approx((0.25 + 0.5 + 0.75) / 3)
    assert oracle_accuracy(preds, labels) == 0.75  # nobody gets image 3 right


def test_accuracy_as_members_are_added_over_random_orders():
    labels = np.array([0, 1, 2])
    probas = one_hot_probas([[0, 1, 0], [0, 0, 2], [0, 1, 2]])
    curves = accuracy_as_members_are_added(probas, labels, orders=30, seed=0)
    assert curves.shape == (30, 3)
    # one member alone: each member's own accuracy (2/3, 2/3, 1) depending on which comes first
    assert set(np.round(curves[:, 0], 6)) <= {round(2 / 3, 6), 1.0}
    assert len(set(curves[:, 0])) == 2  # the orders really differ
    # all three members: the same vote whatever the order
    assert np.all(curves[:, 2] == 1.0)
    assert np.array_equal(curves, accuracy_as_members_are_added(probas, labels, orders=30, seed=0))


def test_out_of_bag_vote_counts_only_members_that_did_not_see_an_image():
    labels = np.array([0, 1, 2, 1])
    member_a = (np.array([0, 1]), one_hot_probas([[0, 1]])[0])  # right on both
    member_b = (np.array([1, 2]), one_hot_probas([[1, 0]])[0])  # right on 1, wrong on 2
    acc, covered = out_of_bag_vote([member_a, member_b], labels, 3)
    assert covered == 3  # image 3 was in every bag
    assert acc == pytest.approx(2 / 3)


def test_vote_share_is_the_fraction_of_members_per_class():
    probas = one_hot_probas([[0, 1], [0, 2], [1, 2], [0, 2]])
    share = vote_share(probas)
    assert share.tolist() == [[0.75, 0.25, 0.0], [0.0, 0.25, 0.75]]
