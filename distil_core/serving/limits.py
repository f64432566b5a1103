"""How much work one request of ``distil serve`` may ask for, checked before any is done.

The body cap (:data:`~distil_core.serving.bodies.MAX_BODY_BYTES`) bounds what a request
*sends*, not what it asks for. Two requests of a few bytes or a few megabytes would otherwise
take the server's memory and its model thread:

- **Rows.** A completions request decodes ``len(prompt) × n`` rows as one batch. 200 copies of a
  short prompt with ``n: 128`` (under 3 KB of JSON) are 25,600 rows, which took 2.4 GB and 25 s
  of the model thread for one token each on the tiny model. A request may ask for at most
  ``max_request_rows`` (:data:`MAX_REQUEST_ROWS`, ``distil serve --max-request-rows``); the
  toolkit's own rollout client sends one prompt with ``n`` samples per request.
- **Text.** A prompt given as text is tokenized before its length in tokens is known; a 30 MB
  prompt (under the body cap) took 12 GB and two minutes to tokenize, only to be refused as
  longer than the model's context. No token of the vocabulary holds more than its longest
  token's bytes, so for the byte-level and SentencePiece tokenizers the toolkit serves a text of
  more bytes than ``positions × that`` cannot fit, and is refused before the tokenizer sees it
  (:func:`check_text_fits`). The bound assumes at least :data:`MIN_BYTES_PER_TOKEN` bytes a token
  to leave room for tokenizers that read a run of unknown bytes as one token; one that fuses any
  run, or normalises text to fewer bytes, could fit a text the bound refuses.
"""

from __future__ import annotations

from distil_core.serving.requests import ApiError

__all__ = ["MAX_REQUEST_ROWS", "MIN_BYTES_PER_TOKEN", "check_rows", "check_text_fits"]

MAX_REQUEST_ROWS = 1024
"""The most rows (prompts × ``n``) one request decodes: eight times a 16-problem, 8-sample step."""
MIN_BYTES_PER_TOKEN = 32
"""The bytes per token the text bound assumes at least, whatever the vocabulary's longest token."""


def check_rows(prompts: int, n: int, cap: int) -> None:
    """A 400 when ``prompts × n`` rows pass ``cap``."""
    if prompts * n > cap:
        raise ApiError(400, f"The request asks for {prompts} prompt(s) × n={n} = {prompts * n} generations; this "
                            f"server decodes at most {cap} for one request (distil serve --max-request-rows). Send "
                            "fewer prompts per request, or a smaller n.", param="n")


def check_text_fits(size: int, positions: int, token_bytes: int, param: str = "prompt") -> None:
    """A 400 (context length exceeded, naming ``param``) when ``size`` bytes of text cannot fit in
    ``positions`` tokens of at most ``token_bytes`` bytes each (:data:`MIN_BYTES_PER_TOKEN` at least)."""
    bound = positions * max(token_bytes, MIN_BYTES_PER_TOKEN)
    if size > bound:
        raise ApiError(400, f"This model's maximum context length is {positions} tokens, and the prompt's "
                            f"{size} bytes of text are more than that many tokens can hold (at most {bound} "
                            "bytes); shorten it.", param=param, code="context_length_exceeded")
