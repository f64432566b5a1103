"""Held-out evaluation: n samples per problem → pass@k (unbiased), avg@n, maj@n, observed pass@n."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from distil_core.errors import ConfigError
from distil_core.protocols import resolve
from distil_core.rollouts.local import Generator, SamplingParams
from distil_core.training import metrics
from distil_core.training.distributed import World
from distil_core.training.console import progress_bar
from distil_core.training.step import verify
from distil_core.types import Problem

EVAL_SEED_OFFSET = 7919
"""Evaluations sample with seed ``config.seed + EVAL_SEED_OFFSET``: every evaluation of a run
(before, during, after, and ``distil eval`` of its final model) draws the same random numbers,
so their differences are the policy's (common random numbers), and none shares the training
rollouts' seed."""


def evaluation_split(task: Any, split: str, count: int, name: Optional[str] = None) -> tuple[list[Problem], list[Problem]]:
    """(training problems, evaluation problems) for ``eval.split``.

    "validation" holds out the last ``count`` train problems — never the test problems — and
    trains on the rest, so knobs chosen on it say nothing about the test set in advance. A
    task's ``problems`` may be a coroutine function; it is resolved like every other hook. No
    train problems, or no test problems to evaluate on, is a ConfigError saying what to set
    (``name``: the task's name in the config); a task may return an empty test split, since a
    run on the validation split needs none.
    """
    train = list(resolve(task.problems("train")))
    name = name or getattr(task, "name", type(task).__name__)  # the config's name for it, in messages
    if not train:
        raise ConfigError(f"task {name!r} returned no train problems; check its options")
    if split == "test":
        test = list(resolve(task.problems("test")))[:count]
        if not test:
            raise ConfigError(f"task {name!r} has no test problems to evaluate on; give it a test split (for the "
                              "dataset task: options.test_path, or options.test_fraction > 0), or set "
                              "eval.split=validation")
        return train, test
    if count >= len(train):
        raise ConfigError(f"eval.split: validation takes eval.problems={count} problems out of the "
                          f"{len(train)} train problems and leaves none to train on; lower eval.problems")
    return train[:-count], train[-count:]


def evaluate_on_ranks(rt: Any, config: Any, world: World, problems: Sequence[Problem], *, label: str,
                      progress: bool) -> dict[str, float]:
    """pass@k of the policy on ``problems``, each rank sampling a contiguous share (collective);
    with ``eval.greedy``, ``greedy@1`` from one greedy decode per problem beside it. Call it with
    the whole policy in place (under fsdp: inside ``full_weights``)."""
    lo, hi = world.shard(len(problems))
    mine = list(problems[lo:hi])
    bar = progress_bar(len(mine), f"eval ({label})", progress)
    prompts = [rt.context.student_prompt_ids(p) for p in mine]
    ev = config.eval
    options = dict(max_new_tokens=ev.max_new_tokens or config.rollout.max_new_tokens,
                   seed=config.seed + EVAL_SEED_OFFSET, verifier_name=config.verifier.name)
    correct, answers = sample_and_grade(rt.generator, prompts, mine, rt.verifier, samples=ev.samples,
                                        temperature=ev.temperature, progress=bar, **options)
    greedy = None
    if ev.greedy:
        greedy, _ = sample_and_grade(rt.generator, prompts, mine, rt.verifier, samples=1, temperature=0.0, **options)
    bar.close()
    result = summarise(world.concat(correct), world.concat(answers), ks=ev.ks, samples=ev.samples,
                       votes=metrics.gives_answers(rt.verifier))
    if greedy is not None:
        greedy = world.concat(greedy)
        result["greedy@1"] = sum(row[0] for row in greedy) / max(len(greedy), 1)
    return result


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
    verifier_name: str = "verifier",
) -> dict[str, float]:
    """Sample ``samples`` responses per problem, grade them, and summarise (see :func:`summarise`)."""
    correct, answers = sample_and_grade(
        generator, prompt_ids, problems, verifier, samples=samples, temperature=temperature,
        max_new_tokens=max_new_tokens, seed=seed, chunk_problems=chunk_problems, progress=progress,
        verifier_name=verifier_name,
    )
    return summarise(correct, answers, ks=ks, samples=samples, votes=metrics.gives_answers(verifier))


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
    verifier_name: str = "verifier",
) -> tuple[list[list[float]], list[list[Optional[str]]]]:
    """Per problem: whether each sample passed, and the answer it gave. Each chunk's samples are
    graded as a training step's are (:func:`~distil_core.training.step.verify`: in one
    ``verify_batch`` call where the verifier has one), ``verifier_name`` naming it in errors.

    Sampling is keyed by ``seed`` (see :mod:`distil_core.rollouts.sampling`), so a problem's samples
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
            verdicts = verify(verifier, verifier_name, chunk, rollouts, samples)
            for i in range(len(chunk)):
                group = verdicts[i * samples : (i + 1) * samples]
                correct.append([1.0 if v.passed else 0.0 for v in group])
                answers.append([v.answer for v in group])
            if progress is not None:
                progress.update(len(chunk))
    return correct, answers


def summarise(
    correct: Sequence[Sequence[float]], answers: Sequence[Sequence[Optional[str]]], *, ks: Sequence[int], samples: int,
    votes: bool = True,
) -> dict[str, float]:
    """pass@k (unbiased), avg@n, observed pass@n and, with ``votes`` (the verifier gives
    answers), maj@n over the problems given."""
    if not votes:
        out = metrics.summarize(correct, ks=ks)
        out["problems"], out["samples"] = float(len(correct)), float(samples)
        return out
    # An answer counts as correct for maj@n when the verifier passed a sample that gave it.
    passing = [{a for a, c in zip(ans, cor) if c} for ans, cor in zip(answers, correct)]
    out = metrics.summarize(correct, ks=ks, answers=answers, is_correct=lambda i, a: a in passing[i])
    out["problems"] = float(len(correct))
    out["samples"] = float(samples)
    return out
