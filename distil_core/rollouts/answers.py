"""A rollout server's completions answer, checked where it enters.

The server is another program, possibly another version or another kind than the one the
config assumes, so its answer is checked field by field before anything is built from it: a
choice that is not an object, a token id outside the policy's vocabulary (which would index past
the embedding on the next forward pass, a device-side assert on a GPU), a log-prob that is not a
finite number at most 0, or more tokens than were asked for each become one
:class:`~distil_core.rollouts.client.ServerError` naming the address and the field, not an
``IndexError`` three calls later.
"""

from __future__ import annotations

import math
import re
from typing import Any

from distil_core.rollouts.client import ServerError

__all__ = ["choices_of", "sampled_tokens", "served_models"]

_TOKEN_ID = re.compile(r"token_id:([0-9]{1,12})")  # ASCII digits only ("²" is a digit to str.isdigit)
LOGPROB_SLACK = 1e-4  # a log-prob of exactly 0 may come back a rounding error above it


def choices_of(answer: Any, n: int, url: str) -> list[dict[str, Any]]:
    """The ``n`` choices of a completions answer, ordered by their ``index`` (0 … n-1, each once)."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or len(choices) != n:
        got = len(choices) if isinstance(choices, list) else "no"
        raise ServerError(f"{url} answered with {got} choices for n={n}; the server must support 'n' (vLLM does).")
    if not all(isinstance(c, dict) for c in choices):
        raise ServerError(f"{url} answered with a choice that is not a JSON object; is rollout.server.base_url an "
                          "OpenAI-compatible completions server?")
    indices = [c.get("index") for c in choices]
    if all(i is None for i in indices):
        return choices
    if sorted(i for i in indices if type(i) is int) != list(range(n)):
        raise ServerError(f"{url} numbered its choices {indices}; each of 0 … {n - 1} should appear once.")
    return sorted(choices, key=lambda c: c["index"])


def sampled_tokens(choice: dict[str, Any], url: str, vocab_size: int, max_tokens: int) -> tuple[list[int], list[float]]:
    """(token ids, their sampling log-probs) of one choice."""
    lp = choice.get("logprobs")
    tokens = lp.get("tokens") if isinstance(lp, dict) else None
    logprobs = lp.get("token_logprobs") if isinstance(lp, dict) else None
    if not isinstance(tokens, list) or not isinstance(logprobs, list):
        raise ServerError(f"{url} returned no log-probs for the sampled tokens; the server backend needs "
                          "'logprobs' in completions (vLLM and `distil serve` give them).")
    if len(tokens) > max_tokens:
        raise ServerError(f"{url} returned {len(tokens)} tokens for max_tokens={max_tokens}; the server must "
                          "honour max_tokens.")
    ids = [token_id(t, url, vocab_size) for t in tokens]
    if len(logprobs) != len(ids):
        raise ServerError(f"{url} returned {len(logprobs)} log-probs for {len(ids)} tokens; each sampled token "
                          "needs its log-prob.")
    bad = next((i for i, x in enumerate(logprobs) if not _is_logprob(x)), None)
    if bad is not None:
        raise ServerError(f"{url} returned the log-prob {str(logprobs[bad])[:40]} for token {bad}; a log-prob is a "
                          "finite number at most 0.")
    return ids, [float(x) for x in logprobs]


def token_id(token: Any, url: str, vocab_size: int) -> int:
    """The id in a ``token_id:N`` token, checked against the policy's vocabulary."""
    found = _TOKEN_ID.fullmatch(token) if isinstance(token, str) else None
    if found is None:
        raise ServerError(f"{url} returned the token {str(token)[:40]!r} as text, not as 'token_id:N': the server "
                          "ignored return_tokens_as_token_ids. Use a server that supports it (vLLM, `distil serve`), "
                          "so rollouts keep the exact sampled ids.")
    value = int(found.group(1))
    if value >= vocab_size:
        raise ServerError(f"{url} returned token id {value}, outside the policy's vocabulary (0 … {vocab_size - 1}); "
                          "the server serves another model than the one being trained (rollout.server.model).")
    return value


def served_models(answer: Any, url: str) -> list[str]:
    """The model ids a ``GET /v1/models`` answer lists."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list) or not all(isinstance(m, dict) for m in data):
        raise ServerError(f"{url} answered without a list of models in 'data'; is rollout.server.base_url an "
                          "OpenAI-compatible server?")
    return [str(m.get("id")) for m in data]


def _is_logprob(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value)) and value <= LOGPROB_SLACK
    except OverflowError:  # an integer past a float's range (JSON allows it)
        return False
