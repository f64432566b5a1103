"""Held-out evaluation: n samples per problem → pass@k (unbiased), avg@n, maj@n, observed pass@n."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from distil_core.training import metrics
from distil_core.rollouts.local import Generator, SamplingParams
from distil_core.protocols import resolve_all
from distil_core.types import Problem


@torch.no_grad()
def evaluate(
    generator: Generator,
    prompt_ids: Sequence[Sequence[int]],
    problems: Sequence[Problem],
    verifier: Any,
    *,
    samples: int,
    ks: Sequence[int],
    temperature: float = 1.0,
    max_new_tokens: int = 16,
    seed: int = 0,
    chunk_problems: int = 32,
    progress: Optional[Any] = None,
) -> dict[str, float]:
    """Sample ``samples`` responses per problem, grade them, and summarise (see :func:`summarise`)."""
    correct, answers = sample_and_grade(
        generator, prompt_ids, problems, verifier, samples=samples, temperature=temperature,
        max_new_tokens=max_new_tokens, seed=seed, chunk_problems=chunk_problems, progress=progress,
    )
    return summarise(correct, answers, ks=ks, samples=samples)


@torch.no_grad()
def sample_and_grade(
    generator: Generator,
    prompt_ids: Sequence[Sequence[int]],
    problems: Sequence[Problem],
    verifier: Any,
    *,
    samples: int,
    temperature: float = 1.0,
    max_new_tokens: int = 16,
    seed: int = 0,
    chunk_problems: int = 32,
    progress: Optional[Any] = None,
) -> tuple[list[list[float]], list[list[Optional[str]]]]:
    """Per problem: whether each sample passed, and the answer it gave.

    Sampling is keyed by ``seed`` (see :mod:`distil_core.rollouts.local`), so a problem's samples
    do not depend on the problems evaluated with it: evaluations split across ranks add up to
    the one-process evaluation. A generator without keys gets its own seeded RNG stream
    (``torch.random.fork_rng``); either way an evaluation never shifts the training run's
    random numbers, and a resumed run evaluates exactly as an uninterrupted one.
    """
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
    correct: list[list[float]] = []
    answers: list[list[Optional[str]]] = []
    devices = [generator.model.device] if generator.model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for start in range(0, len(problems), chunk_problems):
            chunk = problems[start : start + chunk_problems]
            rollouts = generator.sample(
                prompt_ids[start : start + chunk_problems], [p.id for p in chunk], samples, params=params, key=seed
            )
            verdicts = resolve_all([verifier.verify(chunk[i // samples], r) for i, r in enumerate(rollouts)])
            for i in range(len(chunk)):
                group = verdicts[i * samples : (i + 1) * samples]
                correct.append([1.0 if v.passed else 0.0 for v in group])
                answers.append([v.answer for v in group])
            if progress is not None:
                progress.update(len(chunk))
    return correct, answers


def summarise(
    correct: Sequence[Sequence[float]], answers: Sequence[Sequence[Optional[str]]], *, ks: Sequence[int], samples: int
) -> dict[str, float]:
    """pass@k (unbiased), avg@n, maj@n and observed pass@n over the problems given."""
    # An answer counts as correct for maj@n when the verifier passed a sample that gave it.
    passing = [{a for a, c in zip(ans, cor) if c} for ans, cor in zip(answers, correct)]
    out = metrics.summarize(correct, ks=ks, answers=answers, is_correct=lambda i, a: a in passing[i])
    out["problems"] = float(len(correct))
    out["samples"] = float(samples)
    return out
