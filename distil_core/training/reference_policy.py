"""The reference policy of ``loss.kl_to_reference``, and per-row log-probs under a policy.

``reference: initial`` keeps a frozen copy of the policy's starting weights, made before the
policy is sharded or trained (so a resumed run rebuilds the same copy from the same start), or
shares the one a frozen ``self`` expert already holds;
``reference: lora_base`` keeps nothing: the policy itself with its LoRA adapters switched off
(peft's ``disable_adapter()``) *is* the base model, whose weights are never trained.
Reference log-probs are computed once per batch, under ``no_grad``, before the first update.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from distil_core.config import RunConfig
from distil_core.errors import ConfigError
from distil_core.losses.reference import token_logprobs
from distil_core.models.forward import output_projection, response_hidden, response_logits
from distil_core.models.lora import is_lora


class ReferencePolicy:
    """What the KL penalty compares the policy with: a frozen ``copy`` of the initial policy, or
    (``copy=None``) the policy's own base weights, its adapters switched off."""

    def __init__(self, copy_: Optional[Any], estimator: str, coef: float):
        self.copy, self.estimator, self.coef = copy_, estimator, coef

    @classmethod
    def build(cls, config: RunConfig, model: Any, expert: Any = None) -> Optional["ReferencePolicy"]:
        """The run's reference, or None when ``loss.kl_to_reference.coef`` is 0. Call before the
        policy is sharded or trained. An ``expert`` that already holds a frozen copy of the
        starting weights (its optional ``initial_copy()``, e.g. ``self`` with ``weights: frozen``)
        lends it to the ``initial`` reference: both only read it, so one copy serves both."""
        kl = config.loss.kl_to_reference
        if kl.coef == 0:
            return None
        if kl.reference == "lora_base":
            if not is_lora(model):
                raise ConfigError("loss.kl_to_reference.reference: lora_base needs model.lora (LoRA adapters on "
                                  "the policy); set model.lora, or use reference: initial")
            return cls(None, kl.estimator, kl.coef)
        lent = getattr(expert, "initial_copy", None)
        frozen = lent() if callable(lent) else None
        if frozen is not None:
            return cls(frozen, kl.estimator, kl.coef)
        frozen = copy.deepcopy(model)
        frozen.requires_grad_(False)
        frozen.eval()
        return cls(frozen, kl.estimator, kl.coef)

    def scoring(self, policy: Any) -> Any:
        """(the module to run, a context to run it in): the copy, or the policy without adapters."""
        if self.copy is not None:
            return self.copy, contextlib.nullcontext()
        return policy, policy.disable_adapter()


@torch.no_grad()
def row_logprobs(model: Any, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], pad_id: int,
                 *, chunk_size: int = 0) -> list[torch.Tensor]:
    """``log π(target_t | prompt, target_<t)`` of each row, a float32 ``[len(target)]`` tensor each,
    in one forward pass. ``chunk_size > 0``: from the last hidden states, projected that many
    positions at a time (the logits of the whole batch are never held, as in the chunked losses)."""
    if chunk_size:
        hidden, tokens, _ = response_hidden(model, prompts, targets, pad_id)
        weight, bias = output_projection(model)
        # projected as the chunked losses project (float32, float64 kept): the first pass's
        # importance ratio is then exactly 1 under a bfloat16 model too
        compute = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        weight, bias = weight.to(compute), bias.to(compute) if bias is not None else None
        parts = [token_logprobs(F.linear(hidden[:, a : a + chunk_size].to(compute), weight, bias), tokens[:, a : a + chunk_size])
                 for a in range(0, tokens.shape[1], chunk_size)]
        logprobs = torch.cat(parts, dim=1) if parts else tokens.float()
    else:
        logits, tokens, _ = response_logits(model, prompts, targets, pad_id)
        logprobs = token_logprobs(logits.float(), tokens)
    return [logprobs[i, : len(t)].float() for i, t in enumerate(targets)]


def padded(per_row: Sequence[torch.Tensor], rows: Sequence[int], width: int, device: Any) -> torch.Tensor:
    """``[len(rows), width]``: row ``rows[i]``'s log-probs from column 0, zeros after them."""
    out = torch.zeros(len(rows), width, dtype=torch.float32, device=device)
    for i, j in enumerate(rows):
        values = per_row[j][:width]
        out[i, : len(values)] = values.to(device)
    return out
