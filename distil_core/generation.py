"""Rollout generation with HF ``generate`` (KV cache), n samples per problem in one batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

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
    ) -> list[Rollout]:
        """Rollouts ordered problem-major: rows ``i*n .. i*n+n-1`` belong to ``prompts[i]``."""
        p = params or self.params
        device = next(self.model.parameters()).device
        ids, mask = pad_batch(prompts, self.pad_id, side="left", device=device)
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                num_return_sequences=n,
                do_sample=p.temperature > 0,
                temperature=p.temperature if p.temperature > 0 else None,
                top_p=p.top_p,
                top_k=p.top_k,
                max_new_tokens=p.max_new_tokens,
                use_cache=True,
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_id,
                return_dict_in_generate=True,
                output_scores=True,
            )
        finally:
            self.model.train(was_training)
        width = ids.shape[1]
        new_tokens = out.sequences[:, width:]
        # scores are the processed logits the sampler drew from: log-probs under the sampler.
        if out.scores:
            # step by step: no [B, steps, V] copy of the scores
            chosen = torch.stack(
                [
                    torch.log_softmax(step.float(), dim=-1).gather(-1, new_tokens[:, i : i + 1]).squeeze(-1)
                    for i, step in enumerate(out.scores)
                ],
                dim=1,
            )
        else:
            chosen = torch.zeros(new_tokens.shape)
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
