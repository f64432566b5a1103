"""DistIL's future credit, group baselines and rewards: what turns per-token costs into credit.

DistIL's surrogate (:func:`distil_surrogate`) is the token mean of ℓ_t = CE_t + sg(A_t) · s_t.
The advantage A_t = G_t - b_t - λ(r - r̄_{-i}) holds three pieces, each here:

* G_t, the **future cost** (:func:`future_cost`): the discounted sum over later positions of a
  per-token cost c_i — KL(q_i‖p_i) or CE(q_i, p_i). Averaged over rollouts y ~ π_θ, the
  gradient is the local term plus REINFORCE with the future cost (at γ = 1 with c = CE:
  ∇ E[Σ_t CE(q_t, p_t)] when the expert depends on the state alone; an expert that reads
  feedback about the whole rollout makes it the reward-to-go estimator instead). γ < 1 scales
  the credit for a cost i - t steps later by γ^(i-t-1). The sum is lower wherever fewer tokens
  follow, so it also credits a token for leading to a short ending the expert agrees with;
  ``reduce="mean"`` (the mean cost per later token) removes that pull on length.
* b_t, the **baseline** (:mod:`distil_core.losses.baselines`): by default the masked mean G of the other
  rollouts of the prompt, leaving out siblings whose expert context read this rollout. It
  depends only on siblings, so the estimator stays unbiased as long as their costs do not
  depend on y_i.
* λ(r - r̄_{-i}), a terminal **success term** (:func:`~distil_core.losses.baselines.centred_rewards`), centred on the
  siblings' mean reward; a rollout without an expert signal — a lone success — still gets it.

The score s_t is log p_t(y_t), or, restricted to a set S_t of tokens (:func:`support_score`),
1[y_t ∈ S_t] · (log p_t(y_t) - log p_t(S_t)): future credit (and the success term, which rides
on the same score) then reaches only the logits of the tokens in S_t. ``stop_credit="local"``
leaves EOS out of S_t, so future credit never pushes on the EOS logit; ``credit_floor`` τ > 0 also
leaves out every token the student gives less than τ, so future credit never pushes up a token
the student does not already consider — the per-token term alone moves its logit, towards the
expert. (Its probability still shifts a little with the softmax's normaliser.) GRPO's group
advantages (:func:`group_advantages`) are here too: they are the same kind of
sibling-relative credit, for a whole sequence. ``docs/algorithms.md`` derives each.

Shapes as in :mod:`distil_core.losses.reference`: ``[B, T]`` per-token tensors, rows in
contiguous groups of ``group_size`` rollouts of one prompt.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

from distil_core.losses.baselines import centred_rewards, check_baseline, check_rewarded, subtract_baseline

FUTURE_COSTS = ("kl", "ce")
FUTURE_REDUCES = ("sum", "mean")
STOP_CREDITS = ("full", "local")
ADVANTAGE_SCALES = ("group", "batch", "none")


def future_cost(token_cost: Tensor, mask: Tensor, gamma: float = 1.0, reduce: str = "sum") -> Tensor:
    """G_t = Σ_{i>t, mask_i} γ^(i-t-1) · c_i within each row, detached; 0 where masked out.

    ``token_cost`` is the per-token cost c_i: KL(q_i‖p_i) or CE(q_i, p_i) (``future_cost``).
    The discount counts positions, so a masked-out gap still ages the cost behind it.
    ``reduce="mean"`` divides by the same discounted count of the later positions
    (:func:`future_weight`): the mean cost per token ahead, which a shorter future no longer lowers.
    """
    check_gamma(gamma)
    check_reduce(reduce)
    cost = token_cost.detach()
    if reduce == "sum":
        return discounted_future_sum(cost, mask, gamma)
    # the costs and the count of later positions in one pass (one loop over positions at γ < 1)
    total, weight = discounted_future_sum(torch.cat([cost, torch.ones_like(cost)]), torch.cat([mask, mask]),
                                          gamma).chunk(2)
    return per_future_token(total, weight)


def future_weight(mask: Tensor, gamma: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """W_t = Σ_{i>t, mask_i} γ^(i-t-1): the discounted count of the positions after t, ``[B, T]``.

    The denominator of ``reduce="mean"``. It depends on the mask alone, so the chunked losses
    form it once for the whole sequence (in their compute ``dtype``) and divide each chunk's
    carried sums by their slice.
    """
    return discounted_future_sum(torch.ones(mask.shape, dtype=dtype, device=mask.device), mask, gamma)


def per_future_token(total: Tensor, weight: Tensor) -> Tensor:
    """G_t / W_t where some position follows t (W_t > 0), else 0: the last token has no future."""
    weight = weight.to(total.dtype)
    return torch.where(weight > 0, total / weight.clamp(min=torch.finfo(total.dtype).tiny), 0.0)


def check_reduce(reduce: str) -> None:
    if reduce not in FUTURE_REDUCES:
        raise ValueError(f"unknown future_reduce {reduce!r}; choose one of {', '.join(FUTURE_REDUCES)}")


def stop_score(student_logprobs: Tensor, tokens: Tensor, eos_id: int) -> tuple[Tensor, Tensor]:
    """(log(1 - p_t(EOS)), y_t == EOS) per position, for ``stop_credit="local"``.

    log p_t(y_t) - log(1 - p_t(EOS)) is the log-prob of y_t under the student's content
    distribution given that it does not stop; its score has zero mean under the student, so
    future credit through it moves *what* is written and never *when* the student stops.
    """
    eos = student_logprobs[..., eos_id].clamp(max=-torch.finfo(student_logprobs.dtype).eps)
    return log1mexp(eos), tokens == eos_id


def support_score(student_logprobs: Tensor, tokens: Tensor, floor: float,
                  eos_id: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """(log p_t(S_t), y_t ∉ S_t) per position, S_t = {a : p_t(a) ≥ ``floor``}, EOS left out when
    ``eos_id`` is given.

    Membership is decided on the detached probabilities; log p_t(S_t) keeps its gradient. The
    score log p_t(y_t) - log p_t(S_t) of a token in S_t has zero mean under the student given
    y_t ∈ S_t, so any baseline stays valid; it depends on the logits of S_t alone, so future
    credit through it re-ranks the tokens the student already gives at least ``floor`` and
    never pushes on the logit of the rest. A sampled token outside S_t (a rare one, or EOS)
    gets no future credit. Where S_t is empty (every token under the floor) no token is in it
    and the log is -inf, never read. ``floor`` must be in (0, 1).
    """
    if not 0.0 < floor < 1.0:
        raise ValueError(f"support_score: floor must be in (0, 1) (got {floor!r}); a floor of 0 is "
                         "every token (stop_score leaves out EOS alone)")
    detached = student_logprobs.detach()
    inside = detached >= math.log(floor)
    if eos_id is not None:
        inside[..., eos_id] = False
    support = torch.logsumexp(torch.where(inside, student_logprobs, -math.inf), dim=-1)
    outside = ~inside.gather(-1, tokens.clamp(min=0)[..., None])[..., 0]
    return support, outside


def distil_surrogate(
    token_ce: Tensor,
    token_logprobs: Tensor,
    mask: Tensor,
    *,
    future_credit: bool = True,
    token_cost: Optional[Tensor] = None,
    support_logprobs: Optional[Tensor] = None,
    unsupported: Optional[Tensor] = None,
    baseline: str = "none", gamma: float = 1.0,
    group_size: Optional[int] = None, baseline_exclude: Optional[Tensor] = None,
    rewards: Optional[Tensor] = None, reward_weight: float = 0.0, reward_decay: bool = False,
    response_mask: Optional[Tensor] = None,
    normalizer: Optional[float] = None,
    future_reduce: str = "sum",
) -> Tensor:
    """DistIL surrogate: token mean of ℓ_t = CE_t + sg(A_t) · s_t over the masked tokens.

    ``token_ce`` ``[B, T]`` is the differentiable CE(q_t, p_t) (or an unbiased estimate of it);
    ``token_logprobs`` ``[B, T]`` is log p_t(y_t) of the sampled tokens. G_t is the
    :func:`future_cost` of ``token_cost`` (detached; default ``token_ce``, the CE reading).
    ``support_logprobs`` (log p_t(S_t)) and ``unsupported`` (y_t ∉ S_t), from
    :func:`credit_inputs`, restrict the score to S_t (``stop_credit="local"``, ``credit_floor``).
    ``baseline``: "none", "group_loo" (leaving out ``baseline_exclude``) or "batch"
    (:mod:`~distil_core.losses.baselines`).
    ``rewards`` ``[B]`` with ``reward_weight`` λ > 0 add the success
    term on ``response_mask`` (default ``mask``), weighed by 1 - r̄ too with ``reward_decay``
    (:func:`~distil_core.losses.baselines.centred_rewards`). ``future_reduce="mean"`` makes G_t the mean
    cost per later token instead of their sum (:func:`future_cost`). ``future_credit=False`` keeps only the local
    term (the "distil_local" ablation, whose gradient on the logits is p_t - q_t per token).

    The result is Σ ℓ / (token count of ``mask`` ∪ ``response_mask``), or Σ ℓ / ``normalizer``.
    """
    check_normalizer(normalizer)
    if future_credit:
        check_baseline(baseline, group_size, token_ce.shape[0])
    rewarded = future_credit and reward_weight > 0
    if rewarded:
        check_rewarded(rewards, group_size, baseline)
    keep = mask.bool()
    per_token = torch.where(keep, token_ce, 0.0)
    counted = keep
    if future_credit:
        cost = credit_advantage(token_ce if token_cost is None else token_cost, mask, gamma=gamma,
                                baseline=baseline, group_size=group_size, baseline_exclude=baseline_exclude,
                                reduce=future_reduce)
        if rewarded:
            responses = keep if response_mask is None else response_mask.bool()
            counted = keep | responses
            centred = centred_rewards(torch.as_tensor(rewards, dtype=cost.dtype, device=cost.device), group_size,
                                      baseline, reward_decay)
            cost = cost - reward_weight * torch.where(responses, centred[:, None], 0.0)
        score = scored(token_logprobs, support_logprobs, unsupported)
        per_token = per_token + torch.where(counted, cost, 0.0) * score
    total = torch.where(counted, per_token, 0.0).sum()
    if normalizer is not None:
        return total / normalizer
    return total / counted.sum().clamp(min=1).to(per_token.dtype)


def check_normalizer(normalizer: Any) -> None:
    """A loss divided by ``normalizer`` (the accumulated batch's token count) needs a positive
    one: 0 gives 0/0 = NaN in the loss and in every gradient. Tensors pass unchecked (no sync)."""
    if isinstance(normalizer, (int, float)) and not normalizer > 0:
        raise ValueError(f"normalizer must be a positive token count (got {normalizer!r}); pass None to divide "
                         "by this micro-batch's own token count")


def credit_advantage(token_cost: Tensor, mask: Tensor, *, gamma: float, baseline: str,
                     group_size: Optional[int], baseline_exclude: Optional[Tensor], reduce: str = "sum") -> Tensor:
    """G_t - b_t on the masked positions (0 elsewhere), detached: the advantage before any success term."""
    cost = subtract_baseline(future_cost(token_cost, mask, gamma, reduce), mask, baseline, group_size, baseline_exclude)
    return torch.where(mask.bool(), cost, 0.0)


def credit_inputs(student_logprobs: Tensor, token_ce: Tensor, entropy: Optional[Tensor], tokens: Tensor,
                  *, future_cost: str, stop_credit: str, eos_id: Optional[int],
                  credit_floor: float = 0.0) -> dict[str, Tensor]:
    """The per-token pieces :func:`distil_surrogate` needs for ``future_cost``/``stop_credit``/
    ``credit_floor``.

    Shared by the reference losses and the chunked ones (:mod:`distil_core.losses.chunked`), which
    call it on one chunk of positions at a time.
    """
    check_credit(future_cost, stop_credit, eos_id, credit_floor)
    pieces: dict[str, Tensor] = {}
    if future_cost == "kl":
        pieces["token_cost"] = token_ce.detach() - entropy
    stop_eos = eos_id if stop_credit == "local" else None
    if credit_floor > 0:
        pieces["support_logprobs"], pieces["unsupported"] = support_score(student_logprobs, tokens, credit_floor, stop_eos)
    elif stop_eos is not None:  # S = every token but EOS: log(1 - p(EOS)), exact near p(EOS) = 1
        pieces["support_logprobs"], pieces["unsupported"] = stop_score(student_logprobs, tokens, stop_eos)
    return pieces


def scored(token_logprobs: Tensor, support_logprobs: Optional[Tensor] = None,
           unsupported: Optional[Tensor] = None) -> Tensor:
    """The future credit's score s_t: log p_t(y_t), or, given :func:`credit_inputs`'
    ``support_logprobs`` and ``unsupported``, its conditional on S_t (0 for a token outside S_t)."""
    if support_logprobs is None:
        return token_logprobs
    return torch.where(unsupported, 0.0, token_logprobs - support_logprobs)


def check_credit(future_cost: str, stop_credit: str, eos_id: Optional[int], credit_floor: float = 0.0) -> None:
    if future_cost not in FUTURE_COSTS:
        raise ValueError(f"unknown future_cost {future_cost!r}; choose one of {', '.join(FUTURE_COSTS)}")
    if stop_credit not in STOP_CREDITS:
        raise ValueError(f"unknown stop_credit {stop_credit!r}; choose one of {', '.join(STOP_CREDITS)}")
    if stop_credit == "local" and eos_id is None:
        raise ValueError("stop_credit='local' needs eos_id, the id of the token that ends a response")
    if not 0.0 <= credit_floor < 1.0 or credit_floor != credit_floor:
        raise ValueError(f"credit_floor must be in [0, 1) (got {credit_floor!r}): the least probability "
                         "a token needs for future credit to move it")


def discounted_future_sum(values: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """S_t = Σ_{i>t, mask_i} γ^(i-t-1) values_i per row, 0 at masked-out positions."""
    return future_sum_with_carry(values, mask, gamma)[0]


def future_sum_with_carry(values: Tensor, mask: Tensor, gamma: float,
                          carry: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """:func:`discounted_future_sum` of a block of columns that more columns follow.

    ``carry`` ``[B]`` is the later columns' Σ_{i≥T} γ^(i-T) v_i (default 0), so S_t also gets
    γ^(T-1-t)·carry. Returns (S masked, the carry for the block before: Σ_{i≥0} γ^i v_i with
    the later columns folded in). The chunked losses walk a sequence backwards with it.
    """
    keep = mask.bool()
    values = torch.where(keep, values, 0.0)
    carry = values.new_zeros(values.shape[0]) if carry is None else carry
    if gamma == 1.0:
        # suffix sums shifted left by one position: exact, and one kernel on long sequences
        inclusive = values.flip(-1).cumsum(-1).flip(-1) + carry.unsqueeze(1)
        future = torch.cat([inclusive[:, 1:], carry.unsqueeze(1)], dim=1)[:, : values.shape[1]]
        running = inclusive[:, 0] if values.shape[1] else carry  # no columns: the carry passes through
    else:
        running = carry
        columns = []
        for t in reversed(range(values.shape[1])):  # S_t = v_{t+1} + γ S_{t+1}
            columns.append(running)
            running = values[:, t] + gamma * running
        future = torch.stack(columns[::-1], dim=1) if columns else values
    return torch.where(keep, future, 0.0), running


def check_future_credit(baseline: str, group_size: Optional[int], batch_size: int, gamma: float) -> None:
    """Refuse a baseline, group layout or discount the losses cannot use, saying what to pass."""
    check_baseline(baseline, group_size, batch_size)
    check_gamma(gamma)


def check_gamma(gamma: float) -> None:
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - e^x) for x < 0: log(-expm1(x)) near 0, log1p(-exp(x)) below -log 2.

    Each branch sees only inputs where it is finite, so torch.where passes no NaN gradient.
    """
    split = -math.log(2.0)
    near_zero = x > split
    near = torch.log(-torch.expm1(torch.where(near_zero, x, split)))
    far = torch.log1p(-torch.exp(torch.where(near_zero, split, x)))
    return torch.where(near_zero, near, far)


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
        # one reward has no spread to estimate (its std is NaN), and its advantage is 0 already
        spread = rewards.std() if n > 1 else torch.zeros((), dtype=rewards.dtype, device=rewards.device)
        advantages = advantages / (spread + 1e-4)
    return advantages.reshape(n)
