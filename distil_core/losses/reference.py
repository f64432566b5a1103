"""Losses for DistIL and the baselines it is measured against (docs/guide.md, "Methods").

Reference implementations on full logits: plain tensors in, a scalar out. Shapes: logits
``[B, T, V]``; tokens and mask ``[B, T]``, where position t's logits predict ``tokens[:, t]``
(the caller has already shifted). The mask is 0/1. Every loss is a token mean over the mask,
and every expert (teacher) quantity is detached inside the function.

DistIL, one function per way the expert can answer:
    distil_loss            dense expert distribution
    distil_loss_topk       the expert's top-k log-probs plus one tail bucket
    distil_loss_sampled    tokens sampled from the expert
    sequence_ce_loss       an expert continuation, re-tokenised for the student
They share the surrogate of :mod:`distil_core.losses.credit` (future cost, group baseline and
success term), which turns their per-token CE into credit.
Baselines:
    generalized_jsd, generalized_jsd_topk    GKD / SDPO / OPSD family
    reverse_kl_sampled                       on-policy distillation, sampled-token reverse KL
    grpo_loss                                GRPO, BNPO, Dr. GRPO, DAPO (advantages: credit)
Helpers: token_logprobs and the per-token pieces the chunked losses share.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from distil_core.losses.credit import check_gamma, check_normalizer, credit_inputs, discounted_future_sum, distil_surrogate, log1mexp

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


# ---------------------------------------------------------------------------- shared pieces


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log p_t(tokens_t) = log_softmax(logits)[..., tokens_t], shape ``[B, T]``.

    Negative ids (the -100 "ignore" label) are read as id 0; such positions must be masked out.
    """
    return token_logprobs_from(F.log_softmax(logits, dim=-1), tokens)


# ------------------------------------------------------------------------ DistIL loss paths


def distil_loss(
    student_logits: Tensor, teacher_logits: Tensor, tokens: Tensor, mask: Tensor,
    *,
    future_credit: bool = True,
    future_cost: str = "kl",
    stop_credit: str = "full",
    eos_id: Optional[int] = None,
    credit_floor: float = 0.0,
    baseline: str = "none",
    gamma: float = 1.0,
    group_size: Optional[int] = None,
    **options,
) -> Tensor:
    """DistIL with a dense expert: CE_t = -Σ_a q_t(a) log p_t(a), q = softmax(teacher_logits).

    ``future_cost``: the per-token cost the future credit propagates — "kl" (KL(q_t‖p_t) =
    CE_t - H(q_t): only disagreement costs, so p = q is a fixed point) or "ce" (CE_t itself,
    which also rewards reaching states where the expert is confident, and stopping early).
    ``stop_credit``: "full" (the score is log p_t(y_t)) or "local" (the future credit never
    moves p_t(EOS); needs ``eos_id``). ``credit_floor`` τ > 0: the future credit moves only
    tokens the student gives at least τ (:func:`~distil_core.losses.credit.support_score`). Further ``options`` (``baseline_exclude``, ``rewards``,
    ``reward_weight``, ``response_mask``, ``normalizer``) and the rest are those of
    :func:`distil_surrogate`.
    """
    student_logprobs = F.log_softmax(student_logits, dim=-1)
    teacher_logprobs = F.log_softmax(teacher_logits.detach().to(student_logprobs.dtype), dim=-1)
    teacher_probs = teacher_logprobs.exp()
    token_ce = cross_entropy(teacher_probs, student_logprobs)
    entropy = cross_entropy(teacher_probs, teacher_logprobs)
    return _distil(student_logprobs, token_ce, entropy, tokens, mask, future_credit=future_credit,
                   future_cost=future_cost, stop_credit=stop_credit, eos_id=eos_id,
                   credit_floor=credit_floor, baseline=baseline, gamma=gamma, group_size=group_size, **options)


def distil_loss_topk(
    student_logits: Tensor, topk_ids: Tensor, topk_logprobs: Tensor,
    tokens: Tensor, mask: Tensor,
    *,
    future_credit: bool = True,
    future_cost: str = "kl",
    stop_credit: str = "full",
    eos_id: Optional[int] = None,
    credit_floor: float = 0.0,
    baseline: str = "none",
    gamma: float = 1.0,
    group_size: Optional[int] = None,
    **options,
) -> Tensor:
    """DistIL with a top-k expert: CE_t over k+1 buckets, the expert's top-k ids and one tail.

    CE_t = -Σ_{j≤k} q_t(a_j) log p_t(a_j) - q_t(tail) log p_t(tail), where q_t(tail) =
    1 - Σ_j q_t(a_j) and p_t(tail) = 1 - Σ_j p_t(a_j) over the same ids ``topk_ids`` ``[B,T,k]``.
    The "kl" future cost is KL between the same k+1 buckets. With k = V the tail carries no
    mass and this equals :func:`distil_loss`. Options as in :func:`distil_loss`.
    """
    teacher_buckets = with_tail(topk_logprobs.detach())
    student_logprobs = F.log_softmax(student_logits, dim=-1)
    student_buckets = with_tail(student_logprobs.gather(-1, topk_ids))
    teacher_buckets = teacher_buckets.to(student_buckets.dtype)
    teacher_probs = teacher_buckets.exp()
    token_ce = cross_entropy(teacher_probs, student_buckets)
    entropy = cross_entropy(teacher_probs, teacher_buckets)
    return _distil(student_logprobs, token_ce, entropy, tokens, mask, future_credit=future_credit,
                   future_cost=future_cost, stop_credit=stop_credit, eos_id=eos_id,
                   credit_floor=credit_floor, baseline=baseline, gamma=gamma, group_size=group_size, **options)


def distil_loss_sampled(
    student_logits: Tensor, expert_samples: Tensor, tokens: Tensor, mask: Tensor,
    *,
    future_credit: bool = True,
    future_cost: str = "ce",
    stop_credit: str = "full",
    eos_id: Optional[int] = None,
    credit_floor: float = 0.0,
    baseline: str = "none",
    gamma: float = 1.0,
    group_size: Optional[int] = None,
    **options,
) -> Tensor:
    """DistIL with a sampling expert: CE_t ≈ mean over samples a ~ q_t of -log p_t(a).

    ``expert_samples`` ``[B, T, m]`` holds m ids drawn from q_t at each student state; negative
    ids mean "no sample" and are ignored. The estimate is unbiased for CE(q_t, p_t), and so is
    the future credit built from it. A position without a valid sample adds no CE term but
    still counts as a token (its future-credit term remains). Samples carry no log q, so H(q)
    and with it the "kl" future cost cannot be formed: ``future_cost`` must be "ce" (or turn
    ``future_credit`` off). Options as in :func:`distil_loss`.
    """
    if future_credit and future_cost == "kl":
        raise ValueError("future_cost='kl' needs the expert's log-probs (KL = CE - H(q)); an expert "
                         "that only samples tokens gives neither. Use future_cost='ce', or an expert "
                         "with dense or top-k access")
    student_logprobs = F.log_softmax(student_logits, dim=-1)
    valid = expert_samples >= 0
    sample_logprobs = student_logprobs.gather(-1, expert_samples.clamp(min=0))
    n_valid = valid.sum(-1).clamp(min=1).to(student_logprobs.dtype)
    token_ce = -torch.where(valid, sample_logprobs, 0.0).sum(-1) / n_valid
    return _distil(student_logprobs, token_ce, None, tokens, mask, future_credit=future_credit,
                   future_cost=future_cost, stop_credit=stop_credit, eos_id=eos_id,
                   credit_floor=credit_floor, baseline=baseline, gamma=gamma, group_size=group_size, **options)


def _distil(student_logprobs, token_ce, entropy, tokens, mask, *, future_credit, future_cost, stop_credit,
            eos_id, credit_floor, **rest) -> Tensor:
    pieces = {}
    if future_credit:
        pieces = credit_inputs(student_logprobs, token_ce, entropy, tokens, future_cost=future_cost,
                               stop_credit=stop_credit, eos_id=eos_id, credit_floor=credit_floor)
    return distil_surrogate(token_ce, token_logprobs_from(student_logprobs, tokens), mask, future_credit=future_credit,
                            **pieces, **rest)


def temper_topk(topk_logprobs: Tensor, temperature: float) -> Tensor:
    """An expert's top-k log-probs at ``temperature``, the tail treated as one more token.

    log q'_j = log q_j / τ - logsumexp over the k ids and the tail bucket of log q / τ. Exact
    when the ids cover the vocabulary; otherwise the tail's inner spread is unknown and it is
    tempered as a single outcome. Returned without the tail (it stays implicit).
    """
    if temperature == 1.0:
        return topk_logprobs
    buckets = with_tail(topk_logprobs.detach())
    # a tail at with_tail's floor (~eps) is no mass: tempering would inflate the floor itself
    floor = math.log(4 * torch.finfo(buckets.dtype).eps)
    tail = buckets[..., -1:]
    buckets = torch.cat([buckets[..., :-1], torch.where(tail <= floor, -math.inf, tail)], dim=-1) / temperature
    return (buckets - torch.logsumexp(buckets, dim=-1, keepdim=True))[..., :-1]


def sequence_ce_loss(student_logits: Tensor, target_tokens: Tensor, mask: Tensor) -> Tensor:
    """Text-level expert: mean over masked tokens of -log p_t(target_t).

    ``target_tokens`` is the expert's continuation re-tokenised with the student's tokenizer,
    laid out so position t predicts ``target_tokens[:, t]``.
    """
    return _masked_token_mean(-token_logprobs(student_logits, target_tokens), mask)


# ------------------------------------------------------------------------------- baselines


def generalized_jsd(student_logits: Tensor, teacher_logits: Tensor, mask: Optional[Tensor] = None,
                    *, beta: float = 0.5, temperature: float = 1.0) -> Tensor:
    """Generalised JSD, token mean: β·KL(q‖M) + (1-β)·KL(p‖M), M = (1-β)p + βq.

    p = softmax(student_logits / τ), q = softmax(teacher_logits / τ). β = 0 is the forward
    KL(q‖p) and β = 1 the reverse KL(p‖q), both computed directly. ``mask=None`` averages
    over every token.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    student_logprobs = F.log_softmax(student_logits / temperature, dim=-1)
    teacher_logprobs = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    per_token = generalized_jsd_per_token(student_logprobs, teacher_logprobs, beta)
    return _masked_token_mean(per_token, _default_mask(mask, per_token))


def generalized_jsd_topk(student_logits: Tensor, topk_ids: Tensor, topk_logprobs: Tensor,
                         mask: Optional[Tensor] = None, *, beta: float = 0.5,
                         temperature: float = 1.0) -> Tensor:
    """:func:`generalized_jsd` over the k+1 buckets of :func:`distil_loss_topk`.

    Both sides at ``temperature`` τ, as the dense loss: p = softmax(student_logits / τ) on the
    buckets, and the expert's buckets tempered by :func:`temper_topk`.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    teacher_buckets = with_tail(temper_topk(topk_logprobs.detach(), temperature))
    student_logprobs = F.log_softmax(student_logits / temperature, dim=-1)
    student_buckets = with_tail(student_logprobs.gather(-1, topk_ids))
    per_token = generalized_jsd_per_token(student_buckets, teacher_buckets, beta)
    return _masked_token_mean(per_token, _default_mask(mask, per_token))


def reverse_kl_sampled(student_logprobs: Tensor, teacher_logprobs: Tensor, mask: Tensor, *,
                       gamma: float = 0.0) -> Tensor:
    """On-policy distillation: mean over masked tokens of sg(R_t) · log p_t(y_t).

    R_t = Σ_{i≥t, mask_i} γ^(i-t) (log p_i(y_i) - log q_i(y_i)): REINFORCE with per-token
    reward log q - log p. γ = 0 keeps only i = t. Inputs are log-probs ``[B, T]`` of the
    sampled tokens.
    """
    check_gamma(gamma)
    keep = mask.bool()
    log_ratio = torch.where(keep, (student_logprobs - teacher_logprobs).detach(), 0.0)
    cost = log_ratio
    if gamma > 0:
        cost = log_ratio + gamma * discounted_future_sum(log_ratio, mask, gamma)
    return _masked_token_mean(cost * student_logprobs, mask)


def grpo_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *,
              eps_low: float = 0.2, eps_high: float = 0.2, loss_type: str = "dapo",
              normalizer: Union[float, Tensor, None] = None,
              max_completion_length: Optional[int] = None) -> Tensor:
    """Clipped policy gradient: per token -min(ρA, clip(ρ, 1-ε_low, 1+ε_high)·A).

    ρ = exp(logprobs - sg(old_logprobs)); ``advantages`` is ``[B]`` (one per sequence) or
    ``[B, T]``. Aggregation by ``loss_type``: "grpo" mean per sequence, then over sequences
    with at least one token; "bnpo" token mean of this micro-batch; "dr_grpo" sum / (B·L), L =
    ``max_completion_length`` — a constant, the configured generation limit, so micro-batches
    with different longest responses weigh their tokens alike (L = mask.shape[1] when None);
    "dapo" sum / ``normalizer``, the token count of the whole accumulated batch (this
    micro-batch's count when None).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    if eps_high <= -1:
        raise ValueError(f"eps_high must be above -1 (the clip's upper end 1 + eps_high is a ratio), got {eps_high}")
    check_normalizer(normalizer)
    advantages = advantages.detach()
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    keep = mask.bool()
    # min(ρA, clip(ρ)A) is A·min(ρ, 1+ε_high) for A ≥ 0 and A·max(ρ, 1-ε_low) for A < 0. The cap of
    # the first is taken on log ρ, so a ratio past exp's range (old log-probs far below the new) is
    # never formed where the clip holds: inf · 0 would make the value or the gradient NaN there
    log_ratio = torch.where(keep, logprobs - old_logprobs.detach(), 0.0)
    gains = advantages >= 0
    ratio = torch.exp(torch.where(gains, log_ratio.clamp(max=math.log1p(eps_high)), log_ratio))
    ratio = torch.where(gains, ratio, ratio.clamp(min=1 - eps_low))
    per_token = -ratio * advantages

    if loss_type == "bnpo" or (loss_type == "dapo" and normalizer is None):
        return _masked_token_mean(per_token, mask)
    masked = torch.where(keep, per_token, 0.0)
    if loss_type == "dapo":
        return masked.sum() / normalizer
    if loss_type == "dr_grpo":
        length = mask.shape[1] if max_completion_length is None else max_completion_length
        return masked.sum() / (mask.shape[0] * length)
    tokens_per_row = keep.sum(-1)
    row_means = masked.sum(-1) / tokens_per_row.clamp(min=1)
    nonempty = tokens_per_row > 0
    return torch.where(nonempty, row_means, 0.0).sum() / nonempty.sum().clamp(min=1)


# ------------------------------------------------------- pieces shared with the chunked losses


def _masked_token_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    """Σ mask·x / Σ mask; with an all-zero mask, a zero that keeps its graph."""
    keep = mask.bool()
    # where, not multiplication: padding positions may hold inf, and 0 · inf is NaN
    total = torch.where(keep, per_token, 0.0).sum()
    return total / keep.sum().clamp(min=1).to(per_token.dtype)


def _default_mask(mask: Optional[Tensor], per_token: Tensor) -> Tensor:
    return torch.ones_like(per_token, dtype=torch.bool) if mask is None else mask


def token_logprobs_from(logprobs: Tensor, ids: Tensor) -> Tensor:
    return logprobs.gather(-1, ids.clamp(min=0).unsqueeze(-1)).squeeze(-1)


def cross_entropy(target_probs: Tensor, logprobs: Tensor) -> Tensor:
    """-Σ_a target(a) log p(a), taking 0 · log 0 as 0 (a bucket with no expert mass)."""
    return -torch.where(target_probs > 0, target_probs * logprobs, 0.0).sum(-1)


def _kl(logprobs_a: Tensor, logprobs_b: Tensor) -> Tensor:
    """KL(a‖b) = Σ a (log a - log b), taking 0 · log 0 as 0."""
    probs_a = logprobs_a.exp()
    support = probs_a > 0
    # the difference is zeroed off a's support too: there it may be -inf or NaN (a masked
    # vocabulary entry, log a = -inf), and 0 · it would send NaN back into a's gradient
    log_ratio = torch.where(support, logprobs_a - logprobs_b, 0.0)
    return torch.where(support, probs_a * log_ratio, 0.0).sum(-1)


def generalized_jsd_per_token(student_logprobs: Tensor, teacher_logprobs: Tensor,
                               beta: float) -> Tensor:
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    # the endpoints skip the mixture: log(0) would enter through log(beta) or log(1 - beta)
    if beta == 0.0:
        return _kl(teacher_logprobs, student_logprobs)
    if beta == 1.0:
        return _kl(student_logprobs, teacher_logprobs)
    # where neither side has mass (a vocabulary both mask) M is never read, but logsumexp of two
    # -inf would send NaN back: give those entries any finite value
    neither = torch.isneginf(student_logprobs) & torch.isneginf(teacher_logprobs)
    mixture = torch.logsumexp(torch.stack([torch.where(neither, 0.0, student_logprobs) + math.log(1 - beta),
                                           torch.where(neither, 0.0, teacher_logprobs) + math.log(beta)]), dim=0)
    return beta * _kl(teacher_logprobs, mixture) + (1 - beta) * _kl(student_logprobs, mixture)


def with_tail(logprobs_on_ids: Tensor) -> Tensor:
    """Append the tail bucket log(1 - Σ exp(logprobs_on_ids)) as entry k+1 of the last dim.

    The covered mass is clamped to at most exp(-eps) ≈ 1 - eps (eps = the dtype's machine
    epsilon): when the ids cover (almost) the whole vocabulary it rounds to 1 or above, and the
    tail's log would be -inf or NaN. A clamped tail has mass ~eps, so the loss moves by
    O(eps · log eps), and no gradient flows back through a clamped value.
    """
    eps = torch.finfo(logprobs_on_ids.dtype).eps
    covered = torch.logsumexp(logprobs_on_ids, dim=-1, keepdim=True).clamp(max=-eps)
    return torch.cat([logprobs_on_ids, log1mexp(covered)], dim=-1)


def ce_kl_per_token(student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    """CE(q, p) and KL(q‖p) per position, p = softmax(student), q = softmax(teacher); detached."""
    log_p = F.log_softmax(student_logits.detach(), dim=-1)
    log_q = F.log_softmax(teacher_logits.detach(), dim=-1)
    q = log_q.exp()
    return -(q * log_p).sum(-1), (q * (log_q - log_p)).sum(-1)


def ce_kl_topk_per_token(student_logits: Tensor, topk_ids: Tensor, topk_logprobs: Tensor) -> tuple[Tensor, Tensor]:
    """CE(q, p) and KL(q‖p) per position over the k+1 buckets the top-k losses learn on: the
    expert's k ids, and one tail bucket holding the rest of each side's mass (:func:`with_tail`).
    All a top-k expert's signal can say about the gap; equal to :func:`ce_kl_per_token` when the
    ids cover the vocabulary. Detached."""
    log_p = with_tail(F.log_softmax(student_logits.detach(), dim=-1).gather(-1, topk_ids))
    log_q = with_tail(topk_logprobs.detach().to(log_p.dtype))
    return cross_entropy(log_q.exp(), log_p), _kl(log_q, log_p)


def topk_token_logprobs(ids: Tensor, lps: Tensor, tokens: Tensor) -> Tensor:
    """The expert's log-prob of each sampled token; outside the top-k, the tail's log-mass (an upper bound)."""
    hit = ids == tokens.unsqueeze(-1)
    in_topk = (lps.masked_fill(~hit, -1e4)).max(dim=-1).values
    tail = torch.log1p(-lps.exp().sum(-1).clamp(max=1 - 1e-6))
    return torch.where(hit.any(-1), in_topk, tail)


