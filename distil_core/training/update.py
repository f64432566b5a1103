"""The update: a step's rows → micro-batch losses (through the method registry) → one optimizer step.

Every micro-batch's loss is weighted by its share of the *global* batch (the method's
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
from distil_core.losses.methods import LossOutput, Method, MicroBatch, RowContext, Share, stack_signals
from distil_core.models.forward import output_projection, response_hidden, response_logits
from distil_core.models.lora import trainable_parameters
from distil_core.training import fsdp
from distil_core.training.distributed import World
from distil_core.training.step import StepBatch
from distil_core.types import ExpertQuery, ExpertSignal


@dataclass
class Learner:
    """What an update reads and changes: the policy, its optimizer and schedule, the ranks."""

    config: RunConfig
    runtime: Any
    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    world: World
    method: Method
    sharded: bool = False
    chunked: bool = False

    def full_weights(self) -> Any:
        """Under fsdp, the whole policy gathered for the block (see :func:`fsdp.full_weights`)."""
        return fsdp.full_weights(self.model) if self.sharded else contextlib.nullcontext()


@dataclass
class Plan:
    """How this rank's rows go into the loss: targets, per-row token weights, micro-batches,
    and the batch-wide totals each micro-batch's weight is a share of."""

    targets: list[list[int]]
    weight_of: list[int]
    micro: list[list[int]]
    total_tokens: int
    total_rows: int
    total_micro: int
    idle: int


def update_policy(learner: Learner, batch: StepBatch) -> dict[str, float]:
    """One optimizer step on ``batch``; returns the step's loss and stats, summed over ranks."""
    cfg, world = learner.config, learner.world
    rows = RowInputs.of(learner, batch)
    plan = plan_update(learner, batch, rows.text_mode)
    totals: dict[str, float] = {"loss": 0.0}
    learner.optimizer.zero_grad(set_to_none=True)
    for chunk in plan.micro:
        micro_tokens = sum(plan.weight_of[j] for j in chunk)
        if micro_tokens == 0:
            continue
        out = micro_loss(learner, batch, rows, plan, chunk)
        share = Share(len(chunk), plan.total_rows, plan.total_micro, micro_tokens, plan.total_tokens)
        scale = learner.method.scale(cfg.loss, share)
        (out.loss * scale).backward()
        totals["loss"] += float(out.loss.detach()) * scale
        for key, value in out.stats.items():
            if key != "signal_tokens":
                totals[key] = totals.get(key, 0.0) + value * micro_tokens / plan.total_tokens
    pad = learner.runtime.pad_id
    for _ in range(plan.idle):  # a zero-weighted pass: its collectives match the other ranks'
        logits, _, _ = response_logits(learner.model, [batch.prompts[0]], [[pad]], pad)
        (logits.sum() * 0.0).backward()
    if world.distributed:
        if not learner.sharded:  # FSDP summed them in its reduce-scatters
            world.sum_grads(trainable_parameters(learner.model))
        parts = world.gather(totals)
        totals = {k: sum(p.get(k, 0.0) for p in parts) for k in {k for p in parts for k in p}}
    return optimizer_step(learner, totals)


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
        return cls(
            scores=torch.tensor([v.score for v in batch.verdicts], dtype=torch.float32),  # this rank's rows
            readers=baseline_exclusions(batch.queries, len(batch.rollouts), n),
            advantages=advantages,
            text_mode=any(s is not None and s.ok and s.access == "text" for s in signals),
            # sampled-token experts never hold a distribution: they keep the full-logit path
            sampled=any(s is not None and s.ok and s.access == "sampled" for s in signals),
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


def plan_update(learner: Learner, batch: StepBatch, text_mode: bool) -> Plan:
    """Rows the loss reads: every row for a method that reads them all (GRPO, a success term);
    else rows with a usable signal. Totals are gathered over ranks (collective)."""
    cfg, signals, n = learner.config, batch.signals, batch.n
    tok = learner.runtime.tokenizer
    targets = [text_target(tok, s) if text_mode else r.response_ids for r, s in zip(batch.rollouts, signals)]
    every_row = learner.method.reads_every_row(cfg.loss, n)
    weight_of = [len(t) if (every_row or (signals[j] is not None and signals[j].ok)) else 0
                 for j, t in enumerate(targets)]
    micro = micro_batches(len(targets), n, cfg.optim.grad_accum)
    learning = sum(any(weight_of[j] for j in chunk) for chunk in micro)
    parts = learner.world.gather((sum(weight_of), len(targets), len(micro), learning))
    total_tokens, total_rows, total_micro = (sum(part[i] for part in parts) for i in range(3))
    idle = max(part[3] for part in parts) - learning if learner.sharded else 0
    return Plan(targets, weight_of, micro, total_tokens, total_rows, total_micro, idle)


def micro_loss(learner: Learner, batch: StepBatch, rows: RowInputs, plan: Plan, chunk: list[int]) -> LossOutput:
    """One micro-batch's loss: chunked from hidden states when the method and the expert's
    signals allow it, else from full logits through the method's own loss."""
    cfg, model, n, pad = learner.config, learner.model, batch.n, learner.runtime.pad_id
    prompts = [batch.prompts[j // n] for j in chunk]
    targets = [plan.targets[j] for j in chunk]
    signals = [batch.signals[j] for j in chunk]
    context = rows.context(learner, chunk, n)
    if learner.chunked and not rows.text_mode and not rows.sampled:
        hidden, tokens, mask = response_hidden(model, prompts, targets, pad)
        weight, bias = output_projection(model)
        expert = stack_signals(signals, tokens.shape[1], weight.shape[0], hidden.device)
        return chunked_distillation_loss(learner.method, cfg.loss, hidden, weight, bias, tokens, mask, expert, context)
    logits, tokens, mask = response_logits(model, prompts, targets, pad)
    advantages = None if rows.advantages is None else rows.advantages[chunk]
    return learner.method.loss(MicroBatch(
        cfg.loss, logits, tokens, mask, signals, context, advantages=advantages,
        total_tokens=float(plan.total_tokens), max_new_tokens=cfg.rollout.max_new_tokens))


def optimizer_step(learner: Learner, totals: dict[str, float]) -> dict[str, float]:
    """Clip, step, schedule; then tell an expert that follows the policy (``on_policy_update``).

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
    learner.scheduler.step()
    learner.optimizer.zero_grad(set_to_none=True)
    hook = getattr(learner.runtime.expert, "on_policy_update", None)
    if callable(hook):
        with learner.full_weights():
            hook(learner.model)
    return totals


def text_target(tokenizer: Any, signal: Optional[ExpertSignal]) -> list[int]:
    """A text expert's continuation in the student's tokens, ended like a response."""
    if signal is None or not signal.ok:
        return []
    return tokenizer.encode(signal.text, add_special_tokens=False) + [tokenizer.eos_token_id]


def micro_batches(count: int, group_size: int, accum: int) -> list[list[int]]:
    """Split rows into ``accum`` micro-batches on group boundaries (group baselines need whole groups)."""
    groups = [list(range(i, min(i + group_size, count))) for i in range(0, count, group_size)]
    per = max(1, -(-len(groups) // accum))
    return [sum(groups[i : i + per], []) for i in range(0, len(groups), per)]


def baseline_exclusions(queries: Sequence[ExpertQuery], rows: int, group_size: int) -> torch.Tensor:
    """``[rows, group_size]``: True where sibling b's expert context read row j (as its demonstration).

    The ``group_loo`` baseline of row j must not depend on j's own rollout; a sibling whose
    context shows j's response has a future cost that does (provenance records which rollout
    each demonstration came from), so it is left out of j's baseline.
    """
    exclude = torch.zeros(rows, group_size, dtype=torch.bool)
    for query in queries:
        for item in query.provenance:
            if item.get("kind") == "demonstration" and item.get("source") == "sibling":
                read = int(item["rollout"])
                if read // group_size == query.rollout_index // group_size:
                    exclude[read, query.rollout_index % group_size] = True
    return exclude
