"""Held-out evaluation: n samples per problem → pass@k (unbiased), avg@n, maj@n, observed pass@n."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from . import metrics
from .generation import Generator, SamplingParams
from .protocols import resolve_all
from .types import Problem


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
    """Sample ``samples`` responses per problem and grade them.

    Sampling uses its own seeded RNG stream (``torch.random.fork_rng``) so an evaluation never
    shifts the training run's random numbers: a resumed run evaluates exactly as an
    uninterrupted one.
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
                prompt_ids[start : start + chunk_problems], [p.id for p in chunk], samples, params=params
            )
            verdicts = resolve_all([verifier.verify(chunk[i // samples], r) for i, r in enumerate(rollouts)])
            for i in range(len(chunk)):
                group = verdicts[i * samples : (i + 1) * samples]
                correct.append([1.0 if v.passed else 0.0 for v in group])
                answers.append([v.answer for v in group])
            if progress is not None:
                progress.update(len(chunk))
    # An answer counts as correct for maj@n when the verifier passed a sample that gave it.
    passing = [{a for a, c in zip(ans, cor) if c} for ans, cor in zip(answers, correct)]
    out = metrics.summarize(correct, ks=ks, answers=answers, is_correct=lambda i, a: a in passing[i])
    out["problems"] = float(len(problems))
    out["samples"] = float(samples)
    return out
