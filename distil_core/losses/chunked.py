"""Chunked losses: the student's ``[B, T, V]`` logits are never held whole.

The reference losses in :mod:`distil_core.losses.reference` take full logits. Here the student enters as
its last hidden states ``[B, T, H]`` and its output projection (``lm_head``); logits are made
one chunk of positions at a time, the chunk's loss and its gradients with respect to the hidden
states and the projection are computed at once, and the logits are freed before the next chunk.
The backward pass only scales the stored gradients. Peak memory for logits is one chunk
(``B × chunk × V`` floats for the student, as much for the expert) instead of the whole batch.

The expert enters as full logits, as top-k ids and log-probs, or — for a local model, where its
logits would be as large as the student's — as its own hidden states and projection
(:class:`ExpertHead`), projected chunk by chunk too.

Terms that couple positions (DistIL's future credit G_t, the discounted reverse-KL return) are
detached sums over *later* positions, so chunks run from the last position to the first and
carry the running sum: each chunk is processed exactly once, and values and gradients equal the
reference implementations (tests/test_chunked.py checks both in float64).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from distil_core.losses import reference as losses

CHUNKED_METHODS = ("distil", "distil_local", "jsd", "reverse_kl")


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


def chunked_loss(
    method: str,
    hidden: Tensor,
    weight: Tensor,
    tokens: Tensor,
    mask: Tensor,
    expert: Expert,
    *,
    bias: Optional[Tensor] = None,
    chunk_size: int = 256,
    future_credit: bool = True,
    future_cost: str = "kl",
    stop_credit: str = "full",
    eos_id: Optional[int] = None,
    baseline: str = "none",
    gamma: float = 1.0,
    group_size: Optional[int] = None,
    baseline_exclude: Optional[Tensor] = None,
    rewards: Optional[Tensor] = None,
    reward_weight: float = 0.0,
    response_mask: Optional[Tensor] = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    reverse_kl_gamma: float = 0.0,
    stats: Optional[dict] = None,
) -> Tensor:
    """The loss of ``method`` from student hidden states, chunk by chunk; a scalar with a graph.

    ``hidden`` ``[B, T, H]`` is the student's last hidden state at the positions whose logits
    predict ``tokens`` ``[B, T]`` (already shifted, as in :mod:`distil_core.losses.reference`); ``weight``
    ``[V, H]`` and ``bias`` are its output projection. ``chunk_size`` counts positions per chunk.
    The other options mean what they mean in :mod:`distil_core.losses.reference`: ``future_credit``,
    ``future_cost``, ``stop_credit``, ``eos_id``, ``baseline``, ``gamma``, ``group_size``,
    ``baseline_exclude``, ``rewards``, ``reward_weight`` and ``response_mask`` for ``distil``; ``beta`` and ``temperature`` for
    ``jsd``; ``reverse_kl_gamma`` for ``reverse_kl``. Logits are computed in float32 (float64
    inputs stay float64). A ``stats`` dict, when given, receives the token means of CE and KL
    to the expert (``ce_to_expert``, ``kl_to_expert``; dense experts only), as the trainer logs.
    """
    if method not in CHUNKED_METHODS:
        raise ValueError(f"chunked_loss: unknown method {method!r}; choose one of {', '.join(CHUNKED_METHODS)}")
    if chunk_size < 1:
        raise ValueError(f"chunked_loss: chunk_size must be at least 1 (got {chunk_size})")
    credit = future_credit and method == "distil"
    if credit:
        losses.check_future_credit(baseline, group_size, hidden.shape[0], gamma)
        losses.check_credit(future_cost, stop_credit, eos_id)
        if reward_weight > 0 and (rewards is None or group_size is None or group_size < 2):
            raise ValueError("reward_weight > 0 needs rewards [B] and group_size >= 2")
    rewarded = credit and reward_weight > 0
    counted = mask.bool() | response_mask.bool() if rewarded and response_mask is not None else mask.bool()
    if method == "jsd" and temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if method == "reverse_kl":
        losses.check_future_credit("none", None, hidden.shape[0], reverse_kl_gamma)
    centred = None
    if rewarded:
        centred = reward_weight * losses.leave_one_out_rewards(torch.as_tensor(rewards), group_size)
    options = dict(
        chunk_size=chunk_size, future_credit=credit, future_cost=future_cost, stop_credit=stop_credit,
        eos_id=eos_id, baseline=baseline, gamma=gamma, group_size=group_size, exclude=baseline_exclude,
        centred_rewards=centred, counted=counted, beta=beta, temperature=temperature,
        reverse_kl_gamma=reverse_kl_gamma, stats={"ce": 0.0, "kl": 0.0} if stats is not None else None,
    )
    loss = _ChunkedLoss.apply(hidden, weight, bias, method, tokens, mask, expert, options)
    if stats is not None and not isinstance(expert, ExpertTopK):
        n = max(float(mask.bool().sum()), 1.0)
        stats["ce_to_expert"] = options["stats"]["ce"] / n
        stats["kl_to_expert"] = options["stats"]["kl"] / n
    return loss


class _ChunkedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, method, tokens, mask, expert, options):  # type: ignore[override]
        loss, grads = _forward_and_grads(method, hidden, weight, bias, tokens, mask, expert, options)
        ctx.save_for_backward(*grads)
        ctx.has_bias = bias is not None
        return loss

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_output
        if not scale.requires_grad and float(scale) == 1.0:  # the usual case: no scaled copies
            return grad_hidden, grad_weight, grad_bias if ctx.has_bias else None, None, None, None, None, None
        return (
            grad_hidden * scale.to(grad_hidden.dtype),
            grad_weight * scale.to(grad_weight.dtype),
            grad_bias * scale.to(grad_bias.dtype) if ctx.has_bias else None,
            None, None, None, None, None,
        )


def _forward_and_grads(method, hidden, weight, bias, tokens, mask, expert, o):
    compute = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    batch, length = tokens.shape
    keep = mask.bool()
    count = o["counted"].sum().clamp(min=1).to(compute)
    grad_hidden = torch.zeros_like(hidden)
    grad_weight = torch.zeros(weight.shape, dtype=compute, device=weight.device)
    grad_bias = torch.zeros(bias.shape, dtype=compute, device=bias.device) if bias is not None else torch.zeros(0)
    total = torch.zeros((), dtype=compute, device=hidden.device)
    # carried sums over later positions, one per row: DistIL's Σ_{i≥b} γ^(i-b) CE_i and the
    # reverse-KL return Σ_{i≥b} γ^(i-b) (log p_i - log q_i)
    carry = torch.zeros(batch, dtype=compute, device=hidden.device)
    w = weight.detach().to(compute)
    b_ = bias.detach().to(compute) if bias is not None else None
    stops = list(range(length, 0, -o["chunk_size"]))
    for stop in stops:
        start = max(0, stop - o["chunk_size"])
        h = hidden[:, start:stop].detach().to(compute)
        with torch.no_grad():
            logits = F.linear(h, w, b_)
        logits.requires_grad_(True)
        with torch.enable_grad():
            part, carry = _chunk_loss(method, logits, tokens[:, start:stop], keep[:, start:stop], expert, start, stop,
                                      carry, o, o["counted"][:, start:stop])
            part = part / count
            (grad_logits,) = torch.autograd.grad(part, [logits])
        total = total + part.detach()
        # the projection's gradients by hand, accumulated in place: no [V, H] temporary per chunk
        grad_hidden[:, start:stop] = (grad_logits @ w).to(hidden.dtype)
        grad_weight.addmm_(grad_logits.flatten(0, 1).T, h.flatten(0, 1))
        if b_ is not None:
            grad_bias += grad_logits.sum((0, 1))
        del logits, part, grad_logits
    return total, (
        grad_hidden, grad_weight.to(weight.dtype), grad_bias.to(bias.dtype) if bias is not None else grad_bias,
    )


def _chunk_loss(method, logits, tokens, keep, expert, start, stop, carry, o, counted):
    """Σ over the chunk's masked tokens of the per-token loss; returns (sum, new carry)."""
    if method == "jsd":
        student = F.log_softmax(logits / o["temperature"], dim=-1)
    else:
        student = F.log_softmax(logits, dim=-1)
    token_lp = losses.token_logprobs_from(student, tokens)
    entropy = None
    if isinstance(expert, ExpertTopK):
        ids, lps = expert.ids[:, start:stop], expert.logprobs[:, start:stop].detach().to(student.dtype)
        if method == "jsd":
            lps = losses.temper_topk(lps, o["temperature"])
        teacher_buckets = losses.with_tail(lps)
        student_buckets = losses.with_tail(student.gather(-1, ids))
        if method in ("distil", "distil_local"):
            per_token = losses.cross_entropy(teacher_buckets.exp(), student_buckets)
            entropy = losses.cross_entropy(teacher_buckets.exp(), teacher_buckets)
        elif method == "jsd":
            per_token = losses.generalized_jsd_per_token(student_buckets, teacher_buckets, o["beta"])
        else:
            teacher_lp = losses.topk_token_logprobs(ids, lps, tokens)
            return _reverse_kl_chunk(token_lp, teacher_lp, keep, carry, o)
    else:
        teacher_logits = expert.logits(start, stop) if isinstance(expert, ExpertHead) else expert[:, start:stop]
        teacher_logits = teacher_logits.detach().to(student.dtype)
        if o["stats"] is not None:
            _accumulate_stats(o["stats"], logits.detach(), teacher_logits, keep)
        if method == "jsd":
            teacher = F.log_softmax(teacher_logits / o["temperature"], dim=-1)
            per_token = losses.generalized_jsd_per_token(student, teacher, o["beta"])
        elif method == "reverse_kl":
            teacher_lp = losses.token_logprobs(teacher_logits, tokens)
            return _reverse_kl_chunk(token_lp, teacher_lp, keep, carry, o)
        else:
            teacher = F.log_softmax(teacher_logits, dim=-1)
            per_token = losses.cross_entropy(teacher.exp(), student)
            entropy = losses.cross_entropy(teacher.exp(), teacher)
    per_token = torch.where(keep, per_token, 0.0)
    if o["future_credit"]:
        pieces = losses.credit_inputs(student, per_token, entropy, tokens, future_cost=o["future_cost"],
                                      stop_credit=o["stop_credit"], eos_id=o["eos_id"])
        token_cost = pieces.get("token_cost", per_token.detach())
        cost, carry = losses.future_sum_with_carry(torch.where(keep, token_cost, 0.0), keep, o["gamma"], carry)
        if o["baseline"] == "group_loo":
            cost = cost - losses.group_baseline(cost, keep, o["group_size"], o["exclude"])
        cost = torch.where(keep, cost, 0.0)
        if o["centred_rewards"] is not None:
            rewards = o["centred_rewards"].to(device=cost.device, dtype=cost.dtype)
            cost = cost - torch.where(counted, rewards[:, None], 0.0)
        score = token_lp
        if "continue_logprobs" in pieces:
            score = torch.where(pieces["stops"], 0.0, token_lp - pieces["continue_logprobs"])
        per_token = per_token + torch.where(counted, cost, 0.0) * score
    return torch.where(counted, per_token, 0.0).sum(), carry


def _accumulate_stats(acc: dict, logits: Tensor, teacher_logits: Tensor, keep: Tensor) -> None:
    ce, kl = losses.ce_kl_per_token(logits, teacher_logits)
    acc["ce"] += float(torch.where(keep, ce, 0.0).sum())
    acc["kl"] += float(torch.where(keep, kl, 0.0).sum())


def _reverse_kl_chunk(token_lp, teacher_lp, keep, carry, o):
    log_ratio = torch.where(keep, (token_lp - teacher_lp).detach(), 0.0)  # counted = keep here
    cost = log_ratio
    if o["reverse_kl_gamma"] > 0:
        future, carry = losses.future_sum_with_carry(log_ratio, keep, o["reverse_kl_gamma"], carry)
        cost = log_ratio + o["reverse_kl_gamma"] * future
    return torch.where(keep, cost * token_lp, 0.0).sum(), carry
