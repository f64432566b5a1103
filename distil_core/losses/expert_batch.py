"""The expert's per-rollout signals laid out as batch tensors, and what a micro-batch loss returns.

A loss reads the expert as ``[B, T, ...]`` tensors shaped like the student's response tensors;
:func:`stack_signals` pads the per-rollout :class:`~distil_core.types.ExpertSignal` objects into
that layout once per micro-batch, and :func:`tempered` applies ``loss.expert_temperature`` to
whatever the expert sent, so every method learns towards the same q.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from distil_core.errors import ConfigError
from distil_core.losses import reference as losses
from distil_core.types import ExpertSignal


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
    """A micro-batch's loss (with its graph) and the detached floats the trainer logs."""

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


def tempered(expert: ExpertBatch, temperature: float) -> ExpertBatch:
    """The expert's signal at ``temperature`` τ: q ∝ exp(z / τ) for every access level that has logits.

    Dense logits are divided by τ. Hidden-state signals give z = h Wᵀ + b, so z / τ divides
    whichever of ``hidden`` ``[B, T, H]`` and ``weight`` ``[V, H]`` is smaller, and the bias: a
    micro-batch is usually far smaller than a large vocabulary's projection, and that head is
    then never copied. Top-k log-probs go through :func:`losses.temper_topk`. Sampled tokens
    carry no distribution to temper.
    """
    if temperature == 1.0 or expert.access == "none":
        return expert
    if expert.access == "dense":
        return replace(expert, logits=expert.logits / temperature)
    if expert.access == "hidden":
        weight, bias = expert.head
        bias = None if bias is None else bias / temperature
        if expert.hidden.numel() <= weight.numel():
            return replace(expert, hidden=expert.hidden / temperature, head=(weight, bias))
        return replace(expert, head=(weight / temperature, bias))
    if expert.access == "topk":
        return replace(expert, topk_logprobs=losses.temper_topk(expert.topk_logprobs, temperature))
    raise ConfigError(f"loss.expert_temperature needs an expert with log-probs; a {expert.access!r} expert "
                      "sends none. Set loss.expert_temperature: 1.0")


DIVERGENCE_KEYS = ("ce_to_expert", "kl_to_expert")
"""The metrics row's distances from the student to the expert: every row carries both, null
where the expert sent no distribution to compare with (sampled tokens, text)."""


def dense_stats(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor) -> dict[str, float]:
    """Token means of CE and KL from the student to a dense expert: how far apart they are,
    logged beside the loss (which for most methods is neither)."""
    return divergence_stats(*losses.ce_kl_per_token(student_logits, teacher_logits), mask)


def topk_stats(student_logits: Tensor, topk_ids: Tensor, topk_logprobs: Tensor, mask: Tensor) -> dict[str, float]:
    """:func:`dense_stats` for a top-k expert, over the k+1 buckets its losses see (the k ids
    and the rest of the mass), so the curve exists whatever the expert's access."""
    return divergence_stats(*losses.ce_kl_topk_per_token(student_logits, topk_ids, topk_logprobs), mask)


def divergence_stats(ce: Tensor, kl: Tensor, mask: Tensor) -> dict[str, float]:
    """Per-position CE and KL as the row's :data:`DIVERGENCE_KEYS`: means over ``mask``."""
    keep = mask.bool()
    n = max(int(keep.sum()), 1)  # counted exactly: a bfloat16 mask's sum rounds past 256
    ce_key, kl_key = DIVERGENCE_KEYS
    return {ce_key: float(torch.where(keep, ce, 0.0).sum()) / n, kl_key: float(torch.where(keep, kl, 0.0).sum()) / n}
