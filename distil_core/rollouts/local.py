"""Rollout generation with HF ``generate`` (KV cache), n samples per problem in one batch.

Sampling is keyed (:mod:`distil_core.rollouts.sampling`): a problem's rollouts do not depend on
which rows share its batch or on how many ranks split it.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from transformers import LogitsProcessorList

from distil_core.models.padding import pad_batch
from distil_core.models.precision import policy_autocast
from distil_core.errors import ConfigError, DistilError
from distil_core.config.rollout_sections import GREEDY_BELOW
from distil_core.rollouts.sampling import (
    KeyedSampler,
    NonFiniteLogits,
    SamplingParams,
    check_sampling,
    row_key,
    sampling_warpers,
)
from distil_core.types import Rollout

__all__ = ["Generator", "SamplingParams"]


class Generator:
    """Samples ``n`` responses per prompt from a local causal LM."""

    def __init__(self, model: Any, tokenizer: Any, params: Optional[SamplingParams] = None):
        self.model = model
        self.tokenizer = tokenizer
        self.params = params or SamplingParams()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        if self.pad_id is None:
            raise ConfigError("the tokenizer has neither a pad token nor an EOS token; generation needs one to pad "
                              "prompts and to stop (set eos_token in the model directory's tokenizer_config.json)")

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
        check_sampling(p)
        self.check_prompts(prompts, problem_ids)
        device = next(self.model.parameters()).device
        ids, mask = pad_batch(prompts, self.pad_id, side="left", device=device)
        ids, mask = ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
        sampling = p.temperature >= GREEDY_BELOW  # below it, dividing by the temperature overflows: greedy
        keys = None
        if sampling:
            if key is None:
                key = int(torch.randint(0, 2**62, (1,)))
            keys = [row_key(key, pid, g) for pid in problem_ids[: len(prompts)] for g in range(n)]
        sampler = KeyedSampler(keys, start=ids.shape[1])
        # the warpers are ours, in HF's order, so that the sampler draws from the warped scores
        processors = LogitsProcessorList([*(sampling_warpers(p) if sampling else []), sampler])
        was_training = self.model.training
        self.model.eval()
        try:
            with policy_autocast(self.model):  # model.autocast
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    do_sample=False,  # the sampler above leaves one finite score: the argmax is its draw
                    logits_processor=processors,
                    max_new_tokens=p.max_new_tokens,
                    use_cache=True,
                    pad_token_id=self.pad_id,
                    eos_token_id=self.eos_id,
                )
        except NonFiniteLogits as bad:
            where = sorted({f"{problem_ids[row // n]!r} sample {row % n}" for row in bad.rows})
            raise DistilError(
                f"the model's logits are NaN or infinite at generated token {bad.step} (problem {', '.join(where[:4])}): "
                "it has diverged or its weights are damaged; resume from an earlier checkpoint or lower optim.lr"
            ) from None
        finally:
            self.model.train(was_training)
        new_tokens = out[:, ids.shape[1]:]
        return self.to_rollouts(new_tokens, sampler.finish(new_tokens), prompts, problem_ids, n)

    def check_prompts(self, prompts: Sequence[Sequence[int]], problem_ids: Sequence[str]) -> None:
        """A ConfigError for a prompt the model cannot start from: empty, or holding a token id
        past its embeddings (a tokenizer larger than the model's vocabulary)."""
        embeddings = getattr(self.model, "get_input_embeddings", lambda: None)()
        rows = embeddings.weight.shape[0] if embeddings is not None else None
        for pid, prompt in zip(problem_ids, prompts):
            if not len(prompt):
                raise ConfigError(f"problem {pid!r}: its prompt is empty (no token ids); generation needs at least one")
            top = max(prompt)
            if rows is not None and (top >= rows or min(prompt) < 0):
                raise ConfigError(
                    f"problem {pid!r}: its prompt holds token id {top if top >= rows else min(prompt)}, outside the "
                    f"model's {rows} embeddings; the tokenizer does not belong to this model (check model.name)")

    def to_rollouts(self, new_tokens: torch.Tensor, chosen: torch.Tensor, prompts: Sequence[Sequence[int]],
                    problem_ids: Sequence[str], n: int) -> list[Rollout]:
        """One :class:`Rollout` per generated row, cut after its first EOS (kept: the policy chose it)."""
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
