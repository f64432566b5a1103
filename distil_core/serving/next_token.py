"""How a decoding step of ``distil serve`` picks each row's next token from the model's logits.

Two things the model's logits can hold that no answer may pass on: ids past the tokenizer's
(many checkpoints pad their head to a round size; such an id has no text, no bytes, no name in
the API's answers), and NaN or infinity (broken weights, an overflow in a low-precision dtype).
The first are never picked; the second fail the request with a message, instead of an answer
drawn from noise with NaN log-probs. Sampling is keyed as in :mod:`distil_core.rollouts.sampling`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["checked_logprobs", "next_tokens"]


def checked_logprobs(logits: Any) -> Any:
    """The log-probs of ``logits`` ([rows, vocab]); refused when a row holds NaN or +inf, or no
    finite value. One reduction tells all three: the row's logsumexp is then not finite."""
    import torch

    norm = torch.logsumexp(logits, dim=-1, keepdim=True)
    if not bool(torch.isfinite(norm).all()):
        raise RuntimeError("The served model's logits are NaN or infinite: its weights are broken or overflow "
                           "in their dtype. Reload sound weights (or serve the model in float32).")
    return logits - norm


def next_tokens(logits: Any, tokens: int, ids: Any, warpers: list[Any], keys: Any, step: int) -> Any:
    """Each row's next token among the first ``tokens`` ids of ``logits`` (the tokenizer's): the
    argmax without ``keys``, else the keyed draw at position ``step`` from the distribution the
    ``warpers`` make. A row whose warped scores cannot be drawn from (NaN, or +inf: a temperature
    that overflows its logits) takes the argmax."""
    import torch

    from distil_core.rollouts.sampling import inverse_cdf, keyed_uniform

    logits = logits[:, :tokens]
    greedy = torch.argmax(logits, dim=-1)
    if keys is None:
        return greedy
    scores = logits
    for warp in warpers:  # the warpers ignore their ids argument
        scores = warp(ids, scores)
    logp = torch.log_softmax(scores, dim=-1)
    drawn = inverse_cdf(logp, keyed_uniform(keys, step)).squeeze(-1)
    usable = torch.isfinite(logp).any(-1) & ~torch.isnan(logp).any(-1)
    return torch.where(usable, drawn, greedy)
