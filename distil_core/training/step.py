"""One step's data, in pipeline order: rollout → verify → feedback → context → expert signal.

Plain functions over the run's components (:class:`~distil_core.training.runtime.Runtime`):
each takes what the one before produced — :func:`sample_rollouts`, :func:`verify` (or, with
``rollout.overlap_grading``, :class:`~distil_core.training.overlap.GradingOverlap`), then
:func:`consult_expert` — so the trainer's step reads top to bottom, and each piece can be
called alone. Plugin results are validated where they enter (a wrong type, count or signal
names the plugin), never deep inside a loss.
"""

from __future__ import annotations

import inspect
import random
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from distil_core.config import RunConfig
from distil_core.errors import PluginError, plugin_awaited, plugin_call
from distil_core.losses.methods import Method
from distil_core.models.forward import vocab_size
from distil_core.protocols import resolve, resolve_all
from distil_core.training.signals import check_signals
from distil_core.types import ExpertQuery, ExpertSignal, Feedback, Problem, Rollout, Verdict, checked


@dataclass
class StepBatch:
    """Everything one rank's share of a step produced before the update, row for row
    (``n`` rollouts per problem, problem ``j // n`` for rollout ``j``)."""

    problems: list[Problem]
    prompts: list[list[int]]
    n: int
    rollouts: list[Rollout] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    feedback: list[list[Feedback]] = field(default_factory=list)
    queries: list[ExpertQuery] = field(default_factory=list)
    signals: list[Optional[ExpertSignal]] = field(default_factory=list)
    behaviour: Optional[list[Any]] = None
    """Per row, the log-probs of the policy that sampled it, when that is not the policy the
    update starts from (``rollout.overlap_grading``: sampled one update earlier); None: on-policy."""


class Clock:
    """Seconds per phase of a step, as ``time_<phase>`` (what metrics.jsonl reports)."""

    def __init__(self) -> None:
        self.began = self.last = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, name: str) -> None:
        """The time since the last lap, added to phase ``name`` (a phase may run twice in a step)."""
        now = time.perf_counter()
        self.timings[f"time_{name}"] = self.timings.get(f"time_{name}", 0.0) + now - self.last
        self.last = now

    def total(self) -> dict[str, float]:
        return {**self.timings, "time_step": time.perf_counter() - self.began}


def step_key(seed: int, step: int) -> int:
    """The key of step ``step``: its problems and its rollouts' sampling (see
    :mod:`distil_core.rollouts.sampling`) depend on (seed, step) alone, so a resumed run sees the
    same problems and rollouts as an uninterrupted one."""
    return seed * 1_000_003 + step


def problems_for_step(config: RunConfig, train_problems: Sequence[Problem], step: int) -> list[Problem]:
    """A deterministic function of (seed, step): a resumed run, or another rank, sees the same problems."""
    rng = random.Random(step_key(config.seed, step))
    k = min(config.rollout.problems_per_step, len(train_problems))
    return rng.sample(list(train_problems), k)


def sample_rollouts(rt: Any, batch: StepBatch, *, key: int) -> StepBatch:
    """The batch's ``n`` rollouts per problem, from the run's generator."""
    batch.rollouts = rt.generator.sample(batch.prompts, [p.id for p in batch.problems], batch.n, key=key)
    return batch


def consult_expert(rt: Any, config: RunConfig, method: Method, batch: StepBatch, *, chunked: bool,
                   clock: Clock) -> StepBatch:
    """After grading: for a method that asks an expert, the feedback, the expert's contexts and
    its signals; for one that does not, empty signals."""
    n = batch.n
    batch.signals = [None] * len(batch.rollouts)
    batch.feedback = [[] for _ in batch.rollouts]
    if not method.needs_expert:
        return batch
    groups = sibling_groups(batch)
    batch.feedback = collect_feedback(rt.feedback_sources, batch, groups)
    clock.lap("feedback")
    batch.queries = [
        rt.context.build(batch.problems[j // n], j, batch.rollouts[j], batch.feedback[j], groups[j // n])
        for j in range(len(batch.rollouts))
    ]
    asked = [q for q in batch.queries if q.has_signal or config.loss.no_signal == "keep"]
    for q, s in zip(asked, ask_expert(rt, config, asked, chunked=chunked)):
        batch.signals[q.rollout_index] = s
    clock.lap("expert")
    return batch


def awaited_as(role: str, name: str, value: Any, owner: Any) -> Any:
    """``value``, or, when it is a coroutine, one that names the plugin if it raises (the
    step's coroutines all run together, so the error must carry its owner's name)."""
    return plugin_awaited(role, name, value, owner) if inspect.isawaitable(value) else value


def verify(verifier: Any, name: str, problems: Sequence[Problem], rollouts: Sequence[Rollout], n: int) -> list[Verdict]:
    """Every rollout's verdict: in one ``verify_batch`` call when the verifier has one (a
    :class:`~distil_core.protocols.BatchVerifier`), else its ``verify`` coroutines run together.
    A wrong count, or a verdict that is not a :class:`Verdict`, stops the run naming ``name``."""
    whole = getattr(verifier, "verify_batch", None)
    with plugin_call("verifier", name, verifier):
        if not callable(whole):
            return checked(resolve_all([verifier.verify(problems[i // n], r) for i, r in enumerate(rollouts)]),
                           Verdict, name)
        verdicts = resolve(whole([problems[i // n] for i in range(len(rollouts))], list(rollouts)))
    if not isinstance(verdicts, (list, tuple)) or len(verdicts) != len(rollouts):
        count = len(verdicts) if isinstance(verdicts, (list, tuple)) else type(verdicts).__name__
        raise PluginError(f"verifier {name!r}: verify_batch returned {count} verdicts for {len(rollouts)} rollouts; "
                          "it must return one Verdict per rollout, in order")
    return checked(list(verdicts), Verdict, name)


def sibling_groups(batch: StepBatch) -> list[list[tuple[int, Rollout, Verdict]]]:
    """Per problem, its rollouts with their row index and verdict (what feedback and contexts compare)."""
    n = batch.n
    return [[(j, batch.rollouts[j], batch.verdicts[j]) for j in range(i * n, (i + 1) * n)]
            for i in range(len(batch.problems))]


def collect_feedback(sources: Sequence[tuple[str, Any]], batch: StepBatch, groups) -> list[list[Feedback]]:
    """Per rollout and source; a source with ``feedback_batch(items)`` gets the step in one call."""
    n = batch.n
    items = [
        (batch.problems[j // n], rollout, verdict, [(r, v) for _, r, v in groups[j // n]])
        for j, (rollout, verdict) in enumerate(zip(batch.rollouts, batch.verdicts))
    ]
    calls, owners = [], []
    for name, source in sources:
        whole = getattr(source, "feedback_batch", None)
        with plugin_call("feedback source", name, source):
            if callable(whole):
                calls.append(awaited_as("feedback source", name, whole(items), source))
                owners.append((name, source, None))
                continue
            for j, item in enumerate(items):
                calls.append(awaited_as("feedback source", name, source.feedback(*item), source))
                owners.append((name, source, j))
    out: list[list[Feedback]] = [[] for _ in items]
    for (name, source, j), result in zip(owners, resolve_all(calls)):
        with plugin_call("feedback source", name, source):  # a generator's body runs here, as it is read
            if j is not None:
                out[j].extend(checked(result, Feedback, name))
                continue
            result = list(result or [])
            if len(result) != len(items):
                raise PluginError(f"feedback source {name!r}: feedback_batch returned {len(result)} lists for "
                                  f"{len(items)} rollouts")
            for k, per_rollout in enumerate(result):
                out[k].extend(checked(per_rollout, Feedback, name))
    return out


def ask_expert(rt: Any, config: RunConfig, queries: Sequence[ExpertQuery], *, chunked: bool) -> list[ExpertSignal]:
    """The expert's signal for each query, checked before any loss reads it: one that does not fit
    comes back failed (see :func:`~distil_core.training.signals.check_signals`)."""
    if not queries:
        return []
    score = rt.expert.score
    if chunked and callable(getattr(rt.expert, "score_hidden", None)):
        score = rt.expert.score_hidden  # a local model: its hidden states, projected a chunk at a time
    name = config.expert.name
    with plugin_call("expert", name, rt.expert):
        answered = resolve(score(list(queries)))
    if not isinstance(answered, (list, tuple)) or len(answered) != len(queries):
        count = len(answered) if isinstance(answered, (list, tuple)) else type(answered).__name__
        raise PluginError(f"expert {name!r} returned {count} signals for {len(queries)} queries; "
                          "score() must return one ExpertSignal per query, in order")
    answered = checked(list(answered), ExpertSignal, name)
    return check_signals(answered, queries, vocab_size=vocab_size(rt.model, rt.tokenizer),
                         text=config.rollout.max_new_tokens)


REASONS_SHOWN = 3
"""Distinct failure reasons a step's metrics row keeps (``expert_fail_reasons``)."""


def fail_reasons(signals: Sequence[Optional[ExpertSignal]], limit: int = REASONS_SHOWN) -> list[str]:
    """The first ``limit`` distinct reasons this rank's failed signals give, each one line of at
    most 300 characters (an API's error text can be long)."""
    out: list[str] = []
    for s in signals:
        if s is not None and not s.ok:
            reason = " ".join(str(s.error or "no reason given").split())
            reason = reason if len(reason) <= 300 else reason[:300] + "…"
            if reason not in out:
                out.append(reason)
            if len(out) == limit:
                break
    return out


def step_counts(batch: StepBatch, config: RunConfig) -> dict[str, float]:
    """This rank's sums behind the step's metrics row (merged over ranks by
    :func:`~distil_core.training.runlog.step_row`)."""
    signals, queries = batch.signals, batch.queries
    return {
        "rollouts": len(batch.rollouts),
        "reward": sum(v.score for v in batch.verdicts),
        "pass_rate": sum(v.passed for v in batch.verdicts),
        "feedback_coverage": sum(bool(f) for f in batch.feedback),
        "demo_coverage": sum(any(p["kind"] == "demonstration" for p in q.provenance) for q in queries),
        "feedback_cut": sum(any(p["kind"] == "feedback_cut" for p in q.provenance) for q in queries),
        "signal_rollouts": sum(s is not None and s.ok for s in signals),
        "dropped_no_signal": sum(not q.has_signal for q in queries) if config.loss.no_signal == "skip" else 0,
        "expert_failed": sum(s is not None and not s.ok for s in signals),
        "generated": sum(len(r.response_ids) for r in batch.rollouts),
    }
