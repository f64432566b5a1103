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
    distil_surrogate       the surrogate they share; future_cost is its G_t
    group_baseline         the masked leave-one-out baseline b_t of ``baseline="group_loo"``
Baselines:
    generalized_jsd, generalized_jsd_topk    GKD / SDPO / OPSD family
    reverse_kl_sampled                       on-policy distillation, sampled-token reverse KL
    grpo_loss, group_advantages              GRPO, BNPO, Dr. GRPO, DAPO
Helpers: token_logprobs, topk_with_tail.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

BASELINES = ("none", "group_loo")
FUTURE_COSTS = ("kl", "ce")
STOP_CREDITS = ("full", "local")
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
ADVANTAGE_SCALES = ("group", "batch", "none")


# ---------------------------------------------------------------------------- shared pieces


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log p_t(tokens_t) = log_softmax(logits)[..., tokens_t], shape ``[B, T]``.

    Negative ids (the -100 "ignore" label) are read as id 0; such positions must be masked out.
    """
    return token_logprobs_from(F.log_softmax(logits, dim=-1), tokens)


def topk_with_tail(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(ids, log-probs) of the k most likely tokens of softmax(logits), each ``[..., k]``.

    The tail bucket is implicit (1 - Σ exp(log-probs)); the top-k losses add it. This is what an
    expert with dense logits sends when it can only afford top-k.
    """
    logprobs, ids = torch.topk(F.log_softmax(logits, dim=-1), k, dim=-1)
    return ids, logprobs


def future_cost(token_cost: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """G_t = Σ_{i>t, mask_i} γ^(i-t-1) · c_i within each row, detached; 0 where masked out.

    ``token_cost`` is the per-token cost c_i: KL(q_i‖p_i) or CE(q_i, p_i) (``future_cost``).
    The discount counts positions, so a masked-out gap still ages the cost behind it.
    """
    _check_gamma(gamma)
    return _discounted_future_sum(token_cost.detach(), mask, gamma)


def group_baseline(values: Tensor, mask: Tensor, group_size: int,
                   exclude: Optional[Tensor] = None) -> Tensor:
    """b_{i,t} = Σ_{j} w_ij m_{j,t} v_{j,t} / Σ_{j} w_ij m_{j,t}, 0 where no sibling qualifies.

    Rows form contiguous groups of ``group_size`` rollouts of one prompt; w_ij = 1 for the
    other rows j of i's group, except where ``exclude`` ``[B, group_size]`` is True (row i
    must not read sibling j: its expert context used rollout i, so its cost depends on y_i).
    The mean is over siblings that still contribute at t (``mask``): a sibling that ended, or
    that has no expert signal, is not a zero that drags the baseline down. Detached.

    Unbiased when the siblings' costs and masks do not depend on y_i. Leaving out the readers
    removes the direct dependence; which sibling a context picks as its demonstration (and so
    which are left out) can still depend on whether rollout i passed — a selection effect this
    does not remove.
    """
    batch, length = values.shape
    groups = batch // group_size
    keep = mask.bool().view(groups, group_size, length).to(values.dtype)
    grouped = torch.where(mask.bool(), values.detach(), 0.0).view(groups, group_size, length)
    weights = 1.0 - torch.eye(group_size, dtype=values.dtype, device=values.device)
    weights = weights.expand(groups, group_size, group_size)
    if exclude is not None:
        allowed = ~exclude.to(device=values.device, dtype=torch.bool).view(groups, group_size, group_size)
        weights = weights * allowed.to(values.dtype)
    total = torch.einsum("gij,gjt->git", weights, grouped)
    count = torch.einsum("gij,gjt->git", weights, keep)
    return torch.where(count > 0, total / count.clamp(min=1), 0.0).reshape(batch, length)


def leave_one_out_rewards(rewards: Tensor, group_size: int) -> Tensor:
    """r_i - mean of the other rewards of i's contiguous group, ``[B]``."""
    grouped = rewards.detach().reshape(-1, group_size)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others).reshape(-1)


def stop_score(student_logprobs: Tensor, tokens: Tensor, eos_id: int) -> tuple[Tensor, Tensor]:
    """(log(1 - p_t(EOS)), y_t == EOS) per position, for ``stop_credit="local"``.

    log p_t(y_t) - log(1 - p_t(EOS)) is the log-prob of y_t under the student's content
    distribution given that it does not stop; its score has zero mean under the student, so
    future credit through it moves *what* is written and never *when* the student stops.
    """
    eos = student_logprobs[..., eos_id].clamp(max=-torch.finfo(student_logprobs.dtype).eps)
    return _log1mexp(eos), tokens == eos_id


def distil_surrogate(
    token_ce: Tensor,
    token_logprobs: Tensor,
    mask: Tensor,
    *,
    future_credit: bool = True,
    token_cost: Optional[Tensor] = None,
    continue_logprobs: Optional[Tensor] = None,
    stops: Optional[Tensor] = None,
    baseline: str = "none",
    gamma: float = 1.0,
    group_size: Optional[int] = None,
    baseline_exclude: Optional[Tensor] = None,
    rewards: Optional[Tensor] = None,
    reward_weight: float = 0.0,
    response_mask: Optional[Tensor] = None,
    normalizer: Optional[float] = None,
) -> Tensor:
    """DistIL surrogate: token mean of ℓ_t = CE_t + sg(A_t) · s_t over the masked tokens.

    ``token_ce`` ``[B, T]`` is the differentiable CE(q_t, p_t) (or an unbiased estimate of it);
    ``token_logprobs`` ``[B, T]`` is log p_t(y_t) of the sampled tokens.

    Future credit: A_t = G_t - b_t - λ(r - r̄_{-i}). G_t is :func:`future_cost` of
    ``token_cost`` (the per-token cost c_i, detached; default ``token_ce``, the CE reading).
    Averaged over rollouts y ~ π_θ, the gradient is the local term plus REINFORCE with the
    future cost (at γ = 1 with c = CE: ∇ E[Σ_t CE(q_t, p_t)] when the expert depends on the
    state alone; an expert that reads feedback about the whole rollout makes it the
    reward-to-go estimator instead). γ < 1 scales the credit for a cost i - t steps later by
    γ^(i-t-1).

    The score s_t is log p_t(y_t), or — when ``continue_logprobs`` (log(1 - p_t(EOS))) and
    ``stops`` (y_t is EOS) are given, ``stop_credit="local"`` — 1[y_t ≠ EOS] · (log p_t(y_t) -
    log(1 - p_t(EOS))): future credit then never moves the decision to stop.

    ``baseline``: "none" (b = 0) or "group_loo" (:func:`group_baseline`: the masked mean G of
    the other rollouts of the group, leaving out ``baseline_exclude``). It depends only on
    siblings, so the estimator stays unbiased as long as their costs do not depend on y_i (see
    :func:`group_baseline` for what remains). ``rewards`` ``[B]`` with ``reward_weight`` λ > 0
    add a terminal success term centred on the siblings' mean reward; it applies on
    ``response_mask`` (default ``mask``), so a rollout without an expert signal — a lone
    success — still gets it. ``future_credit=False`` keeps only the local term (the
    "distil_local" ablation, whose gradient on the logits is p_t - q_t per token).

    The result is Σ ℓ / (token count of ``mask`` ∪ ``response_mask``), or Σ ℓ / ``normalizer``.
    """
    if future_credit:
        _check_baseline(baseline, group_size, token_ce.shape[0])
    rewarded = future_credit and reward_weight > 0
    if rewarded and (rewards is None or group_size is None or group_size < 2):
        raise ValueError("reward_weight > 0 needs rewards [B] and group_size >= 2 (rewards are "
                         "centred on the other rollouts of the same prompt)")
    keep = mask.bool()
    per_token = torch.where(keep, token_ce, 0.0)
    counted = keep
    if future_credit:
        cost = future_cost(token_ce if token_cost is None else token_cost, mask, gamma)
        if baseline == "group_loo":
            cost = cost - group_baseline(cost, mask, group_size, baseline_exclude)
        cost = torch.where(keep, cost, 0.0)
        if rewarded:
            responses = keep if response_mask is None else response_mask.bool()
            counted = keep | responses
            centred = leave_one_out_rewards(torch.as_tensor(rewards, dtype=cost.dtype, device=cost.device), group_size)
            cost = cost - reward_weight * torch.where(responses, centred[:, None], 0.0)
        score = token_logprobs
        if continue_logprobs is not None:
            score = torch.where(stops, 0.0, token_logprobs - continue_logprobs)
        per_token = per_token + torch.where(counted, cost, 0.0) * score
    total = torch.where(counted, per_token, 0.0).sum()
    if normalizer is not None:
        return total / normalizer
    return total / counted.sum().clamp(min=1).to(per_token.dtype)


# ------------------------------------------------------------------------ DistIL loss paths


def distil_loss(
    student_logits: Tensor, teacher_logits: Tensor, tokens: Tensor, mask: Tensor,
    *,
    future_credit: bool = True,
    future_cost: str = "kl",
    stop_credit: str = "full",
    eos_id: Optional[int] = None,
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
    moves p_t(EOS); needs ``eos_id``). Further ``options`` (``baseline_exclude``, ``rewards``,
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
                   baseline=baseline, gamma=gamma, group_size=group_size, **options)


def distil_loss_topk(
    student_logits: Tensor, topk_ids: Tensor, topk_logprobs: Tensor,
    tokens: Tensor, mask: Tensor,
    *,
    future_credit: bool = True,
    future_cost: str = "kl",
    stop_credit: str = "full",
    eos_id: Optional[int] = None,
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
                   baseline=baseline, gamma=gamma, group_size=group_size, **options)


def distil_loss_sampled(
    student_logits: Tensor, expert_samples: Tensor, tokens: Tensor, mask: Tensor,
    *,
    future_credit: bool = True,
    future_cost: str = "ce",
    stop_credit: str = "full",
    eos_id: Optional[int] = None,
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
                   baseline=baseline, gamma=gamma, group_size=group_size, **options)


def credit_inputs(student_logprobs: Tensor, token_ce: Tensor, entropy: Optional[Tensor], tokens: Tensor,
                  *, future_cost: str, stop_credit: str, eos_id: Optional[int]) -> dict[str, Tensor]:
    """The per-token pieces :func:`distil_surrogate` needs for ``future_cost``/``stop_credit``.

    Shared by the reference losses and the chunked ones (:mod:`distil_core.losses.chunked`), which
    call it on one chunk of positions at a time.
    """
    check_credit(future_cost, stop_credit, eos_id)
    pieces: dict[str, Tensor] = {}
    if future_cost == "kl":
        pieces["token_cost"] = token_ce.detach() - entropy
    if stop_credit == "local":
        pieces["continue_logprobs"], pieces["stops"] = stop_score(student_logprobs, tokens, eos_id)
    return pieces


def check_credit(future_cost: str, stop_credit: str, eos_id: Optional[int]) -> None:
    if future_cost not in FUTURE_COSTS:
        raise ValueError(f"unknown future_cost {future_cost!r}; choose one of {', '.join(FUTURE_COSTS)}")
    if stop_credit not in STOP_CREDITS:
        raise ValueError(f"unknown stop_credit {stop_credit!r}; choose one of {', '.join(STOP_CREDITS)}")
    if stop_credit == "local" and eos_id is None:
        raise ValueError("stop_credit='local' needs eos_id, the id of the token that ends a response")


def _distil(student_logprobs, token_ce, entropy, tokens, mask, *, future_credit, future_cost, stop_credit,
            eos_id, **rest) -> Tensor:
    pieces = {}
    if future_credit:
        pieces = credit_inputs(student_logprobs, token_ce, entropy, tokens, future_cost=future_cost,
                               stop_credit=stop_credit, eos_id=eos_id)
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
    _check_gamma(gamma)
    keep = mask.bool()
    log_ratio = torch.where(keep, (student_logprobs - teacher_logprobs).detach(), 0.0)
    cost = log_ratio
    if gamma > 0:
        cost = log_ratio + gamma * _discounted_future_sum(log_ratio, mask, gamma)
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
    advantages = advantages.detach()
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    ratio = torch.exp(logprobs - old_logprobs.detach())
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    per_token = -torch.minimum(ratio * advantages, clipped * advantages)

    if loss_type == "bnpo" or (loss_type == "dapo" and normalizer is None):
        return _masked_token_mean(per_token, mask)
    keep = mask.bool()
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


def group_advantages(rewards: Tensor, group_size: int, scale: str = "group") -> Tensor:
    """A_i = r_i - mean(r of i's group), divided by (std + 1e-4) depending on ``scale``.

    Rows form contiguous groups of ``group_size``. scale "group": the group's std; "batch":
    the std of all rewards in the batch; "none": no division. std is the unbiased (n-1)
    estimate, torch's default.
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(ADVANTAGE_SCALES)}")
    rewards = torch.as_tensor(rewards)
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())
    n = rewards.shape[0]
    if group_size < 1 or n % group_size:
        raise ValueError(f"{n} rewards cannot be split into groups of {group_size}; "
                         "pass the number of rollouts per prompt, laid out contiguously")
    if scale == "group" and group_size < 2:
        raise ValueError("scale='group' needs group_size >= 2 to estimate a std; "
                         "use scale='batch' or 'none'")
    grouped = rewards.reshape(-1, group_size)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + 1e-4)
    elif scale == "batch":
        advantages = advantages / (rewards.std() + 1e-4)
    return advantages.reshape(n)


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
    return torch.where(probs_a > 0, probs_a * (logprobs_a - logprobs_b), 0.0).sum(-1)


def generalized_jsd_per_token(student_logprobs: Tensor, teacher_logprobs: Tensor,
                               beta: float) -> Tensor:
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    # the endpoints skip the mixture: log(0) would enter through log(beta) or log(1 - beta)
    if beta == 0.0:
        return _kl(teacher_logprobs, student_logprobs)
    if beta == 1.0:
        return _kl(student_logprobs, teacher_logprobs)
    mixture = torch.logsumexp(torch.stack([student_logprobs + math.log(1 - beta),
                                           teacher_logprobs + math.log(beta)]), dim=0)
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
    return torch.cat([logprobs_on_ids, _log1mexp(covered)], dim=-1)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - e^x) for x < 0: log(-expm1(x)) near 0, log1p(-exp(x)) below -log 2.

    Each branch sees only inputs where it is finite, so torch.where passes no NaN gradient.
    """
    split = -math.log(2.0)
    near_zero = x > split
    near = torch.log(-torch.expm1(torch.where(near_zero, x, split)))
    far = torch.log1p(-torch.exp(torch.where(near_zero, split, x)))
    return torch.where(near_zero, near, far)


def _discounted_future_sum(values: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """S_t = Σ_{i>t, mask_i} γ^(i-t-1) values_i per row, 0 at masked-out positions."""
    return future_sum_with_carry(values, mask, gamma)[0]


def future_sum_with_carry(values: Tensor, mask: Tensor, gamma: float,
                          carry: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """:func:`_discounted_future_sum` of a block of columns that more columns follow.

    ``carry`` ``[B]`` is the later columns' Σ_{i≥T} γ^(i-T) v_i (default 0), so S_t also gets
    γ^(T-1-t)·carry. Returns (S masked, the carry for the block before: Σ_{i≥0} γ^i v_i with
    the later columns folded in). The chunked losses walk a sequence backwards with it.
    """
    keep = mask.bool()
    values = torch.where(keep, values, 0.0)
    carry = torch.zeros_like(values[:, 0]) if carry is None else carry
    if gamma == 1.0:
        # suffix sums shifted left by one position: exact, and one kernel on long sequences
        inclusive = values.flip(-1).cumsum(-1).flip(-1) + carry.unsqueeze(1)
        future = torch.cat([inclusive[:, 1:], carry.unsqueeze(1)], dim=1)
        running = inclusive[:, 0]
    else:
        running = carry
        columns = []
        for t in reversed(range(values.shape[1])):  # S_t = v_{t+1} + γ S_{t+1}
            columns.append(running)
            running = values[:, t] + gamma * running
        future = torch.stack(columns[::-1], dim=1)
    return torch.where(keep, future, 0.0), running


def ce_kl_per_token(student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    """CE(q, p) and KL(q‖p) per position, p = softmax(student), q = softmax(teacher); detached."""
    log_p = F.log_softmax(student_logits.detach(), dim=-1)
    log_q = F.log_softmax(teacher_logits.detach(), dim=-1)
    q = log_q.exp()
    return -(q * log_p).sum(-1), (q * (log_q - log_p)).sum(-1)


def topk_token_logprobs(ids: Tensor, lps: Tensor, tokens: Tensor) -> Tensor:
    """The expert's log-prob of each sampled token; outside the top-k, the tail's log-mass (an upper bound)."""
    hit = ids == tokens.unsqueeze(-1)
    in_topk = (lps.masked_fill(~hit, -1e4)).max(dim=-1).values
    tail = torch.log1p(-lps.exp().sum(-1).clamp(max=1 - 1e-6))
    return torch.where(hit.any(-1), in_topk, tail)


def check_future_credit(baseline: str, group_size: Optional[int], batch_size: int, gamma: float) -> None:
    """Refuse a baseline, group layout or discount the losses cannot use, saying what to pass."""
    _check_baseline(baseline, group_size, batch_size)
    _check_gamma(gamma)


def _check_gamma(gamma: float) -> None:
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")


def _check_baseline(baseline: str, group_size: Optional[int], batch_size: int) -> None:
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    if baseline != "group_loo":
        return
    if group_size is None:
        raise ValueError("baseline='group_loo' needs group_size: the number of rollouts per "
                         "prompt, laid out as contiguous rows")
    if group_size < 2:
        raise ValueError(f"baseline='group_loo' needs group_size >= 2 (got {group_size}): "
                         "each rollout needs a sibling to compare with")
    if batch_size % group_size:
        raise ValueError(f"batch of {batch_size} rows does not split into groups of "
                         f"{group_size}; keep whole prompt groups in each micro-batch")
