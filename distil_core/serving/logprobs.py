"""The three log-prob formats ``distil serve`` answers in, from the model's numbers.

- legacy completions ``logprobs`` (:class:`LegacyLogprobs`): tokens, token_logprobs,
  top_logprobs (token text → log-prob) and text_offset (where each token's text starts, in
  characters of the choice's text: :meth:`~distil_core.serving.tokens.Vocabulary.char_counts`),
  the prompt's first when echoed;
- chat ``logprobs.content`` (:func:`chat_logprobs`): per token its text, log-prob, bytes and
  top alternatives;
- vLLM's ``prompt_logprobs`` (:func:`vllm_prompt_logprobs`): per prompt position, token id →
  log-prob, rank and decoded text, the position's own token always included.

``scored`` is a prompt's scoring (:meth:`distil_core.serving.engine.LocalLM.score`): for each
position after the first, the log-prob of its token (``chosen``), that token's rank, and the
top-k ids and log-probs there.
"""

from __future__ import annotations

from typing import Any, Optional

from distil_core.serving.batcher import Generation
from distil_core.serving.tokens import Vocabulary, token_string

__all__ = ["LegacyLogprobs", "chat_logprobs", "vllm_prompt_logprobs"]


class LegacyLogprobs:
    """The legacy completions ``logprobs`` object of one choice, built prompt first."""

    def __init__(self, vocab: Vocabulary, as_ids: bool):
        self.vocab, self.as_ids = vocab, as_ids
        self.out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}

    def _add(self, token_id: int, logprob: Optional[float], top: Optional[dict[str, float]], offset: int) -> None:
        self.out["tokens"].append(self.vocab.token(token_id, self.as_ids))
        self.out["token_logprobs"].append(logprob)
        self.out["top_logprobs"].append(top)
        self.out["text_offset"].append(offset)

    def add_prompt(self, ids: list[int], scored: dict[str, Any], k: int) -> None:
        """The echoed prompt: its first token has no log-prob (nothing comes before it)."""
        starts = self.vocab.char_counts(ids)
        for j, tid in enumerate(ids):
            if j == 0:
                self._add(tid, None, None, 0)
                continue
            pairs = zip(scored["top_ids"][j - 1][:k], scored["top_lp"][j - 1][:k])
            self._add(tid, scored["chosen"][j - 1], {self.vocab.token(a, self.as_ids): b for a, b in pairs}, starts[j])

    def add_generated(self, gen: Generation, start: int, skip_special: bool) -> None:
        """The generated tokens, their offsets counted from ``start`` (the echoed prompt's length)."""
        starts = self.vocab.char_counts(gen.ids, skip_special)
        for j, (tid, lp, alts) in enumerate(zip(gen.ids, gen.logprobs, gen.top)):
            self._add(tid, lp, {self.vocab.token(a, self.as_ids): b for a, b in alts}, start + starts[j])


def _chat_token(vocab: Vocabulary, token_id: int, logprob: float) -> dict[str, Any]:
    raw = vocab.bytes[token_id]
    return {"token": token_string(raw), "logprob": logprob, "bytes": list(raw)}


def chat_logprobs(vocab: Vocabulary, gen: Generation) -> list[dict[str, Any]]:
    """The chat format's ``logprobs.content`` of one generation."""
    return [{**_chat_token(vocab, t, lp), "top_logprobs": [_chat_token(vocab, a, b) for a, b in alts]}
            for t, lp, alts in zip(gen.ids, gen.logprobs, gen.top)]


def vllm_prompt_logprobs(vocab: Vocabulary, ids: list[int], scored: dict[str, Any],
                         k: int) -> list[Optional[dict[str, Any]]]:
    """vLLM's ``prompt_logprobs``: None for the first token, then the top ``k`` plus the token itself."""
    out: list[Optional[dict[str, Any]]] = [None]
    for j in range(1, len(ids)):
        entry = {}
        for rank, (tid, lp) in enumerate(zip(scored["top_ids"][j - 1][:k], scored["top_lp"][j - 1][:k]), start=1):
            entry[str(tid)] = {"logprob": lp, "rank": rank, "decoded_token": token_string(vocab.bytes[tid])}
        if str(ids[j]) not in entry:
            entry[str(ids[j])] = {"logprob": scored["chosen"][j - 1], "rank": scored["ranks"][j - 1],
                                  "decoded_token": token_string(vocab.bytes[ids[j]])}
        out.append(entry)
    return out
