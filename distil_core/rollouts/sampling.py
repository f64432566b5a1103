"""Sampling settings and keyed sampling, shared by in-process generation and ``distil serve``.

Sampling is *keyed*: sample ``g`` of problem ``id`` draws its token at position ``t`` by
inverting the CDF of the sampling distribution (after temperature, top-k and top-p) at a
uniform number that is a hash of (call key, ``id``, ``g``, ``t``), not a draw from a shared
random stream. Which rows share a batch (and how many ranks split it) then changes nothing: a
problem's rollouts are the same whether it is generated alone, with 15 others, or on another
rank, which is what lets a run on 2 processes follow the 1-process run, and an evaluation be
split across ranks. The work per token is what ``softmax`` + ``multinomial`` do.

The same logits processor (:class:`KeyedSampler`, last in the chain) records each drawn token's
log-prob as it draws it, so recording holds one step's scores at a time: O(rows × V) memory,
not the O(steps × rows × V) that ``output_scores=True`` keeps until the call returns (12.9 GB
for 64 rows × 1024 tokens at V = 49152).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from transformers import LogitsProcessor
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from distil_core.errors import ConfigError


@dataclass
class SamplingParams:
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


def check_sampling(p: SamplingParams) -> None:
    """A ConfigError naming the first of ``p``'s settings that generation cannot use."""
    def bad(field: str, rule: str, value: object) -> ConfigError:
        return ConfigError(f"sampling parameter {field} must be {rule} (got {value!r}); check rollout.{field} "
                           "or eval settings, or the SamplingParams a plugin passes")

    if isinstance(p.max_new_tokens, bool) or not isinstance(p.max_new_tokens, int) or p.max_new_tokens < 1:
        raise bad("max_new_tokens", "an integer of at least 1", p.max_new_tokens)
    if not (isinstance(p.temperature, (int, float)) and math.isfinite(p.temperature) and p.temperature >= 0):
        raise bad("temperature", "a finite number >= 0 (0: greedy)", p.temperature)
    if not (isinstance(p.top_p, (int, float)) and 0.0 <= p.top_p <= 1.0):
        raise bad("top_p", "in [0, 1]", p.top_p)
    if isinstance(p.top_k, bool) or not isinstance(p.top_k, int) or p.top_k < 0:
        raise bad("top_k", "an integer >= 0 (0: no top-k)", p.top_k)


def sampling_warpers(p: SamplingParams) -> list[LogitsProcessor]:
    """HF's sampling warpers for ``p``, in the order ``generate`` applies them."""
    out: list[LogitsProcessor] = []
    if p.temperature != 1.0:
        out.append(TemperatureLogitsWarper(p.temperature))
    if p.top_k:
        out.append(TopKLogitsWarper(top_k=p.top_k))
    if p.top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=p.top_p))
    return out


# -- keyed sampling ------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    """A 64-bit pattern as the int64 that torch stores."""
    x &= _MASK64
    return x - (1 << 64) if x >> 63 else x


_GOLDEN, _MIX1, _MIX2 = (_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (wrapping multiply, logical shifts by masking)."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _MIX1
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _MIX2
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def row_key(key: int, problem_id: str, sample: int) -> int:
    """The key of sample ``sample`` of problem ``problem_id`` in the call keyed ``key``."""
    digest = hashlib.blake2b(f"{key}\x00{problem_id}\x00{sample}".encode(), digest_size=8).digest()
    return _signed(int.from_bytes(digest, "little"))


def keyed_uniform(keys: torch.Tensor, position: int) -> torch.Tensor:
    """[rows] float32 numbers in [0, 1), a pure function of (row key, position)."""
    bits = _mix(keys + _signed(_GOLDEN * (position + 1)))
    return ((bits >> 40) & 0xFFFFFF).float() * (1.0 / (1 << 24))


def inverse_cdf(logprobs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """[rows, 1] index where each row's CDF first exceeds ``uniform`` × its total: a draw from
    ``exp(logprobs)``. A token of probability 0 is never drawn (its CDF step is empty)."""
    cdf = logprobs.exp().cumsum(-1)
    total = cdf[:, -1:]
    target = torch.minimum(uniform.to(cdf.dtype).unsqueeze(-1) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True)


class NonFiniteLogits(FloatingPointError):
    """The model's scores for ``rows`` at generated token ``step`` hold NaN or +inf, or no finite
    value: nothing can be drawn from them (a diverged model)."""

    def __init__(self, rows: list[int], step: int):
        super().__init__(f"the model's logits are NaN or infinite in rows {rows} at generated token {step}")
        self.rows, self.step = rows, step


class KeyedSampler(LogitsProcessor):
    """Draws each row's token by :func:`inverse_cdf` at its keyed uniform (``keys`` None:
    greedy) and records the token's log-prob under the scores it was drawn from.

    It returns scores that are -inf except at the drawn token, so ``generate``'s greedy choice
    is the draw; it must come last, after the warpers.
    """

    def __init__(self, keys: Optional[Sequence[int]], start: int):
        self.keys = None if keys is None else torch.tensor(list(keys), dtype=torch.int64)
        self.start = start
        self._logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logprobs = scores.float()
        norm = torch.logsumexp(logprobs, dim=-1, keepdim=True)
        if not bool(torch.isfinite(norm).all()):  # a NaN or +inf score, or no finite one, in some row
            rows = (~torch.isfinite(norm)).squeeze(-1).nonzero().flatten().tolist()
            raise NonFiniteLogits(rows, input_ids.shape[1] - self.start)
        logprobs = logprobs - norm
        if self.keys is None:
            choice = logprobs.argmax(-1, keepdim=True)
        else:
            if self.keys.device != scores.device:
                self.keys = self.keys.to(scores.device)
            choice = inverse_cdf(logprobs, keyed_uniform(self.keys, input_ids.shape[1] - self.start))
        self._logprobs.append(logprobs.gather(-1, choice).squeeze(-1))
        if self.keys is None:
            return scores
        return torch.full_like(scores, float("-inf")).scatter_(-1, choice, 0.0)

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """[rows, steps] log-probs of ``new_tokens`` (the generated columns of the output)."""
        steps = new_tokens.shape[1]
        if not steps:
            return torch.zeros(new_tokens.shape)
        return torch.stack(self._logprobs[:steps], dim=1).cpu()
