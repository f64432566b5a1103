"""Losses: DistIL and every baseline, as functions of logits and tokens.

``reference`` holds the plain, readable version of each loss (the one the tests check against
exact gradients) and ``credit`` the future credit, group baselines and rewards that DistIL's
surrogate and GRPO's advantages are made of (its baselines in ``baselines``); ``chunked`` (with ``chunk_terms``) is the
memory-lean version that never materialises the full vocabulary for long responses, and
``methods`` the registry ``METHODS`` that says, for each training method, whether it needs an
expert, whether it can run chunked, and which loss it computes. Adding a method is one entry
there.

The public loss functions are re-exported here, so ``distil_core.losses.distil_loss`` works.
Imports torch, the contract layer and ``models`` (``topk_with_tail``, which experts use to
send top-k signals, lives in ``models.forward``).
"""

from distil_core.losses.baselines import BASELINES, batch_baseline, group_baseline, leave_one_out_rewards
from distil_core.losses.credit import (
    ADVANTAGE_SCALES,
    FUTURE_COSTS,
    FUTURE_REDUCES,
    STOP_CREDITS,
    check_credit,
    check_future_credit,
    credit_inputs,
    distil_surrogate,
    future_cost,
    future_sum_with_carry,
    group_advantages,
    stop_score,
    support_score,
)
from distil_core.losses.reference import (
    LOSS_TYPES,
    ce_kl_per_token,
    ce_kl_topk_per_token,
    cross_entropy,
    distil_loss,
    distil_loss_sampled,
    distil_loss_topk,
    generalized_jsd,
    generalized_jsd_per_token,
    generalized_jsd_topk,
    grpo_loss,
    reverse_kl_sampled,
    sequence_ce_loss,
    temper_topk,
    token_logprobs,
    token_logprobs_from,
    topk_token_logprobs,
    with_tail,
)
from distil_core.models.forward import topk_with_tail

__all__ = [
    "ADVANTAGE_SCALES", "BASELINES", "FUTURE_COSTS", "FUTURE_REDUCES", "LOSS_TYPES", "STOP_CREDITS",
    "batch_baseline", "ce_kl_per_token", "ce_kl_topk_per_token", "check_credit", "check_future_credit", "credit_inputs", "cross_entropy",
    "distil_loss", "distil_loss_sampled", "distil_loss_topk", "distil_surrogate", "future_cost",
    "future_sum_with_carry", "generalized_jsd", "generalized_jsd_per_token", "generalized_jsd_topk",
    "group_advantages", "group_baseline", "grpo_loss", "leave_one_out_rewards", "reverse_kl_sampled",
    "sequence_ce_loss", "stop_score", "support_score", "temper_topk", "token_logprobs", "token_logprobs_from",
    "topk_token_logprobs", "topk_with_tail", "with_tail",
]
