"""The update: a step's rows → micro-batch losses (through the method registry) → optimizer steps.

By default one optimizer step per batch; with ``optim.epochs`` and ``optim.minibatches``, one
per mini-batch and pass (:mod:`~distil_core.training.epochs`), off-policy passes corrected by
GRPO's clipped ratio or the distillation losses' importance weights
(:mod:`~distil_core.losses.importance`). ``loss.kl_to_reference`` adds a per-token penalty
(:mod:`~distil_core.losses.reference_kl`).

Every micro-batch's loss is weighted by its share of the *global* (mini-)batch (the method's
``scale``: tokens for the distillation methods, GRPO's aggregation for GRPO), so accumulating
micro-batches, and summing gradients over ranks, gives the gradient of the whole batch at once.
Under FSDP every rank runs as many forward/backward passes as the busiest rank: a rank with
fewer micro-batches runs zero-weighted idle passes, whose collectives match the others'.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from distil_core.config import RunConfig
from distil_core.losses.chunked import chunked_distillation_loss
from distil_core.losses.credit import group_advantages
from distil_core.losses.expert_batch import DIVERGENCE_KEYS
from distil_core.losses.importance import importance_weights, ratio_stats, weighted_gradient
from distil_core.losses.methods import LossOutput, Method, MicroBatch, RowContext, Share, stack_signals
from distil_core.losses.reference import token_logprobs
from distil_core.losses.reference_kl import kl_penalty_sum
from distil_core.models.forward import output_projection, response_hidden, response_logits
from distil_core.models.lora import trainable_parameters
from distil_core.training import fsdp
from distil_core.training.distributed import World
from distil_core.training.epochs import Recorded, check_passes, mini_batches, record_logprobs
from distil_core.training.reference_policy import ReferencePolicy
from distil_core.training.step import StepBatch
from distil_core.types import ExpertQuery, ExpertSignal


@dataclass
class Learner:
    """What an update reads and changes: the policy, its optimizer and schedule, the ranks, and
    the reference policy of ``loss.kl_to_reference`` (None: no penalty)."""

    config: RunConfig
    runtime: Any
    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    world: World
    method: Method
    sharded: bool = False
    chunked: bool = False
    reference: Optional[ReferencePolicy] = None

    def __post_init__(self) -> None:
        check_passes(self.config, self.world.size, self.chunked)

    def full_weights(self) -> Any:
        """Under fsdp, the whole policy gathered for the block (see :func:`fsdp.full_weights`)."""
        return fsdp.full_weights(self.model) if self.sharded else contextlib.nullcontext()


@dataclass
class Plan:
    """How a (mini-)batch's rows go into the loss: targets, per-row token weights, micro-batches,
    and the batch-wide totals each micro-batch's weight is a share of."""

    targets: list[list[int]]
    weight_of: list[int]
    micro: list[list[int]]
    total_tokens: int
    total_rows: int
    total_micro: int
    idle: int


def update_policy(learner: Learner, batch: StepBatch) -> dict[str, float]:
    """The batch's optimizer steps (one per mini-batch and epoch); returns the loss and stats
    summed over ranks, averaged over the steps."""
    cfg = learner.config
    rows = RowInputs.of(learner, batch)
    targets, weight_of = row_targets(learner, batch, rows.text_mode)
    everything = list(range(len(targets)))
    importance = learner.method.clipped_ratio or not rows.text_mode
    recorded = record_logprobs(learner, [batch.prompts[j // batch.n] for j in everything], targets,
                               micro_batches(everything, batch.n, cfg.optim.grad_accum), importance=importance,
                               chunked=not rows.text_mode and not rows.sampled, behaviour=batch.behaviour)
    steps = []
    groups = learner.world.gather(len(batch.problems))  # every rank's prompt groups, in rank order
    split = mini_batches(len(targets), batch.n, cfg.optim.minibatches,
                         first_group=sum(groups[: learner.world.rank]), total_groups=sum(groups))
    for _ in range(cfg.optim.epochs):
        for subset in split:
            plan = plan_update(learner, batch, targets, weight_of, subset)
            steps.append(optimizer_step(learner, accumulate(learner, batch, rows, plan, recorded)))
    if any(not s["skipped_nonfinite"] for s in steps):
        end_of_batch(learner)
    return merged_steps(steps)


def accumulate(learner: Learner, batch: StepBatch, rows: "RowInputs", plan: Plan, recorded: Recorded) -> dict[str, float]:
    """Gradients of one (mini-)batch's loss, accumulated over its micro-batches (and summed over
    ranks); returns its loss and token-weighted stats, summed over ranks."""
    cfg, world = learner.config, learner.world
    totals: dict[str, float] = {"loss": 0.0}
    learner.optimizer.zero_grad(set_to_none=True)
    for chunk in plan.micro:
        micro_tokens = sum(plan.weight_of[j] for j in chunk)
        if micro_tokens == 0:
            continue
        out, penalty = micro_loss(learner, batch, rows, plan, chunk, recorded)
        share = Share(len(chunk), plan.total_rows, plan.total_micro, micro_tokens, plan.total_tokens)
        scale = learner.method.scale(cfg.loss, share)
        (out.loss * scale if penalty is None else out.loss * scale + penalty).backward()
        totals["loss"] += float(out.loss.detach()) * scale + (0.0 if penalty is None else float(penalty.detach()))
        add_stats(totals, out.stats, micro_tokens / plan.total_tokens)
    pad = learner.runtime.pad_id
    for _ in range(plan.idle):  # a zero-weighted pass: its collectives match the other ranks'
        logits, _, _ = response_logits(learner.model, [batch.prompts[0]], [[pad]], pad)
        (logits.sum() * 0.0).backward()
    if world.distributed:
        if not learner.sharded:  # FSDP summed them in its reduce-scatters
            world.sum_grads(trainable_parameters(learner.model))
        parts = world.gather(totals)
        totals = {k: sum(p.get(k, 0.0) for p in parts) for k in {k for p in parts for k in p}}
    return divergence_means(totals)


def add_stats(totals: dict[str, float], stats: dict[str, float], share: float) -> None:
    """Add one micro-batch's stats to ``totals``: each stat times ``share`` (the micro-batch's
    share of the tokens the loss counts), except the divergences to the expert
    (:data:`DIVERGENCE_KEYS`), which are means over its *signal* tokens: those are summed with
    their token counts, and :func:`divergence_means` divides once every rank's are in."""
    signal = stats.get("signal_tokens", 0.0)
    if any(key in stats for key in DIVERGENCE_KEYS):
        totals[SIGNAL_SUM] = totals.get(SIGNAL_SUM, 0.0) + signal
    for key, value in stats.items():
        if key != "signal_tokens":
            totals[key] = totals.get(key, 0.0) + value * (signal if key in DIVERGENCE_KEYS else share)


def divergence_means(totals: dict[str, float]) -> dict[str, float]:
    """``totals`` with the divergences' sums divided by their signal tokens; left out (null in the
    metrics row) where no signal token was read, instead of a 0 that no token measured."""
    signal = totals.pop(SIGNAL_SUM, 0.0)
    for key in DIVERGENCE_KEYS:
        if key in totals:
            if signal > 0:
                totals[key] /= signal
            else:
                del totals[key]
    return totals


SIGNAL_SUM = "signal_tokens_read"
"""The key under which :func:`add_stats` counts the signal tokens its divergence sums weigh."""


def merged_steps(steps: list[dict[str, float]]) -> dict[str, float]:
    """One row for the batch: each key's mean over the optimizer steps that report it (a single
    step's row as it is); ``skipped_nonfinite`` counts the steps skipped and ``optimizer_steps``
    all of them, so the weights did not move at all only where the two are equal."""
    if len(steps) == 1:
        return steps[0]
    keys = {k for s in steps for k in s}
    out = {k: sum(s[k] for s in steps if k in s) / sum(k in s for s in steps) for k in keys}
    out["skipped_nonfinite"] = sum(s["skipped_nonfinite"] for s in steps)
    out["optimizer_steps"] = len(steps)
    return out


@dataclass
class RowInputs:
    """Per-row inputs of the loss beyond the tokens: rewards, baseline exclusions, advantages."""

    scores: torch.Tensor
    readers: torch.Tensor
    advantages: Optional[torch.Tensor]
    text_mode: bool
    sampled: bool

    @classmethod
    def of(cls, learner: Learner, batch: StepBatch) -> "RowInputs":
        signals, n = batch.signals, batch.n
        advantages = None
        if learner.method.group_advantages:
            advantages = rank_advantages(learner.world, [v.score for v in batch.verdicts], n,
                                         learner.config.loss.advantage_scale)
        # Decided over every rank's rows, so that a rank whose rows got no usable signal takes the
        # same path (and the same collectives) as the others, and N ranks weigh rows as one would.
        flags = learner.world.gather((any(s is not None and s.ok and s.access == "text" for s in signals),
                                      any(s is not None and s.ok and s.access == "sampled" for s in signals)))
        return cls(
            scores=torch.tensor([v.score for v in batch.verdicts], dtype=torch.float32),  # this rank's rows
            readers=baseline_exclusions(batch.queries, len(batch.rollouts), n),
            advantages=advantages,
            text_mode=any(text for text, _ in flags),
            # sampled-token experts never hold a distribution: they keep the full-logit path
            sampled=any(sampled for _, sampled in flags),
        )

    def context(self, learner: Learner, chunk: list[int], n: int) -> RowContext:
        return RowContext(group_size=n, eos_id=learner.runtime.tokenizer.eos_token_id,
                          rewards=self.scores[chunk], baseline_exclude=self.readers[chunk])


def rank_advantages(world: World, scores: list[float], n: int, scale: str) -> torch.Tensor:
    """This rank's rows of the group advantages, computed over the whole batch (needed under
    ``advantage_scale: batch``, or with one sample per problem)."""
    parts = world.gather(scores)
    offset = sum(len(part) for part in parts[: world.rank])
    rewards = torch.tensor([r for part in parts for r in part], dtype=torch.float32)
    advantages = group_advantages(rewards, n, scale=scale) if n > 1 else rewards - rewards.mean()
    return advantages[offset : offset + len(scores)]


def row_targets(learner: Learner, batch: StepBatch, text_mode: bool) -> tuple[list[list[int]], list[int]]:
    """Each row's target tokens and the tokens it weighs in the loss: every row for a method that
    reads them all (GRPO, a success term); else rows with a usable signal."""
    cfg, signals, n = learner.config, batch.signals, batch.n
    tok = learner.runtime.tokenizer
    cap = cfg.rollout.max_new_tokens
    targets = [text_target(tok, s, cap) if text_mode else r.response_ids for r, s in zip(batch.rollouts, signals)]
    every_row = learner.method.reads_every_row(cfg.loss, n)
    weight_of = [len(t) if (every_row or (signals[j] is not None and signals[j].ok)) else 0
                 for j, t in enumerate(targets)]
    return targets, weight_of


def plan_update(learner: Learner, batch: StepBatch, targets: list[list[int]], weight_of: list[int],
                subset: list[int]) -> Plan:
    """The micro-batches of the rows ``subset`` (whole groups); totals are gathered over ranks
    (collective)."""
    micro = micro_batches(subset, batch.n, learner.config.optim.grad_accum)
    learning = sum(any(weight_of[j] for j in chunk) for chunk in micro)
    parts = learner.world.gather((sum(weight_of[j] for j in subset), len(subset), len(micro), learning))
    total_tokens, total_rows, total_micro = (sum(part[i] for part in parts) for i in range(3))
    idle = max(part[3] for part in parts) - learning if learner.sharded else 0
    return Plan(targets, weight_of, micro, total_tokens, total_rows, total_micro, idle)


def micro_loss(learner: Learner, batch: StepBatch, rows: RowInputs, plan: Plan, chunk: list[int],
               recorded: Recorded) -> tuple[LossOutput, Optional[torch.Tensor]]:
    """One micro-batch's loss: chunked from hidden states when the method and the expert's
    signals allow it, else from full logits through the method's own loss; and the KL penalty
    to the reference, already divided by the batch's token count (None: no penalty)."""
    cfg, model, n, pad = learner.config, learner.model, batch.n, learner.runtime.pad_id
    prompts = [batch.prompts[j // n] for j in chunk]
    targets = [plan.targets[j] for j in chunk]
    signals = [batch.signals[j] for j in chunk]
    context = rows.context(learner, chunk, n)
    width = max((len(t) for t in targets), default=0)
    if learner.chunked and not rows.text_mode and not rows.sampled:
        hidden, tokens, mask = response_hidden(model, prompts, targets, pad)
        weight, bias = output_projection(model)
        expert = stack_signals(signals, tokens.shape[1], weight.shape[0], hidden.device)
        old = recorded.old_for(chunk, width, hidden.device)
        return chunked_distillation_loss(learner.method, cfg.loss, hidden, weight, bias, tokens, mask, expert, context,
                                         old_logprobs=old), None
    logits, tokens, mask = response_logits(model, prompts, targets, pad)
    old = recorded.old_for(chunk, width, logits.device)
    read = mask * torch.tensor([float(plan.weight_of[j] > 0) for j in chunk], device=mask.device).unsqueeze(1)
    weighted, stats = logits, {}
    if old is not None and not learner.method.clipped_ratio:  # importance weights for the distillation losses
        current = token_logprobs(logits.detach().float(), tokens)
        weighted = weighted_gradient(logits, importance_weights(current, old, cfg.loss.is_clip))
        stats = ratio_stats(current, old, read, cfg.loss.is_clip)
    advantages = None if rows.advantages is None else rows.advantages[chunk]
    out = learner.method.loss(MicroBatch(
        cfg.loss, weighted, tokens, mask, signals, context, advantages=advantages,
        total_tokens=float(plan.total_tokens), max_new_tokens=cfg.rollout.max_new_tokens,
        old_logprobs=old if learner.method.clipped_ratio else None))
    out.stats.update(stats)
    return out, kl_penalty(learner, recorded.ref_for(chunk, width, logits.device), logits, tokens, read, plan, out)


def kl_penalty(learner: Learner, ref: Optional[torch.Tensor], logits: torch.Tensor, tokens: torch.Tensor,
               read: torch.Tensor, plan: Plan, out: LossOutput) -> Optional[torch.Tensor]:
    """``coef · Σ KL estimate / N`` over the micro-batch's read tokens, N the batch's token count
    (so the batch's penalty is ``coef`` times the token mean); logs the estimate's token mean."""
    if ref is None:
        return None
    reference = learner.reference
    total = kl_penalty_sum(token_logprobs(logits.float(), tokens), ref, read, reference.estimator)
    out.stats["kl_to_reference"] = float(total.detach()) / max(float(read.sum()), 1.0)
    return reference.coef * total / plan.total_tokens


def optimizer_step(learner: Learner, totals: dict[str, float]) -> dict[str, float]:
    """Clip and step. The batch's end (:func:`end_of_batch`: the schedule, then an expert that
    follows the policy) comes once, after all of its optimizer steps.

    A step whose loss or gradient norm is NaN or inf is skipped: its gradients are dropped and
    neither the optimizer (whose moment estimates one NaN would poison for good) nor the
    schedule moves. ``skipped_nonfinite`` says so in the metrics row; every rank sees the same
    summed loss and norm, so all skip together. Stopping after repeated skips is the
    :class:`~distil_core.training.guards.RunGuard`'s decision (``train.max_nonfinite_steps``).
    """
    cfg = learner.config
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf  # inf: measured, not clipped
    norm = fsdp.norm_value(torch.nn.utils.clip_grad_norm_(learner.model.parameters(), clip))
    totals["grad_norm"] = norm
    totals["skipped_nonfinite"] = 0 if math.isfinite(totals["loss"]) and math.isfinite(norm) else 1
    if totals["skipped_nonfinite"]:
        learner.optimizer.zero_grad(set_to_none=True)
        return totals
    learner.optimizer.step()
    learner.optimizer.zero_grad(set_to_none=True)
    return totals


def end_of_batch(learner: Learner) -> None:
    """After a batch's optimizer steps (at least one taken): the learning-rate schedule moves one
    step (it counts batches of rollouts, however many passes each gets), and an expert that
    follows the policy is told (``on_policy_update``)."""
    learner.scheduler.step()
    hook = getattr(learner.runtime.expert, "on_policy_update", None)
    if callable(hook):
        with learner.full_weights():
            hook(learner.model)


def text_target(tokenizer: Any, signal: Optional[ExpertSignal], max_tokens: int) -> list[int]:
    """A text expert's continuation in the student's tokens, ended like a response, and cut to
    ``max_tokens`` (``rollout.max_new_tokens``, the end included) as the student's own response
    would have been (an answer the expert's provider cut at its ``max_tokens``, counted
    in its own tokens, is often longer in the student's)."""
    if signal is None or not signal.ok:
        return []
    return (tokenizer.encode(signal.text, add_special_tokens=False) + [tokenizer.eos_token_id])[:max_tokens]


def micro_batches(rows: Sequence[int], group_size: int, accum: int) -> list[list[int]]:
    """Split ``rows`` (whole groups, in order) into ``accum`` micro-batches on group boundaries
    (group baselines need whole groups)."""
    rows = list(rows)
    groups = [rows[i : i + group_size] for i in range(0, len(rows), group_size)]
    per = max(1, -(-len(groups) // accum))
    return [sum(groups[i : i + per], []) for i in range(0, len(groups), per)]


def baseline_exclusions(queries: Sequence[ExpertQuery], rows: int, group_size: int) -> torch.Tensor:
    """``[rows, group_size]``: True where sibling b's expert context read row j (as its demonstration).

    The ``group_loo`` baseline of row j must not depend on j's own rollout; a sibling whose
    context shows j's response has a future cost that does (provenance records which rollout
    each demonstration came from, by its sample index within the group: rows are laid out group
    by group, so row j is sample ``j % group_size`` of its group), so it is left out of j's baseline.
    """
    exclude = torch.zeros(rows, group_size, dtype=torch.bool)
    for query in queries:
        for item in query.provenance:
            if item.get("kind") == "demonstration" and item.get("source") == "sibling":
                sample, first = int(item["rollout"]), query.rollout_index - query.rollout_index % group_size
                if 0 <= sample < group_size:
                    exclude[first + sample, query.rollout_index % group_size] = True
    return exclude
