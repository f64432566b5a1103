"""What DistIL's future credit is measured against: the baseline b_t of the future cost and the
centre r̄ of the success term (:mod:`distil_core.losses.credit` puts them into A_t).

Two kinds, chosen by ``loss.baseline``:

* ``group_loo`` (:func:`group_baseline`, :func:`leave_one_out_rewards`): the other rollouts of
  the same prompt. They saw the same problem, so they remove its difficulty from the credit, but
  a step needs two or more samples of each problem, and a sibling whose expert context read
  rollout i (as its demonstration) is left out.
* ``batch`` (:func:`batch_baseline`, :func:`other_problem_rewards`): the rollouts of the other
  problems of the micro-batch. None of them can depend on rollout i, so the estimator stays
  unbiased with any number of samples per problem, one included: the same rollouts can then be
  spread over more problems, as the other distillation losses prefer, without losing the
  baseline or the success term. It does not remove a problem's own difficulty. A batch that
  holds one problem has no other to measure against: there it falls back to the siblings
  (:func:`batch_or_siblings`), in the trainer and in a direct call of the loss alike.

``none`` subtracts nothing from the future cost; its success term still centres on the
siblings, as ``group_loo`` does. Shapes as in :mod:`distil_core.losses.credit`: ``[B, T]``
per-token tensors, rows in contiguous groups of ``group_size`` rollouts of one prompt.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

BASELINES = ("none", "group_loo", "batch")


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
    check_groups(group_size, batch)
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


def batch_baseline(values: Tensor, mask: Tensor, group_size: int) -> Tensor:
    """b_{i,t}: the masked mean of ``values`` at t over the rows of the other problems (the other
    groups of ``group_size`` contiguous rows), 0 where none still contributes. Detached.

    Every row of another problem was sampled and scored without reading row i (an expert
    context only ever reads the siblings of its own problem), so the baseline is independent of
    y_i: unbiased, with no selection effect, whatever the group size."""
    batch = values.shape[0]
    check_groups(group_size, batch)
    problem = torch.arange(batch, device=values.device) // group_size
    same_problem = problem[:, None] == problem[None, :]
    return group_baseline(values, mask, batch, same_problem)


def batch_or_siblings(baseline: str, group_size: Optional[int], batch_size: int) -> str:
    """The baseline a batch of ``batch_size`` rows is measured with: ``batch`` over a single problem
    of two or more rollouts (``optim.grad_accum`` or ``optim.minibatches`` close to the problems
    per step) has no other problem to compare with, so it falls back to that problem's siblings,
    as ``group_loo`` measures them, rather than to no baseline at all. A lone rollout keeps
    ``batch``, which then subtracts nothing and centres no reward: there is nothing to compare with."""
    if baseline == "batch" and group_size is not None and 2 <= group_size == batch_size:
        return "group_loo"
    return baseline


def subtract_baseline(cost: Tensor, mask: Tensor, baseline: str, group_size: Optional[int],
                      exclude: Optional[Tensor] = None) -> Tensor:
    """``cost`` - b for ``baseline`` (``exclude`` read by ``group_loo`` alone, and by ``batch`` where
    it falls back to the siblings, :func:`batch_or_siblings`); ``cost`` itself for "none"."""
    baseline = batch_or_siblings(baseline, group_size, cost.shape[0])
    if baseline == "group_loo":
        return cost - group_baseline(cost, mask, group_size, exclude)  # type: ignore[arg-type]
    if baseline == "batch":
        return cost - batch_baseline(cost, mask, group_size)  # type: ignore[arg-type]
    return cost


def leave_one_out_rewards(rewards: Tensor, group_size: int, decay: bool = False) -> Tensor:
    """r_i - mean of the other rewards of i's contiguous group, ``[B]``; with ``decay``, times
    (1 - that mean) (:func:`centred_rewards`)."""
    if group_size < 2:
        raise ValueError(f"leave_one_out_rewards needs group_size >= 2 (got {group_size}): a lone "
                         "rollout has no other rewards to be centred on")
    check_groups(group_size, rewards.shape[0])
    grouped = rewards.detach().reshape(-1, group_size)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return ((grouped - others) * (1 - others if decay else 1)).reshape(-1)


def other_problem_rewards(rewards: Tensor, group_size: int, decay: bool = False) -> Tensor:
    """r_i - mean reward of the rows of the other problems, ``[B]``; 0 in a batch of one problem
    (nothing to be centred on, so no success term rather than an uncentred one). With ``decay``,
    times (1 - that mean) (:func:`centred_rewards`)."""
    batch = rewards.shape[0]
    check_groups(group_size, batch)
    rewards = rewards.detach()
    grouped = rewards.reshape(-1, group_size)
    others = batch - group_size
    if others == 0:
        return torch.zeros_like(rewards)
    mean = (rewards.sum() - grouped.sum(dim=1, keepdim=True)) / others
    return ((grouped - mean) * (1 - mean if decay else 1)).reshape(-1)


def centred_rewards(rewards: Tensor, group_size: int, baseline: str, decay: bool = False) -> Tensor:
    """The success term's r - r̄ for ``baseline``: the other problems' mean under ``batch`` (the
    siblings' in a batch of one problem, :func:`batch_or_siblings`), the siblings' under
    ``group_loo`` and ``none``.

    ``decay`` (``loss.reward_decay``) weighs each row by 1 - r̄ as well: a constant λ keeps
    pushing towards successes and away from failures once most rollouts pass, sharpening the
    student and costing pass@k on a suite it has mostly learnt, while the term is needed most
    where successes are rare. r̄ never reads row i's own reward, so the factor is a per-row
    constant and the term stays an unbiased estimate of λ(1 - r̄)∇E[r]."""
    if batch_or_siblings(baseline, group_size, rewards.shape[0]) == "batch":
        return other_problem_rewards(rewards, group_size, decay)
    return leave_one_out_rewards(rewards, group_size, decay)


def check_rewarded(rewards: Optional[Tensor], group_size: Optional[int], baseline: str) -> None:
    """Refuse a success term that has nothing to be centred on."""
    least = 1 if baseline == "batch" else 2
    if rewards is None or group_size is None or group_size < least:
        raise ValueError(f"reward_weight > 0 needs rewards [B] and group_size >= {least} (rewards are centred on "
                         + ("the rollouts of the other problems)" if baseline == "batch"
                            else "the other rollouts of the same prompt; baseline='batch' centres them on the other "
                                 "problems' rollouts and works with one)"))


def check_baseline(baseline: str, group_size: Optional[int], batch_size: int) -> None:
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    if baseline == "none":
        return
    if group_size is None:
        raise ValueError(f"baseline={baseline!r} needs group_size: the number of rollouts per "
                         "prompt, laid out as contiguous rows")
    if baseline == "group_loo" and group_size < 2:
        raise ValueError(f"baseline='group_loo' needs group_size >= 2 (got {group_size}): each rollout needs a "
                         "sibling to compare with; baseline='batch' compares with the other problems' rollouts")
    check_groups(group_size, batch_size)


def check_groups(group_size: int, batch_size: int) -> None:
    if group_size < 1 or batch_size % group_size:
        raise ValueError(f"batch of {batch_size} rows does not split into groups of "
                         f"{group_size} (group_size); keep whole prompt groups in each micro-batch")


__all__ = ["BASELINES", "batch_baseline", "batch_or_siblings", "centred_rewards", "check_baseline", "check_groups",
           "check_rewarded", "group_baseline", "leave_one_out_rewards", "other_problem_rewards", "subtract_baseline"]
