"""Each chunkable method's loss over one chunk of positions, for :mod:`distil_core.losses.chunked`.

The chunked engine walks a response from its last chunk to its first and asks the method for
the sum of its per-token loss over the chunk's counted positions. A method's
:class:`ChunkTerms` is that sum plus the checks of its options; the registry
(:data:`distil_core.losses.methods.METHODS`) names one per chunkable method, so the engine never
branches on a method's name. The terms are those of the reference losses in
:mod:`distil_core.losses.reference`, taken position by position.

The expert enters as full logits, as top-k ids and log-probs (:class:`ExpertTopK`), or — for a
local model, whose logits would be as large as the student's — as its own hidden states and
projection (:class:`ExpertHead`), projected one chunk at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from distil_core.losses import baselines, credit
from distil_core.losses import reference as losses


@dataclass
class ExpertHead:
    """A local expert given as hidden states ``[B, T, H]`` and its output projection.

    Its logits are ``hidden @ weight.T + bias``, computed one chunk at a time and never
    differentiated. ``weight`` may be the student's own (a ``live`` self expert costs no copy).
    """

    hidden: Tensor
    weight: Tensor
    bias: Optional[Tensor] = None

    def logits(self, start: int, stop: int) -> Tensor:
        with torch.no_grad():
            return F.linear(self.hidden[:, start:stop], self.weight, self.bias)


@dataclass
class ExpertTopK:
    """The expert's top-k ids and log-probs ``[B, T, k]`` (the tail bucket is implicit)."""

    ids: Tensor
    logprobs: Tensor


Expert = Union[Tensor, ExpertHead, ExpertTopK]


@dataclass
class Chunk:
    """One chunk of positions ``[start, stop)`` as a method's terms see it.

    ``logits`` are the student's (float, with ``requires_grad``); ``keep`` marks positions with
    an expert signal and ``counted`` those the loss is averaged over (``keep`` plus, with a
    success term, every response token); ``carry`` is the running sum over later positions.
    """

    logits: Tensor
    tokens: Tensor
    keep: Tensor
    counted: Tensor
    expert: Expert
    start: int
    stop: int
    carry: Tensor


@dataclass(frozen=True)
class ChunkTerms:
    """How one method sums its loss over a :class:`Chunk`: ``total(chunk, options)`` returns
    (the sum over counted positions, the carry for the chunk before); ``check(options,
    batch_size)`` refuses options the method cannot use before any chunk is computed."""

    total: Callable[[Chunk, dict], tuple[Tensor, Tensor]]
    check: Callable[[dict, int], None] = lambda options, batch_size: None


def expert_topk(chunk: Chunk, dtype: torch.dtype, options: dict) -> tuple[Tensor, Tensor]:
    """The chunk's top-k ids and detached log-probs, in ``dtype``; adds the chunk's CE and KL to
    the expert over the k+1 buckets to ``options["stats"]`` when it is kept."""
    expert = chunk.expert
    ids, lps = (expert.ids[:, chunk.start : chunk.stop],
                expert.logprobs[:, chunk.start : chunk.stop].detach().to(dtype))
    if options["stats"] is not None:
        add_stats(chunk, *losses.ce_kl_topk_per_token(chunk.logits.detach(), ids, lps), options["stats"])
    return ids, lps


def expert_logits(chunk: Chunk, dtype: torch.dtype, options: dict) -> Tensor:
    """The chunk's expert logits (projected, for an :class:`ExpertHead`), detached, in ``dtype``;
    adds the chunk's CE and KL to the expert to ``options["stats"]`` when it is kept."""
    expert = chunk.expert
    teacher = expert.logits(chunk.start, chunk.stop) if isinstance(expert, ExpertHead) else (
        expert[:, chunk.start : chunk.stop])
    teacher = teacher.detach().to(dtype)
    if options["stats"] is not None:
        add_stats(chunk, *losses.ce_kl_per_token(chunk.logits.detach(), teacher), options["stats"])
    return teacher


def add_stats(chunk: Chunk, ce: Tensor, kl: Tensor, stats: dict) -> None:
    """Sums of per-position CE and KL over the chunk's signal positions (the caller divides)."""
    stats["ce"] += float(torch.where(chunk.keep, ce, 0.0).sum())
    stats["kl"] += float(torch.where(chunk.keep, kl, 0.0).sum())


def distil_total(chunk: Chunk, o: dict) -> tuple[Tensor, Tensor]:
    """DistIL (and ``distil_local``, whose options turn the future credit off) on one chunk."""
    student = F.log_softmax(chunk.logits, dim=-1)
    if isinstance(chunk.expert, ExpertTopK):
        ids, lps = expert_topk(chunk, student.dtype, o)
        teacher, student_q = losses.with_tail(lps), losses.with_tail(student.gather(-1, ids))
    else:
        teacher, student_q = F.log_softmax(expert_logits(chunk, student.dtype, o), dim=-1), student
    per_token = torch.where(chunk.keep, losses.cross_entropy(teacher.exp(), student_q), 0.0)
    carry = chunk.carry
    if o["future_credit"]:
        entropy = losses.cross_entropy(teacher.exp(), teacher)
        credit, carry = future_credit_terms(chunk, student, per_token, entropy, o)
        per_token = per_token + credit
    return torch.where(chunk.counted, per_token, 0.0).sum(), carry


def future_credit_terms(chunk: Chunk, student: Tensor, per_token: Tensor, entropy: Tensor,
                        o: dict) -> tuple[Tensor, Tensor]:
    """DistIL's sg(A_t) · s_t on the chunk (see :func:`~distil_core.losses.credit.distil_surrogate`),
    with the future cost of later chunks carried in."""
    keep, tokens = chunk.keep, chunk.tokens
    pieces = credit.credit_inputs(student, per_token, entropy, tokens, future_cost=o["future_cost"],
                                  stop_credit=o["stop_credit"], eos_id=o["eos_id"], credit_floor=o["credit_floor"])
    token_cost = pieces.get("token_cost", per_token.detach())
    cost, carry = credit.future_sum_with_carry(torch.where(keep, token_cost, 0.0), keep, o["gamma"], chunk.carry)
    if o["future_weight"] is not None:
        cost = credit.per_future_token(cost, o["future_weight"][:, chunk.start : chunk.stop])
    cost = baselines.subtract_baseline(cost, keep, o["baseline"], o["group_size"], o["exclude"])
    cost = torch.where(keep, cost, 0.0)
    if o["centred_rewards"] is not None:
        rewards = o["centred_rewards"].to(device=cost.device, dtype=cost.dtype)
        cost = cost - torch.where(chunk.counted, rewards[:, None], 0.0)
    score = credit.scored(losses.token_logprobs_from(student, tokens), pieces.get("support_logprobs"),
                          pieces.get("unsupported"))
    return torch.where(chunk.counted, cost, 0.0) * score, carry


def jsd_total(chunk: Chunk, o: dict) -> tuple[Tensor, Tensor]:
    """Generalised JSD on one chunk, both sides at ``temperature``."""
    student = F.log_softmax(chunk.logits / o["temperature"], dim=-1)
    if isinstance(chunk.expert, ExpertTopK):
        ids, lps = expert_topk(chunk, student.dtype, o)
        teacher = losses.with_tail(losses.temper_topk(lps, o["temperature"]))
        student = losses.with_tail(student.gather(-1, ids))
    else:
        teacher = F.log_softmax(expert_logits(chunk, student.dtype, o) / o["temperature"], dim=-1)
    per_token = torch.where(chunk.keep, losses.generalized_jsd_per_token(student, teacher, o["beta"]), 0.0)
    return torch.where(chunk.counted, per_token, 0.0).sum(), chunk.carry


def check_jsd(o: dict, batch_size: int) -> None:
    if o["temperature"] <= 0:
        raise ValueError(f"temperature must be positive, got {o['temperature']}")


def reverse_kl_total(chunk: Chunk, o: dict) -> tuple[Tensor, Tensor]:
    """Sampled-token reverse KL on one chunk; the discounted return is carried across chunks."""
    student = F.log_softmax(chunk.logits, dim=-1)
    token_lp = losses.token_logprobs_from(student, chunk.tokens)
    if isinstance(chunk.expert, ExpertTopK):
        ids, lps = expert_topk(chunk, student.dtype, o)
        teacher_lp = losses.topk_token_logprobs(ids, lps, chunk.tokens)
    else:
        teacher_lp = losses.token_logprobs(expert_logits(chunk, student.dtype, o), chunk.tokens)
    keep, carry = chunk.keep, chunk.carry
    log_ratio = torch.where(keep, (token_lp - teacher_lp).detach(), 0.0)  # counted = keep here
    cost = log_ratio
    if o["reverse_kl_gamma"] > 0:
        future, carry = credit.future_sum_with_carry(log_ratio, keep, o["reverse_kl_gamma"], carry)
        cost = log_ratio + o["reverse_kl_gamma"] * future
    return torch.where(keep, cost * token_lp, 0.0).sum(), carry


def check_reverse_kl(o: dict, batch_size: int) -> None:
    credit.check_future_credit("none", None, batch_size, o["reverse_kl_gamma"])


DISTIL_TERMS = ChunkTerms(distil_total)
JSD_TERMS = ChunkTerms(jsd_total, check_jsd)
REVERSE_KL_TERMS = ChunkTerms(reverse_kl_total, check_reverse_kl)
