"""Model outputs at response positions, shared by the trainer and the local experts: logits or
hidden states that predict each response token (padding and positions: :mod:`~distil_core.models.padding`)."""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from distil_core.models import shared_prefix
from distil_core.models.padding import pad_batch, position_ids
from distil_core.models.precision import full_precision, policy_autocast, to_float32


def response_logits(
    model: Any, prefixes: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits that predict each response token, given its prefix.

    Returns ``logits [B, T, V]``, ``tokens [B, T]`` and ``mask [B, T]`` with every response
    starting at column 0 (T = longest response): ``logits[b, t]`` predicts ``tokens[b, t]``.
    One forward pass over the rows, left-padded so all responses end on the last column; or,
    where rows share a prompt, one pass over the distinct prompts and one over the responses
    (:mod:`~distil_core.models.shared_prefix`). The decoder's hidden
    states are re-aligned at the response positions first and only those ``B × T`` rows go
    through the output projection, so ragged rows cost what plain slicing of equal rows costs
    (moving ``[B, T, V]`` logits around would cost more than the projection saves). A model
    whose logits are not a plain projection of its hidden states (:func:`projects_plainly`)
    has the model compute logits for the last T + 1 positions (``logits_to_keep``) instead.
    """
    if projects_plainly(model):
        return _at_responses(model, prefixes, responses, pad_id, _decoder_columns(model),
                             project=model.get_output_embeddings(), share=True)
    return _at_responses(model, prefixes, responses, pad_id, _logit_columns(model))


def _logit_columns(model: Any):
    def last_columns(ids: Tensor, mask: Tensor, width: int) -> Tensor:
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), logits_to_keep=width + 1,
                    use_cache=False)  # one pass: no KV cache to build (and none to refuse under checkpointing)
        return out.logits
    return last_columns


def _decoder_columns(model: Any):
    def last_columns(ids: Tensor, mask: Tensor, width: int) -> Tensor:
        out = model.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)
        return out.last_hidden_state[:, -(width + 1) :]
    return last_columns


def output_projection(model: Any) -> tuple[Tensor, Optional[Tensor]]:
    """(weight ``[V, H]``, bias or None) of the model's output layer, for the chunked losses."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not hasattr(head, "weight"):
        raise ValueError(f"{type(model).__name__} has no output projection (get_output_embeddings)")
    return head.weight, getattr(head, "bias", None)


def response_hidden(
    model: Any, prefixes: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Like :func:`response_logits`, but the last hidden states ``[B, T, H]`` instead of logits.

    ``hidden[b, t] @ weight.T (+ bias)`` (see :func:`output_projection`) are the logits that
    predict ``tokens[b, t]``; :func:`check_projection` verifies that a model computes its
    logits that way.
    """
    return _at_responses(model, prefixes, responses, pad_id, _decoder_columns(model), share=True)


def _at_responses(model: Any, prefixes, responses, pad_id: int, last_columns, project: Any = None,
                  share: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """What predicts each response token, column t of row b predicting ``responses[b][t]``,
    then ``project`` it: from :func:`_one_pass` with ``last_columns``, or, with ``share``
    (``last_columns`` returns the decoder's hidden states), from the shared-prompt passes where
    they apply (:mod:`~distil_core.models.shared_prefix`)."""
    device = next(model.parameters()).device
    lengths = [len(r) for r in responses]
    width = max(lengths, default=0)
    with policy_autocast(model) as autocast:  # model.autocast; the losses get float32 either way
        window = _shared(model, prefixes, responses, pad_id, device) if share else None
        if window is None:
            window = _one_pass(prefixes, responses, pad_id, device, last_columns, lengths, width)
        aligned = window if project is None else project(window)
    if autocast is not None:
        aligned = to_float32(aligned)
    resp_mask = torch.arange(width, device=device).unsqueeze(0) < torch.tensor(lengths, device=device).unsqueeze(1)
    tokens, _ = pad_batch(responses, pad_id, side="right", device=device)
    return aligned, tokens[:, :width], resp_mask.to(aligned.dtype)


def _one_pass(prefixes, responses, pad_id: int, device: Any, last_columns, lengths: list[int], width: int) -> Tensor:
    """``[B, T, ·]`` outputs predicting each response token: ``last_columns(ids, mask, width)``
    (the model's output for the last width + 1 positions of the left-padded ``prefix + response``
    rows), each row shifted so that its response starts at column 0."""
    ids, mask = pad_batch([list(p) + list(r) for p, r in zip(prefixes, responses)], pad_id, side="left", device=device)
    window = last_columns(ids, mask, width)[:, :-1]  # window[:, j] predicts the token in column L - width + j
    if any(n != width for n in lengths):  # shift ragged rows left (they were end-aligned above)
        starts = torch.tensor([width - n for n in lengths], device=device)
        cols = (torch.arange(width, device=device).unsqueeze(0) + starts.unsqueeze(1)).clamp(max=max(width - 1, 0))
        window = window.gather(1, cols.unsqueeze(-1).expand(-1, -1, window.shape[-1]))
    return window


def _shared(model: Any, prefixes, responses, pad_id: int, device: Any) -> Optional[Tensor]:
    """The decoder's hidden states from a pass that computes each shared prompt once, or None
    where that does not apply."""
    if _sharded(model):
        return None
    plan = shared_prefix.plan_sharing(prefixes, responses)
    if plan is None:
        return None
    decoder = model.get_decoder()
    positions = max(map(len, plan.heads)) + plan.width
    if not shared_prefix.can_share(model, decoder, plan, positions):
        return None
    return shared_prefix.shared_prefix_hidden(decoder, plan, prefixes, responses, pad_id, device)


@torch.no_grad()
def check_projection(model: Any, pad_id: int, sample: Sequence[int] = (1, 2, 3, 4)) -> None:
    """Raise ValueError unless the model's logits are its output projection of its decoder's
    last hidden states (no logit scaling or soft-capping), as the chunked losses and the
    projection of gathered hidden states in :func:`response_logits` assume."""
    prefix, response = [list(sample[:2])], [list(sample[2:])]
    with full_precision(model), without_dropout(model):  # structural: rounding or dropout would fail it
        logits, _, _ = _at_responses(model, prefix, response, pad_id, _logit_columns(model))
        hidden, _, _ = response_hidden(model, prefix, response, pad_id)
    weight, bias = output_projection(model)
    projected = torch.nn.functional.linear(hidden, weight, bias)
    if not torch.allclose(projected.float(), logits.float(), rtol=1e-3, atol=1e-3):
        raise ValueError(
            f"{type(model).__name__} does not compute its logits as a plain projection of its last "
            "hidden states (scaled or soft-capped logits?); set loss.chunk_size: 0 for this model"
        )


_PLAIN: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


def projects_plainly(model: Any) -> bool:
    """Whether ``model``'s logits are a plain projection of its decoder's output, so that
    :func:`response_logits` may project gathered hidden states itself; checked once per model
    object (:func:`check_projection`). A model sharded by FSDP never is (its root forward is
    what gathers the embeddings and head, so it must be called whole); sharding changes the
    model's class in place, so that part is asked on every call."""
    if _sharded(model):
        return False
    known = _PLAIN.get(model)
    if known is None:
        try:
            check_projection(model, 0)
            known = True
        except (ValueError, AttributeError, TypeError, NotImplementedError):
            known = False
        _PLAIN[model] = known
    return known


def _sharded(model: Any) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without distributed
        return False
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def without_dropout(model: Any) -> Iterator[None]:
    """The block with every module in eval mode, each module's own mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def topk_with_tail(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(ids, log-probs) of the k most likely tokens of softmax(logits), each ``[..., k]``.

    The tail bucket is implicit (1 - Σ exp(log-probs)); the top-k losses add it. This is what an
    expert with dense logits sends when it can only afford top-k.
    """
    logprobs, ids = torch.topk(F.log_softmax(logits, dim=-1), k, dim=-1)
    return ids, logprobs


def vocab_size(model: Any, tokenizer: Any) -> int:
    """The width of the policy's logits: what a dense expert's logits must match and every
    expert token id must lie below, and every sampled id must index (it can exceed the
    tokenizer's length: padded vocabularies). A wrapped model (``.module``) is read through."""
    size = getattr(getattr(getattr(model, "module", model), "config", None), "vocab_size", None)
    return int(size) if isinstance(size, int) and size > 0 else len(tokenizer)
