"""Rollout generation with HF ``generate`` (KV cache), n samples per problem in one batch.

Each sampled token's log-prob under the sampling distribution (after temperature, top-k and
top-p) is recorded while generating, by :class:`_SampledLogprobs`, a logits processor placed
after the warpers. It holds one step's scores at a time, so recording costs O(rows × V) memory
instead of the O(steps × rows × V) that ``output_scores=True`` keeps until the call returns
(12.9 GB for 64 rows × 1024 tokens at V = 49152).

Sampling is *keyed*: the token drawn for sample ``g`` of problem ``id`` at position ``t`` is the
Gumbel-max choice ``argmax(log p + G)``, whose noise ``G`` is a hash of (call key, ``id``,
``g``, ``t``, token) rather than a draw from a shared random stream. Which rows share a batch
(and how many ranks split it) then changes nothing: a problem's rollouts are the same whether
it is generated alone, with 15 others, or on another rank, which is what lets a run on 2
processes follow the 1-process run, and an evaluation be split across ranks. Gumbel-max is an
exact sample from the warped distribution, and costs about what ``softmax`` + ``multinomial`` do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import hashlib

import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .modeling import pad_batch
from .types import Rollout


@dataclass
class SamplingParams:
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


class Generator:
    """Samples ``n`` responses per prompt from a local causal LM."""

    def __init__(self, model: Any, tokenizer: Any, params: Optional[SamplingParams] = None):
        self.model = model
        self.tokenizer = tokenizer
        self.params = params or SamplingParams()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[Sequence[int]],
        problem_ids: Sequence[str],
        n: int,
        *,
        params: Optional[SamplingParams] = None,
        key: Optional[int] = None,
    ) -> list[Rollout]:
        """Rollouts ordered problem-major: rows ``i*n .. i*n+n-1`` belong to ``prompts[i]``.

        ``key`` names this call's random draws (the trainer passes one per (seed, step)); each
        row's noise depends on it and on the row's problem id and sample index only. Without
        a key, one is drawn from torch's global generator (``torch.manual_seed`` applies).
        """
        p = params or self.params
        device = next(self.model.parameters()).device
        ids, mask = pad_batch(prompts, self.pad_id, side="left", device=device)
        ids, mask = ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
        sampling = p.temperature > 0
        recorder = _SampledLogprobs()
        # the warpers are ours, in HF's order, so that the recorder sees the scores sampled from
        processors = LogitsProcessorList(_warpers(p) if sampling else [])
        processors.append(recorder)
        if sampling:
            if key is None:
                key = int(torch.randint(0, 2**62, (1,)))
            rows = [row_key(key, pid, g) for pid in problem_ids[: len(prompts)] for g in range(n)]
            processors.append(GumbelNoise(rows, start=ids.shape[1]))
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,  # the Gumbel noise above makes the argmax a sample
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                logits_processor=processors,
                max_new_tokens=p.max_new_tokens,
                use_cache=True,
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_id,
            )
        finally:
            self.model.train(was_training)
        width = ids.shape[1]
        new_tokens = out[:, width:]
        chosen = recorder.finish(new_tokens)
        rollouts = []
        for row in range(new_tokens.shape[0]):
            toks = new_tokens[row].tolist()
            finished = self.eos_id in toks
            length = toks.index(self.eos_id) + 1 if finished else len(toks)
            toks = toks[:length]
            prompt_index = row // n
            rollouts.append(
                Rollout(
                    problem_id=problem_ids[prompt_index],
                    group_index=row % n,
                    response_text=self.tokenizer.decode(toks, skip_special_tokens=True),
                    response_ids=toks,
                    prompt_ids=list(prompts[prompt_index]),
                    sampling_logprobs=chosen[row, :length].tolist(),
                    finished=finished,
                )
            )
        return rollouts


def _warpers(p: SamplingParams) -> list[LogitsProcessor]:
    """HF's sampling warpers for ``p``, in the order ``generate`` applies them."""
    out: list[LogitsProcessor] = []
    if p.temperature != 1.0:
        out.append(TemperatureLogitsWarper(p.temperature))
    if p.top_k:
        out.append(TopKLogitsWarper(top_k=p.top_k))
    if p.top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=p.top_p))
    return out


class _SampledLogprobs(LogitsProcessor):
    """Records log p(sampled token) under the scores handed to the sampler, one step at a time.

    Called with step t's final scores, it keeps them and their log-normaliser; at step t+1 the
    token drawn at t is the last column of ``input_ids``, and only that one score is kept. The
    last step's token is read from the output in :meth:`finish`.
    """

    def __init__(self) -> None:
        self._pending: Optional[torch.Tensor] = None
        self._chosen: list[torch.Tensor] = []
        self._norms: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._pending is not None:
            self._chosen.append(self._pending.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self._pending = scores
        self._norms.append(torch.logsumexp(scores.float(), dim=-1))
        return scores

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """[rows, steps] log-probs of ``new_tokens`` (the generated columns of the output)."""
        steps = new_tokens.shape[1]
        if self._pending is not None and len(self._chosen) < steps:
            last = new_tokens[:, len(self._chosen) : len(self._chosen) + 1]
            self._chosen.append(self._pending.gather(-1, last).squeeze(-1))
        self._pending = None
        if not steps:
            return torch.zeros(new_tokens.shape)
        chosen = torch.stack(self._chosen[:steps], dim=1).float()
        return (chosen - torch.stack(self._norms[:steps], dim=1)).cpu()


# -- keyed sampling ------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    """A 64-bit pattern as the int64 that torch stores."""
    x &= _MASK64
    return x - (1 << 64) if x >> 63 else x


_GOLDEN, _MIX1, _MIX2, _VOCAB_STRIDE = (_signed(c) for c in (
    0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93))


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (wrapping multiply, logical shifts by masking)."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _MIX1
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _MIX2
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def row_key(key: int, problem_id: str, sample: int) -> int:
    """The noise key of sample ``sample`` of problem ``problem_id`` in the call keyed ``key``."""
    digest = hashlib.blake2b(f"{key}\x00{problem_id}\x00{sample}".encode(), digest_size=8).digest()
    return _signed(int.from_bytes(digest, "little"))


def gumbel_noise(keys: torch.Tensor, position: int, vocab: int) -> torch.Tensor:
    """[rows, vocab] standard Gumbel noise, a pure function of (row key, position, token)."""
    base = _mix(keys + _signed(_GOLDEN * (position + 1)))
    tokens = torch.arange(vocab, dtype=torch.int64, device=keys.device) * _VOCAB_STRIDE
    bits = _mix(base[:, None] ^ tokens[None, :])
    uniform = (((bits >> 40) & 0xFFFFFF).float() + 0.5) * (1.0 / (1 << 24))  # in (0, 1), 24 bits
    return -torch.log(-torch.log(uniform))


class GumbelNoise(LogitsProcessor):
    """Adds keyed Gumbel noise to the final scores; greedy decoding then draws an exact sample."""

    def __init__(self, row_keys: Sequence[int], start: int):
        self.keys = torch.tensor(list(row_keys), dtype=torch.int64)
        self.start = start

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.keys.device != scores.device:
            self.keys = self.keys.to(scores.device)
        noise = gumbel_noise(self.keys, input_ids.shape[1] - self.start, scores.shape[-1])
        return scores + noise.to(scores.dtype)
