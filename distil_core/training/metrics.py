"""Evaluation metrics over n samples per problem (pass@k, avg@n, maj@n, observed pass@n).

``correct`` is one sequence per problem of per-sample correctness: bools, or scores in
[0, 1]. avg@n averages the scores; the counting metrics (pass@k, observed pass, best@N) treat
a sample as correct when its score is at least ``SUCCESS_THRESHOLD``.

    pass_at_k, pass_at_k_mean    unbiased pass@k from n samples with c correct
    avg_at_n                     mean correctness
    observed_pass_at_n           share of problems with at least one correct sample
    maj_at_n                     accuracy of the majority-voted final answer
    bootstrap_best_at_n, bootstrap_maj_at_n   best@N / maj@N from resampling N of n
    summarize                    the usual table row as a dict
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from statistics import fmean, stdev
from typing import Any, Callable, Optional, Sequence, Union

SUCCESS_THRESHOLD = 0.5

Score = Union[bool, float]
Answer = Optional[str]
# Either one reference answer per problem or is_correct(problem_index, answer) -> bool.
AnswerCheck = Union[Sequence[Answer], Callable[[int, str], bool]]


@dataclass(frozen=True)
class BootstrapEstimate:
    """Mean and standard deviation (n-1 denominator) of a metric over bootstrap replicates."""

    mean: float
    std: float


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k: 1 - C(n-c, k) / C(n, k) = 1 - Π_{i=n-c+1..n} (1 - k/i); 1 if n-c < k."""
    if min(n, c, k) < 0 or k < 1:
        raise ValueError(f"pass@k needs n, c >= 0 and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if c > n:
        raise ValueError(f"{c} correct samples out of n={n} is impossible")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_at_k_mean(correct: Sequence[Sequence[Score]], k: int) -> float:
    """Mean over problems of pass_at_k(n_i, c_i, k)."""
    _check_problems(correct)
    return fmean(pass_at_k(len(s), _count_correct(s), k) for s in correct)


def avg_at_n(correct: Sequence[Sequence[Score]]) -> float:
    """Mean over problems of the mean score of that problem's samples."""
    _check_problems(correct)
    return fmean(fmean(float(x) for x in s) for s in correct)


def observed_pass_at_n(correct: Sequence[Sequence[Score]]) -> float:
    """Share of problems with at least one correct sample."""
    _check_problems(correct)
    return fmean(float(_count_correct(s) > 0) for s in correct)


def maj_at_n(answers: Sequence[Sequence[Answer]], references: AnswerCheck) -> float:
    """Accuracy of the majority-voted final answer per problem.

    None (no answer extracted) never wins a vote; a problem with no answers at all counts as
    wrong. Ties go to the answer that appears first. ``references`` is one reference answer per
    problem (compared with ==) or a callable ``is_correct(problem_index, answer) -> bool``.
    """
    _check_problems(answers)
    check = _answer_check(references, len(answers))
    return fmean(float(check(i, _majority(a))) for i, a in enumerate(answers))


def bootstrap_best_at_n(correct: Sequence[Sequence[Score]], n_resample: int, *,
                        num_bootstrap: int = 1000, seed: int = 0) -> BootstrapEstimate:
    """best@N: draw N of each problem's n samples with replacement; solved if any is correct.

    One replicate is the share of problems solved; returns the mean and std over
    ``num_bootstrap`` replicates drawn from ``random.Random(seed)``.
    """
    _check_problems(correct)
    _check_resampling(n_resample, num_bootstrap)
    rng = random.Random(seed)
    flags = [[_is_correct(x) for x in s] for s in correct]
    replicates = [fmean(float(any(rng.choices(f, k=n_resample))) for f in flags)
                  for _ in range(num_bootstrap)]
    return _summarize_replicates(replicates)


def bootstrap_maj_at_n(answers: Sequence[Sequence[Answer]], is_correct: AnswerCheck,
                       n_resample: int, *, num_bootstrap: int = 1000,
                       seed: int = 0) -> BootstrapEstimate:
    """maj@N: draw N of each problem's n answers with replacement and majority-vote them.

    Voting and ``is_correct`` are as in :func:`maj_at_n`; returns the mean and std over
    ``num_bootstrap`` replicates drawn from ``random.Random(seed)``.
    """
    _check_problems(answers)
    _check_resampling(n_resample, num_bootstrap)
    check = _answer_check(is_correct, len(answers))
    verdicts: dict[tuple[int, Answer], bool] = {}  # a checker may be slow (symbolic maths)

    def cached_check(i: int, answer: Answer) -> bool:
        if (i, answer) not in verdicts:
            verdicts[(i, answer)] = check(i, answer)
        return verdicts[(i, answer)]

    rng = random.Random(seed)
    replicates = [fmean(float(cached_check(i, _majority(rng.choices(a, k=n_resample))))
                        for i, a in enumerate(answers))
                  for _ in range(num_bootstrap)]
    return _summarize_replicates(replicates)


def gives_answers(verifier: Any) -> bool:
    """Whether ``verifier`` (an instance or its factory) gives answers to vote on: its
    ``gives_answers``, default True. A verifier grading code by its tests has none, and maj@n
    would read 0 for every problem."""
    return bool(getattr(verifier, "gives_answers", True))


def reported_metrics(ks: Sequence[int], n: int, *, greedy: bool = False, votes: bool = True) -> set[str]:
    """The keys an evaluation of ``n`` samples per problem reports: those :func:`summarize` writes
    (``maj@n`` when the verifier gives answers to vote on, ``votes``) and, with a greedy decode
    beside the samples, ``greedy@1``. A report checks its metric against these before any run trains."""
    keys = {f"pass@{k}" for k in ks if k <= n} | {f"avg@{n}", f"obs_pass@{n}"} | ({f"maj@{n}"} if votes else set())
    return keys | ({"greedy@1"} if greedy else set())


def summarize(correct: Sequence[Sequence[Score]], ks: Sequence[int] = (1, 8),
              answers: Optional[Sequence[Sequence[Answer]]] = None,
              is_correct: Optional[AnswerCheck] = None) -> dict[str, float]:
    """Keys "pass@{k}" (each k ≤ n), "avg@{n}", "obs_pass@{n}" and, with answers, "maj@{n}".

    n is the smallest number of samples any problem has (normally all problems have n).
    """
    _check_problems(correct)
    n = min(len(s) for s in correct)
    row = {f"pass@{k}": pass_at_k_mean(correct, k) for k in ks if k <= n}
    row[f"avg@{n}"] = avg_at_n(correct)
    row[f"obs_pass@{n}"] = observed_pass_at_n(correct)
    if answers is not None:
        if is_correct is None:
            raise ValueError("maj@n needs is_correct: reference answers or a checking function")
        row[f"maj@{n}"] = maj_at_n(answers, is_correct)
    return row


# ------------------------------------------------------------------------ private helpers


def _is_correct(score: Score) -> bool:
    return float(score) >= SUCCESS_THRESHOLD


def _count_correct(scores: Sequence[Score]) -> int:
    return sum(_is_correct(x) for x in scores)


def _majority(answers: Sequence[Answer]) -> Answer:
    """Most frequent non-None answer, ties to the earliest; None if there is none."""
    counts: dict[str, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    # dicts keep insertion order and max keeps the first maximum: ties go to the earliest answer
    return max(counts, key=counts.__getitem__) if counts else None


def _answer_check(references: AnswerCheck, num_problems: int) -> Callable[[int, Answer], bool]:
    """A check (problem_index, answer) -> bool that counts a missing answer as wrong."""
    if callable(references):
        return lambda i, answer: answer is not None and bool(references(i, answer))
    if len(references) != num_problems:
        raise ValueError(f"got {len(references)} reference answers for {num_problems} problems")
    return lambda i, answer: answer is not None and answer == references[i]


def _summarize_replicates(replicates: list[float]) -> BootstrapEstimate:
    std = stdev(replicates) if len(replicates) > 1 else 0.0
    return BootstrapEstimate(mean=fmean(replicates), std=std)


def _check_problems(per_problem: Sequence[Sequence]) -> None:
    if len(per_problem) == 0:
        raise ValueError("no problems to score")
    if any(len(s) == 0 for s in per_problem):
        raise ValueError("every problem needs at least one sample")


def _check_resampling(n_resample: int, num_bootstrap: int) -> None:
    if n_resample < 1 or num_bootstrap < 1:
        raise ValueError(f"need n_resample >= 1 and num_bootstrap >= 1, got {n_resample}, "
                         f"{num_bootstrap}")
