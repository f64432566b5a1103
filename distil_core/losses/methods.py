"""The training methods: one :class:`Method` entry each in :data:`METHODS`.

An entry holds every fact about a method that the trainer, the runtime and the losses act on —
whether it asks an expert, whether it has DistIL's future credit, whether it learns from
group advantages, how its micro-batch loss is made on each expert access level and in chunks,
and how a micro-batch's loss is weighted when micro-batches are accumulated. Nothing else
branches on a method's name, so adding a method is one entry here (and its name in the
config's ``Method`` literal, which is what a user may write). One fact lives in the config
layer, which cannot import this one: a method's own expert temperature where
``loss.expert_temperature`` is unset (``config.EXPERT_TEMPERATURES``, 1 for a method it does not
name); :meth:`Method.target_temperature` reads it.

The losses themselves live in :mod:`distil_core.losses.reference` (full logits) and
:mod:`distil_core.losses.chunk_terms` (a chunk of positions at a time); see
``docs/algorithms.md`` for what each method optimises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from distil_core.config import LossConfig, method_expert_temperature
from distil_core.errors import ConfigError
from distil_core.losses import chunk_terms
from distil_core.losses import reference as losses
from distil_core.losses.expert_batch import (
    ExpertBatch,
    LossOutput,
    RowContext,
    dense_stats,
    stack_signals,
    tempered,
    topk_stats,
)
from distil_core.losses.importance import clip_stats
from distil_core.types import ExpertSignal


@dataclass
class MicroBatch:
    """One micro-batch on the full-logit path, as a method's loss reads it.

    ``signals`` are the expert's answers for these rows (None: no signal); ``advantages``
    ``[B]`` are filled for methods that learn from group advantages; ``total_tokens`` is the
    token count of the whole accumulated batch (the divisor of token-summed losses);
    ``old_logprobs`` ``[B, T]`` those of the policy that sampled the rows, when the batch is
    optimised more than once or was sampled a step behind (``rollout.overlap_grading``); None:
    the current ones, detached.
    """

    loss: LossConfig
    logits: Tensor
    tokens: Tensor
    mask: Tensor
    signals: Sequence[Optional[ExpertSignal]]
    rows: RowContext
    advantages: Optional[Tensor] = None
    total_tokens: float = 0.0
    max_new_tokens: Optional[int] = None
    old_logprobs: Optional[Tensor] = None


@dataclass
class Share:
    """A micro-batch's size beside the whole batch's (summed over ranks), for its weight."""

    micro_rows: int
    rows: int
    micro_batches: int
    micro_tokens: int
    total_tokens: int


# (cfg, student logits, expert tensors..., tokens, mask, credit options) -> loss
AccessLoss = Callable[..., Tensor]


@dataclass(frozen=True)
class Method:
    """One training method.

    ``batch_loss(method, micro_batch)`` is the micro-batch loss on full logits; ``scale(cfg,
    share)`` the weight of a micro-batch's loss in the accumulated gradient. A distillation
    method gives its loss per expert access level (``dense_loss`` on ``[B, T, V]`` logits,
    ``topk_loss`` on top-k ids and log-probs, ``sampled_loss`` on sampled ids; None refuses
    that access) and, when it can run without the full logits, ``chunk`` — its terms for
    :func:`distil_core.losses.chunked.chunked_loss`. ``clipped_ratio``: the loss holds its own
    ratio π/π_old (GRPO), so it takes the old log-probs itself instead of importance weights.
    """

    name: str
    needs_expert: bool
    batch_loss: Callable[["Method", MicroBatch], LossOutput]
    scale: Callable[[LossConfig, Share], float]
    future_credit: bool = False
    group_advantages: bool = False
    dense_loss: Optional[AccessLoss] = None
    topk_loss: Optional[AccessLoss] = None
    sampled_loss: Optional[AccessLoss] = None
    chunk: Optional[chunk_terms.ChunkTerms] = None
    clipped_ratio: bool = False

    @property
    def chunkable(self) -> bool:
        """Whether ``loss.chunk_size`` applies: the loss can be made a chunk of positions at a time."""
        return self.chunk is not None

    def target_temperature(self, cfg: LossConfig, access: str) -> float:
        """The expert temperature τ this method learns with: ``loss.expert_temperature`` where the
        config sets it, else the method's own (``config.EXPERT_TEMPERATURES``). A sampled-token
        expert sends no distribution to temper, so unset it is read as it is (set to anything but
        1, it is refused)."""
        if cfg.expert_temperature is not None:
            return cfg.expert_temperature
        return 1.0 if access == "sampled" else method_expert_temperature(self.name)

    def loss(self, batch: MicroBatch) -> LossOutput:
        return self.batch_loss(self, batch)

    def rewarded(self, cfg: LossConfig, group_size: int) -> bool:
        """Whether DistIL's terminal success term applies: it rides on the future credit and
        centres rewards on the siblings (on the other problems' rollouts under ``baseline:
        batch``, which needs no sibling), so it needs both."""
        centred = group_size > 1 or cfg.baseline == "batch"
        return self.future_credit and cfg.future_credit and cfg.reward_weight > 0 and centred

    def reads_every_row(self, cfg: LossConfig, group_size: int) -> bool:
        """Whether rows without an expert signal still enter the loss (GRPO's rows, or a success term)."""
        return self.group_advantages or self.rewarded(cfg, group_size)


def method_named(name: Union[str, Method]) -> Method:
    """The registered method ``name``; an unknown name is a :class:`ConfigError` listing the valid ones."""
    if isinstance(name, Method):
        return name
    found = METHODS.get(name)
    if found is None:
        raise ConfigError(f"method {name!r} is not a training method; choose one of {', '.join(METHODS)}")
    return found


# -- full-logit losses ----------------------------------------------------------------------------


def distillation_loss(
    method: Union[str, Method],
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
    spec = method_named(method)
    response_mask = mask
    mask = mask * expert.rows.unsqueeze(1).to(mask.dtype)
    student = student_logits.float()
    expert = tempered(expert, spec.target_temperature(cfg, expert.access))
    credit = credit_options(spec, cfg, rows, response_mask)
    if expert.access == "none":  # every row masked out of the expert terms: any target will do
        expert = ExpertBatch("dense", expert.rows, logits=student.detach())
    stats: dict[str, float] = {}
    if expert.access in ("dense", "hidden"):
        teacher = expert.dense_logits()
        loss = spec.dense_loss(cfg, student, teacher, tokens, mask, credit)
        stats = dense_stats(student.detach(), teacher, mask)
    elif expert.access == "topk":
        loss = spec.topk_loss(cfg, student, expert.topk_ids, expert.topk_logprobs, tokens, mask, credit)
        stats = topk_stats(student.detach(), expert.topk_ids, expert.topk_logprobs, mask)
    elif expert.access == "sampled":
        if spec.sampled_loss is None:
            raise ConfigError(f"method {spec.name!r} needs expert log-probs; this expert only samples tokens")
        loss = spec.sampled_loss(cfg, student, expert.sample_ids, tokens, mask, credit)
    else:
        raise ConfigError(f"unknown expert access {expert.access!r}")
    stats["signal_tokens"] = float(mask.bool().sum())
    return LossOutput(loss, stats)


def credit_options(method: Method, cfg: LossConfig, rows: RowContext, response_mask: Tensor) -> dict:
    """DistIL's future-credit options for ``method`` (off for methods without future credit).
    ``batch`` in a micro-batch of one problem falls back to its siblings inside the loss
    (:func:`~distil_core.losses.baselines.batch_or_siblings`), so it keeps their exclusions."""
    baseline = cfg.baseline
    credit = dict(
        future_credit=method.future_credit and cfg.future_credit,
        future_cost=cfg.future_cost,
        stop_credit=cfg.stop_credit,
        eos_id=rows.eos_id,
        credit_floor=cfg.credit_floor,
        baseline=baseline,
        gamma=cfg.gamma,
        future_reduce=cfg.future_reduce,
        group_size=rows.group_size if rows.group_size > 1 or baseline == "batch" else None,
        baseline_exclude=rows.baseline_exclude,
    )
    if rows.group_size < 2 and baseline != "batch":  # one rollout per prompt: no sibling to compare with
        credit.update(baseline="none", baseline_exclude=None)
    elif method.rewarded(cfg, rows.group_size):
        credit.update(rewards=rows.rewards, reward_weight=cfg.reward_weight, reward_decay=cfg.reward_decay,
                      response_mask=response_mask)
    return credit


def grpo_micro_loss(
    cfg: LossConfig, student_logits: Tensor, tokens: Tensor, mask: Tensor, advantages: Tensor,
    old_logprobs: Optional[Tensor], normalizer: Optional[float], max_completion_length: Optional[int] = None,
) -> LossOutput:
    """The clipped policy-gradient loss of one micro-batch (old log-probs None: the current ones,
    detached); stats add ``clip_fraction`` and ``ratio_mean``."""
    logprobs = losses.token_logprobs(student_logits.float(), tokens)
    old = logprobs.detach() if old_logprobs is None else old_logprobs
    loss = losses.grpo_loss(
        logprobs, old, advantages, mask,
        eps_low=cfg.eps_low, eps_high=cfg.eps_high, loss_type=cfg.loss_type, normalizer=normalizer,
        max_completion_length=max_completion_length,
    )
    stats = clip_stats(logprobs, old, advantages, mask, eps_low=cfg.eps_low, eps_high=cfg.eps_high)
    return LossOutput(loss, {**stats, "signal_tokens": float(mask.bool().sum())})


def _grpo_batch_loss(method: Method, b: MicroBatch) -> LossOutput:
    return grpo_micro_loss(b.loss, b.logits, b.tokens, b.mask, b.advantages.to(b.logits.device), b.old_logprobs,
                           float(b.total_tokens), max_completion_length=b.max_new_tokens)


def _distillation_batch_loss(method: Method, b: MicroBatch) -> LossOutput:
    """A text expert's rows learn its continuation by plain CE; any other access goes through
    :func:`distillation_loss`."""
    if any(s is not None and s.ok and s.access == "text" for s in b.signals):
        rows = torch.tensor([1.0 if s is not None and s.ok else 0.0 for s in b.signals], device=b.mask.device)
        masked = b.mask * rows.unsqueeze(1)
        return LossOutput(losses.sequence_ce_loss(b.logits.float(), b.tokens, masked),
                          {"signal_tokens": float(masked.bool().sum())})
    expert = stack_signals(b.signals, b.tokens.shape[1], b.logits.shape[-1], b.logits.device)
    return distillation_loss(method, b.loss, b.logits, b.tokens, b.mask, expert, b.rows)


def token_share(cfg: LossConfig, share: Share) -> float:
    """The micro-batch's share of the batch's tokens: token means over micro-batches add up to
    the token mean over the batch."""
    return share.micro_tokens / share.total_tokens


def grpo_share(cfg: LossConfig, share: Share) -> float:
    """Weight of one micro-batch so accumulation matches each GRPO aggregation's definition."""
    if cfg.loss_type == "dapo":
        return 1.0  # the loss already divides by the whole batch's token count
    if cfg.loss_type == "bnpo":
        return 1.0 / share.micro_batches  # token mean per micro-batch, averaged
    return share.micro_rows / share.rows  # grpo / dr_grpo: means over sequences


# -- each method's loss per expert access level ------------------------------------------------


def _distil_dense(cfg, student, teacher, tokens, mask, credit) -> Tensor:
    return losses.distil_loss(student, teacher, tokens, mask, **credit)


def _distil_topk(cfg, student, ids, lps, tokens, mask, credit) -> Tensor:
    return losses.distil_loss_topk(student, ids, lps, tokens, mask, **credit)


def _distil_sampled(cfg, student, sample_ids, tokens, mask, credit) -> Tensor:
    if credit["future_credit"] and cfg.future_cost == "kl":
        raise ConfigError("loss.future_cost: kl needs the expert's log-probs, and this expert only samples "
                          "tokens. Set loss.future_cost: ce (or use an expert with dense or top-k access)")
    return losses.distil_loss_sampled(student, sample_ids, tokens, mask, **credit)


def _jsd_dense(cfg, student, teacher, tokens, mask, credit) -> Tensor:
    return losses.generalized_jsd(student, teacher, mask, beta=cfg.beta, temperature=cfg.temperature)


def _jsd_topk(cfg, student, ids, lps, tokens, mask, credit) -> Tensor:
    return losses.generalized_jsd_topk(student, ids, lps, mask, beta=cfg.beta, temperature=cfg.temperature)


def _reverse_kl_dense(cfg, student, teacher, tokens, mask, credit) -> Tensor:
    return losses.reverse_kl_sampled(losses.token_logprobs(student, tokens), losses.token_logprobs(teacher, tokens),
                                     mask, gamma=cfg.reverse_kl_gamma)


def _reverse_kl_topk(cfg, student, ids, lps, tokens, mask, credit) -> Tensor:
    return losses.reverse_kl_sampled(losses.token_logprobs(student, tokens), losses.topk_token_logprobs(ids, lps, tokens),
                                     mask, gamma=cfg.reverse_kl_gamma)


def _distillation(name: str, **facts) -> Method:
    return Method(name, needs_expert=True, batch_loss=_distillation_batch_loss, scale=token_share, **facts)


METHODS: dict[str, Method] = {
    entry.name: entry
    for entry in (
        _distillation("distil", future_credit=True, dense_loss=_distil_dense, topk_loss=_distil_topk,
                      sampled_loss=_distil_sampled, chunk=chunk_terms.DISTIL_TERMS),
        # the ablation without future credit: only the per-token term
        _distillation("distil_local", dense_loss=_distil_dense, topk_loss=_distil_topk,
                      sampled_loss=_distil_sampled, chunk=chunk_terms.DISTIL_TERMS),
        _distillation("jsd", dense_loss=_jsd_dense, topk_loss=_jsd_topk, chunk=chunk_terms.JSD_TERMS),
        _distillation("reverse_kl", dense_loss=_reverse_kl_dense, topk_loss=_reverse_kl_topk,
                      chunk=chunk_terms.REVERSE_KL_TERMS),
        Method("grpo", needs_expert=False, batch_loss=_grpo_batch_loss, scale=grpo_share, group_advantages=True,
               clipped_ratio=True),
    )
}
"""Every training method by name, in the order the docs list them."""
