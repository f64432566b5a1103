"""The text of a generation: whole, once it ended, and piece by piece while it is streamed.

A streamed answer must add up to exactly the text the same request gets unstreamed, and no
piece may show text the end would take back. Two things could: a byte-level token can be part
of a UTF-8 character (the tiny tokenizer spells ``é`` as two tokens), and a stop string can
start in one token and end in a later one (the answer is cut before it). So
:class:`TextDeltas` shows a row's text only up to its last whole character, and holds back a
tail that could still grow into a stop string. Torch-free.
"""

from __future__ import annotations

from typing import Sequence

from distil_core.serving.batcher import Generation
from distil_core.serving.tokens import Vocabulary

__all__ = ["generation_text", "TextDeltas"]


def generation_text(vocab: Vocabulary, gen: Generation, skip_special: bool) -> str:
    """The answer text of a row that ended: cut before its stop string, or without its EOS
    (a sample that ends at EOS keeps the token but not its text, as in vLLM)."""
    if gen.cut_text is not None:
        return gen.cut_text
    kept = gen.ids[:-1] if gen.finish_reason == "stop" else gen.ids
    return vocab.text(kept, skip_special=skip_special)


def held_stop_prefix(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop string."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


class TextDeltas:
    """One row's text as it grows: :meth:`update` returns what is new and safe to show."""

    def __init__(self, vocab: Vocabulary, stops: Sequence[str], skip_special: bool):
        self.vocab, self.stops, self.skip_special = vocab, list(stops), skip_special
        self.sent = ""

    def update(self, gen: Generation, final: bool = False) -> str:
        """The text to add after ``gen``'s latest tokens; ``final`` (or ``gen.done``): all of
        what is left, exactly as :func:`generation_text` has it."""
        if final or gen.done:
            text = generation_text(self.vocab, gen, self.skip_special)
        else:
            text = self.vocab.whole_text(gen.ids, self.skip_special)
            text = text[: len(text) - held_stop_prefix(text, self.stops)]
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        new, self.sent = text[len(self.sent):], text
        return new
