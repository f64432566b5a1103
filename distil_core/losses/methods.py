"""One micro-batch's loss for each method, from student logits and the expert's signals.

The losses themselves live in :mod:`distil_core.losses.reference`; this module lays the expert's
per-rollout signals out as batch tensors, picks the loss path from the expert's access level,
and returns the diagnostics the trainer logs (CE and KL to the expert).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from distil_core.losses import reference as losses
from distil_core.config import LossConfig
from distil_core.errors import ConfigError
from distil_core.types import ExpertSignal

DISTILLATION = ("distil", "distil_local", "jsd", "reverse_kl")


@dataclass
class ExpertBatch:
    """Expert signals laid out like the student's ``[B, T]`` response tensors."""

    access: str
    rows: Tensor  # [B] 1 where the row has a usable signal
    logits: Optional[Tensor] = None  # dense  [B, T, V]
    topk_ids: Optional[Tensor] = None  # topk   [B, T, k]
    topk_logprobs: Optional[Tensor] = None
    sample_ids: Optional[Tensor] = None  # sampled [B, T, m]
    hidden: Optional[Tensor] = None  # hidden [B, T, H], with head = (weight [V, H], bias)
    head: Optional[tuple] = None

    def dense_logits(self) -> Tensor:
        """The expert's [B, T, V] logits (projected from hidden states when that is what it sent)."""
        if self.access == "hidden":
            weight, bias = self.head
            with torch.no_grad():
                return F.linear(self.hidden, weight, bias).float()
        return self.logits


@dataclass
class LossOutput:
    loss: Tensor
    stats: dict[str, float] = field(default_factory=dict)


def stack_signals(signals: Sequence[Optional[ExpertSignal]], width: int, vocab: int, device) -> ExpertBatch:
    """Pad per-rollout signals (None = no signal for that row) to ``[B, T, ...]``."""
    usable = [s for s in signals if s is not None and s.ok]
    if not usable:  # only a success term reads these rows: no expert tensors to lay out
        return ExpertBatch("none", torch.zeros(len(signals), device=device))
    access = usable[0].access
    if any(s.access != access for s in usable):
        raise ConfigError("the expert returned signals of mixed access levels in one batch")
    rows = torch.tensor([1.0 if s is not None and s.ok else 0.0 for s in signals], device=device)
    batch = len(signals)

    def fill(attr: str, shape_tail: tuple[int, ...], dtype, pad) -> Tensor:
        out = torch.full((batch, width, *shape_tail), pad, dtype=dtype, device=device)
        for b, s in enumerate(signals):
            if s is not None and s.ok:
                value = torch.as_tensor(getattr(s, attr), device=device)
                out[b, : value.shape[0]] = value[:width].to(dtype)
        return out

    if access == "dense":
        return ExpertBatch(access, rows, logits=fill("logits", (vocab,), torch.float32, 0.0))
    if access == "hidden":
        head = usable[0].head
        if any(s.head[0] is not head[0] for s in usable):
            raise ConfigError("the expert's hidden-state signals in one batch name different output projections")
        width_h = usable[0].hidden.shape[-1]
        dtype = usable[0].hidden.dtype
        return ExpertBatch(access, rows, hidden=fill("hidden", (width_h,), dtype, 0.0), head=head)
    if access == "topk":
        k = usable[0].topk_ids.shape[-1]
        return ExpertBatch(
            access,
            rows,
            topk_ids=fill("topk_ids", (k,), torch.long, 0),
            topk_logprobs=fill("topk_logprobs", (k,), torch.float32, -1e4),
        )
    if access == "sampled":
        m = usable[0].sample_ids.shape[-1]
        return ExpertBatch(access, rows, sample_ids=fill("sample_ids", (m,), torch.long, -100))
    raise ConfigError("a text-level expert signal must go through the sequence path, not stack_signals")


@dataclass
class RowContext:
    """What the future credit needs beyond the logits: the micro-batch's rows and their groups.

    ``rewards`` ``[B]`` feed ``loss.reward_weight``; ``baseline_exclude`` ``[B, group_size]``
    marks, per row, the siblings whose expert context read that row (left out of its
    ``group_loo`` baseline); ``eos_id`` is what ``loss.stop_credit: local`` holds fixed.
    """

    group_size: int
    eos_id: Optional[int] = None
    rewards: Optional[Tensor] = None
    baseline_exclude: Optional[Tensor] = None


def distillation_loss(
    method: str,
    cfg: LossConfig,
    student_logits: Tensor,
    tokens: Tensor,
    mask: Tensor,
    expert: ExpertBatch,
    rows: RowContext,
) -> LossOutput:
    """Token-mean loss over rows that have a signal; stats are detached floats.

    ``loss.expert_temperature`` is applied to the expert's distribution here, before any loss,
    so every distillation method learns towards the same q.
    """
    response_mask = mask
    mask = mask * expert.rows.unsqueeze(1).to(mask.dtype)
    student_logits_f = student_logits.float()
    expert = tempered(expert, cfg.expert_temperature)
    credit = _credit(method, cfg, rows, response_mask)
    if expert.access == "none":  # every row masked out of the expert terms: any target will do
        expert = ExpertBatch("dense", expert.rows, logits=student_logits_f.detach())
    if expert.access in ("dense", "hidden"):
        teacher = expert.dense_logits()
        if method in ("distil", "distil_local"):
            loss = losses.distil_loss(student_logits_f, teacher, tokens, mask, **credit)
        elif method == "jsd":
            loss = losses.generalized_jsd(student_logits_f, teacher, mask, beta=cfg.beta, temperature=cfg.temperature)
        else:
            teacher_lp = losses.token_logprobs(teacher, tokens)
            student_lp = losses.token_logprobs(student_logits_f, tokens)
            loss = losses.reverse_kl_sampled(student_lp, teacher_lp, mask, gamma=cfg.reverse_kl_gamma)
        stats = _dense_stats(student_logits_f.detach(), teacher, mask)
    elif expert.access == "topk":
        ids, lps = expert.topk_ids, expert.topk_logprobs
        if method in ("distil", "distil_local"):
            loss = losses.distil_loss_topk(student_logits_f, ids, lps, tokens, mask, **credit)
        elif method == "jsd":
            loss = losses.generalized_jsd_topk(student_logits_f, ids, lps, mask, beta=cfg.beta,
                                               temperature=cfg.temperature)
        else:
            teacher_lp = losses.topk_token_logprobs(ids, lps, tokens)
            student_lp = losses.token_logprobs(student_logits_f, tokens)
            loss = losses.reverse_kl_sampled(student_lp, teacher_lp, mask, gamma=cfg.reverse_kl_gamma)
        stats = {}
    elif expert.access == "sampled":
        if method not in ("distil", "distil_local"):
            raise ConfigError(f"method {method!r} needs expert log-probs; this expert only samples tokens")
        if credit["future_credit"] and cfg.future_cost == "kl":
            raise ConfigError("loss.future_cost: kl needs the expert's log-probs, and this expert only samples "
                              "tokens. Set loss.future_cost: ce (or use an expert with dense or top-k access)")
        loss = losses.distil_loss_sampled(student_logits_f, expert.sample_ids, tokens, mask, **credit)
        stats = {}
    else:
        raise ConfigError(f"unknown expert access {expert.access!r}")
    stats["signal_tokens"] = float(mask.sum())
    return LossOutput(loss, stats)


def chunked_distillation_loss(
    method: str,
    cfg: LossConfig,
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    tokens: Tensor,
    mask: Tensor,
    expert: ExpertBatch,
    rows: RowContext,
) -> LossOutput:
    """:func:`distillation_loss` from the student's hidden states and output projection, the
    logits made ``cfg.chunk_size`` positions at a time (:mod:`distil_core.losses.chunked`)."""
    from distil_core.losses.chunked import ExpertHead, ExpertTopK, chunked_loss

    response_mask = mask
    mask = mask * expert.rows.unsqueeze(1).to(mask.dtype)
    expert = tempered(expert, cfg.expert_temperature)
    if expert.access == "none":  # every row masked out of the expert terms: the student's own head
        expert = ExpertBatch("hidden", expert.rows, hidden=hidden.detach(), head=(weight.detach(), bias))
    if expert.access == "topk":
        target = ExpertTopK(expert.topk_ids, expert.topk_logprobs)
    elif expert.access == "hidden":
        target = ExpertHead(expert.hidden, *expert.head)
    elif expert.access == "dense":
        target = expert.logits
    else:
        raise ConfigError(f"the chunked losses take dense, hidden or top-k experts, not {expert.access!r}")
    stats: dict[str, float] = {}
    loss = chunked_loss(
        method, hidden, weight, tokens, mask, target, bias=bias, chunk_size=cfg.chunk_size,
        beta=cfg.beta, temperature=cfg.temperature, reverse_kl_gamma=cfg.reverse_kl_gamma, stats=stats,
        **_credit(method, cfg, rows, response_mask),
    )
    stats["signal_tokens"] = float(mask.sum())
    return LossOutput(loss, stats)


def _credit(method: str, cfg: LossConfig, rows: RowContext, response_mask: Tensor) -> dict:
    """DistIL's future-credit options (only ``distil`` has future credit)."""
    credit = dict(
        future_credit=(method == "distil") and cfg.future_credit,
        future_cost=cfg.future_cost,
        stop_credit=cfg.stop_credit,
        eos_id=rows.eos_id,
        baseline=cfg.baseline,
        gamma=cfg.gamma,
        group_size=rows.group_size if rows.group_size > 1 else None,
        baseline_exclude=rows.baseline_exclude,
    )
    if rows.group_size < 2:  # one rollout per prompt: no sibling to compare with
        credit.update(baseline="none", baseline_exclude=None)
    elif credit["future_credit"] and cfg.reward_weight > 0:
        credit.update(rewards=rows.rewards, reward_weight=cfg.reward_weight, response_mask=response_mask)
    return credit


def tempered(expert: ExpertBatch, temperature: float) -> ExpertBatch:
    """The expert's signal at ``temperature`` τ: q ∝ exp(z / τ) for every access level that has logits.

    Dense logits are divided by τ; hidden states keep their values and the output projection is
    divided instead; top-k log-probs go through :func:`losses.temper_topk`. Sampled tokens carry
    no distribution to temper.
    """
    if temperature == 1.0 or expert.access == "none":
        return expert
    if expert.access == "dense":
        return replace(expert, logits=expert.logits / temperature)
    if expert.access == "hidden":
        weight, bias = expert.head
        return replace(expert, head=(weight / temperature, None if bias is None else bias / temperature))
    if expert.access == "topk":
        return replace(expert, topk_logprobs=losses.temper_topk(expert.topk_logprobs, temperature))
    raise ConfigError(f"loss.expert_temperature needs an expert with log-probs; a {expert.access!r} expert "
                      "sends none. Set loss.expert_temperature: 1.0")


def _dense_stats(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor) -> dict[str, float]:
    ce, kl = losses.ce_kl_per_token(student_logits, teacher_logits)
    n = mask.sum().clamp(min=1)
    return {"ce_to_expert": float((ce * mask).sum() / n), "kl_to_expert": float((kl * mask).sum() / n)}


def grpo_micro_loss(
    cfg: LossConfig, student_logits: Tensor, tokens: Tensor, mask: Tensor, advantages: Tensor,
    old_logprobs: Optional[Tensor], normalizer: Optional[float], max_completion_length: Optional[int] = None,
) -> LossOutput:
    logprobs = losses.token_logprobs(student_logits.float(), tokens)
    old = logprobs.detach() if old_logprobs is None else old_logprobs
    loss = losses.grpo_loss(
        logprobs, old, advantages, mask,
        eps_low=cfg.eps_low, eps_high=cfg.eps_high, loss_type=cfg.loss_type, normalizer=normalizer,
        max_completion_length=max_completion_length,
    )
    return LossOutput(loss, {"signal_tokens": float(mask.sum())})
