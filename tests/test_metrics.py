"""Metrics checked against their definitions and brute-force counting."""

import itertools
import math

import pytest

from distil_core.training.metrics import (
    BootstrapEstimate,
    avg_at_n,
    bootstrap_best_at_n,
    bootstrap_maj_at_n,
    maj_at_n,
    observed_pass_at_n,
    pass_at_k,
    pass_at_k_mean,
    reported_metrics,
    summarize,
)


def brute_force_pass_at_k(n, c, k):
    """Share of the k-subsets of n samples (the first c correct) that hold a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_brute_force_for_small_n():
    for n in range(1, 11):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)
                assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k),
                                                           abs=1e-12)


def test_pass_at_k_edges():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 6, 5) == 1.0  # n - c < k: every 5-subset holds a correct sample
    assert pass_at_k(10, 1, 1) == pytest.approx(0.1)
    for bad in ((4, 1, 5), (4, 5, 2), (-1, 0, 1), (4, -1, 1), (4, 1, 0)):
        with pytest.raises(ValueError):
            pass_at_k(*bad)


CORRECT = [
    [True, False, False, False],
    [False, False, False, False],
    [True, True, False, True],
]


def test_mean_metrics():
    assert avg_at_n(CORRECT) == pytest.approx((0.25 + 0.0 + 0.75) / 3)
    assert avg_at_n([[1.0, 0.5], [0.0, 0.0]]) == pytest.approx(0.375)  # scores average as they are
    assert observed_pass_at_n(CORRECT) == pytest.approx(2 / 3)
    pass2 = (1 - math.comb(3, 2) / math.comb(4, 2) + 0.0 + 1.0) / 3
    assert pass_at_k_mean(CORRECT, 2) == pytest.approx(pass2)
    assert pass_at_k_mean(CORRECT, 1) == pytest.approx(avg_at_n(CORRECT))
    with pytest.raises(ValueError):
        avg_at_n([])


def test_majority_vote_ties_and_missing_answers():
    answers = [
        ["4", "5", "5", "4"],       # tie between 4 and 5: 4 appeared first
        [None, None, "7", None],    # None never wins while any answer exists
        [None, None],               # no answer at all: wrong
        ["a", "b", "b"],            # clear majority
    ]
    references = ["4", "7", None, "a"]
    assert maj_at_n(answers, references) == pytest.approx(2 / 4)
    # the same through a checking function; it is never asked about a missing answer
    asked = []

    def is_correct(i, answer):
        asked.append((i, answer))
        return answer == ["5", "7", "x", "b"][i]

    assert maj_at_n(answers, is_correct) == pytest.approx(2 / 4)
    assert all(answer is not None for _, answer in asked)
    with pytest.raises(ValueError):
        maj_at_n(answers, ["4"])


def test_bootstrap_best_at_n():
    assert bootstrap_best_at_n([[True] * 4] * 3, 2, num_bootstrap=50) == BootstrapEstimate(1.0, 0.0)
    assert bootstrap_best_at_n([[False] * 4] * 3, 8, num_bootstrap=50) == BootstrapEstimate(0.0, 0.0)
    # one problem, 1 correct of 4, N = 2 draws with replacement: 1 - (3/4)^2 = 0.4375
    estimate = bootstrap_best_at_n([[True, False, False, False]], 2, num_bootstrap=4000, seed=3)
    assert estimate.mean == pytest.approx(0.4375, abs=0.03)
    assert estimate.std == pytest.approx(math.sqrt(0.4375 * 0.5625), abs=0.03)
    assert bootstrap_best_at_n(CORRECT, 3, seed=5) == bootstrap_best_at_n(CORRECT, 3, seed=5)
    assert bootstrap_best_at_n(CORRECT, 3, seed=5) != bootstrap_best_at_n(CORRECT, 3, seed=6)


def test_bootstrap_maj_at_n():
    answers = [["1", "2", "2"], ["x", "x", "x"]]
    references = ["2", "x"]
    # second problem is always right; the first is right when "2" wins the 1-draw vote
    estimate = bootstrap_maj_at_n(answers, references, 1, num_bootstrap=4000, seed=1)
    assert estimate.mean == pytest.approx((2 / 3 + 1) / 2, abs=0.02)
    assert bootstrap_maj_at_n(answers, references, 3, seed=2) == \
        bootstrap_maj_at_n(answers, lambda i, a: a == references[i], 3, seed=2)


def test_summarize_keys():
    answers = [["1", "2", "2", "2"], ["0", "0", "0", "0"], ["3", "3", "3", "1"]]
    row = summarize(CORRECT, ks=(1, 2, 4, 8), answers=answers, is_correct=["2", "1", "3"])
    assert set(row) == {"pass@1", "pass@2", "pass@4", "avg@4", "obs_pass@4", "maj@4"}
    assert row["pass@2"] == pytest.approx(pass_at_k_mean(CORRECT, 2))
    assert row["obs_pass@4"] == pytest.approx(2 / 3)
    assert row["maj@4"] == pytest.approx(2 / 3)
    assert set(summarize(CORRECT)) == {"pass@1", "avg@4", "obs_pass@4"}
    with pytest.raises(ValueError):
        summarize(CORRECT, answers=answers)


def test_reported_metrics_names_exactly_what_summarize_writes():
    correct = [[1, 0, 1, 0], [0, 0, 0, 1]]
    answers = [["a", "b", "a", "c"], ["x", "y", "x", "z"]]
    written = summarize(correct, ks=[1, 2, 8], answers=answers, is_correct=lambda i, a: a in ("a", "z"))
    assert set(written) == reported_metrics([1, 2, 8], 4)  # pass@8 left out: only 4 samples
    assert reported_metrics([1], 4, greedy=True) - reported_metrics([1], 4) == {"greedy@1"}
