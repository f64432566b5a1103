"""Several optimisation passes per batch of rollouts (``optim.epochs``, ``optim.minibatches``).

Each pass splits the batch into ``optim.minibatches`` mini-batches of whole prompt groups, and
each mini-batch into ``optim.grad_accum`` micro-batches: one optimizer step per mini-batch,
``epochs × minibatches`` per batch, the same split every epoch. The split is of the *global*
batch, each rank taking its own rows of each mini-batch, so an optimizer step holds the same
groups on one process as on several. Everything a step's loss is a
share of (token and row counts) is the mini-batch's, so each optimizer step follows the gradient
of its mini-batch's loss, and with one mini-batch and one epoch the update is the one it always
was. Advantages are computed once, over the whole batch.

Before the first update, :func:`record_logprobs` records what every later pass compares with,
under ``no_grad``: the log-probs of the policy that sampled the rows (``old``: only when there is
more than one pass — on the only pass the current ones, detached, are exactly those) and the
reference policy's (``ref``: only with ``loss.kl_to_reference``). Each rank records its own rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from distil_core.errors import ConfigError
from distil_core.training.reference_policy import padded, row_logprobs


def passes(config: Any) -> int:
    """Optimizer steps per batch of rollouts."""
    return config.optim.epochs * config.optim.minibatches


def check_passes(config: Any, world_size: int, chunked: bool) -> None:
    """Refuse what several passes or the KL penalty cannot do, naming both options."""
    groups = config.rollout.problems_per_step
    if config.optim.minibatches > groups:
        raise ConfigError(
            f"optim.minibatches ({config.optim.minibatches}) is more than the prompt groups of a step "
            f"(rollout.problems_per_step {groups}); a mini-batch holds whole groups. Lower "
            "optim.minibatches or raise rollout.problems_per_step")
    if chunked and config.loss.kl_to_reference.coef > 0:
        raise ConfigError("loss.kl_to_reference is not available with loss.chunk_size > 0 (the chunked losses never "
                          "form the policy's log-probs with a gradient); set loss.chunk_size: 0 or "
                          "loss.kl_to_reference.coef: 0")


def mini_batches(count: int, group_size: int, k: int, *, first_group: int = 0,
                 total_groups: Optional[int] = None) -> list[list[int]]:
    """Rows ``0..count-1`` in exactly ``k`` mini-batches of whole groups.

    The rows are one rank's groups, global groups ``first_group ..`` of ``total_groups`` (default:
    this rank's alone). The global groups are cut into ``k`` runs whose sizes differ by at most one
    group, and each mini-batch is this rank's rows of one run: empty where the run holds none of
    its groups, so every rank takes as many optimizer steps, and a step holds the same groups
    whatever the number of ranks.
    """
    mine = -(-count // group_size)
    total = mine if total_groups is None else total_groups
    per, extra = divmod(total, k)
    out, start = [], 0
    for i in range(k):
        stop = start + per + (1 if i < extra else 0)
        lo, hi = max(start - first_group, 0), min(stop - first_group, mine)
        out.append(list(range(lo * group_size, min(hi * group_size, count))) if lo < hi else [])
        start = stop
    return out


@dataclass
class Recorded:
    """Per-row log-probs recorded before the first update (None: not needed)."""

    old: Optional[list[torch.Tensor]] = None
    ref: Optional[list[torch.Tensor]] = None

    def old_for(self, rows: Sequence[int], width: int, device: Any) -> Optional[torch.Tensor]:
        return None if self.old is None else padded(self.old, rows, width, device)

    def ref_for(self, rows: Sequence[int], width: int, device: Any) -> Optional[torch.Tensor]:
        return None if self.ref is None else padded(self.ref, rows, width, device)


def record_logprobs(learner: Any, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
                    micro: Sequence[Sequence[int]], *, importance: bool, chunked: bool = True,
                    behaviour: Optional[Sequence[torch.Tensor]] = None) -> Recorded:
    """The old and reference log-probs of every row the loss reads, ``micro`` (lists of rows)
    at a time. ``importance``: whether any loss will read old log-probs (GRPO's ratio, or the
    distillation losses' importance weights; not a text expert's rows, which the policy did not
    sample). ``behaviour``: the sampling policy's, recorded when the rows were sampled by a
    policy that is not the current one (``rollout.overlap_grading``); they are the old log-probs
    then, even on a single pass. ``chunked``: whether the loss will take these rows on the chunked
    path; old log-probs are recorded the way the loss will compute the current ones."""
    reference = getattr(learner, "reference", None)
    want_old = importance and (passes(learner.config) > 1 or behaviour is not None)
    if not want_old and reference is None:
        return Recorded()
    old = list(behaviour) if want_old and behaviour is not None else None
    ref = None
    if old is not None and reference is None:  # recorded when sampled: nothing to score (no collective)
        return Recorded(old, None)
    with learner.full_weights():
        if want_old and old is None:
            old = score_rows(learner, learner.model, prompts, targets, micro, chunked=chunked)
        if reference is not None:
            module, context = reference.scoring(learner.model)
            with context:
                ref = score_rows(learner, module, prompts, targets, micro, chunked=False)
    return Recorded(old, ref)


def score_rows(learner: Any, model: Any, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
               micro: Sequence[Sequence[int]], *, chunked: bool = True) -> list[torch.Tensor]:
    """``model``'s log-prob of each row's target tokens under ``no_grad``, ``micro`` rows at a
    time (an empty tensor for a row without targets); ``chunked``: through the run's chunked
    projection when it has one. The caller holds the whole weights (under fsdp)."""
    chunk = learner.config.loss.chunk_size if learner.chunked and chunked else 0
    out: list[torch.Tensor] = [torch.zeros(0)] * len(targets)
    for rows in micro:
        rows = [j for j in rows if targets[j]]
        if rows:
            scored = row_logprobs(model, [prompts[j] for j in rows], [targets[j] for j in rows],
                                  learner.runtime.pad_id, chunk_size=chunk)
            for j, values in zip(rows, scored):
                out[j] = values
    return out
