"""What the queries cost: tokens, requests, retries and USD.

:class:`Usage` is one query's account (the trainer sums them per step into metrics.jsonl),
:class:`Pricing` turns token counts into USD, and :func:`token_counts` reads the counts an
answer reports, believing only non-negative integers: a provider's bogus count must not
corrupt the run's totals.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from .litellm_loader import import_litellm


@dataclass
class Usage:
    """What one query cost. ``cached`` counts answers served without a request; ``misaligned``
    counts prompt-scoring answers that could not be put on the student's positions."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0  # at the configured or litellm's prices; 0 for a local server
    cached: int = 0
    retries: int = 0  # attempts after the first, whatever the cause
    requests: int = 0
    misaligned: int = 0

    def add(self, other: "Usage") -> "Usage":
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in self.__dataclass_fields__}


@dataclass
class Pricing:
    """USD per 1000 tokens; without prices, litellm's cost map (client litellm) or nothing."""

    prompt_per_1k: Optional[float] = None
    completion_per_1k: Optional[float] = None
    model: str = ""
    use_litellm: bool = False

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        if self.prompt_per_1k is not None or self.completion_per_1k is not None:
            return (prompt_tokens * (self.prompt_per_1k or 0.0) + completion_tokens * (self.completion_per_1k or 0.0)) / 1000
        if self.use_litellm:
            try:
                p, c = import_litellm().cost_per_token(model=self.model, prompt_tokens=prompt_tokens,
                                                       completion_tokens=completion_tokens)
                return float(p) + float(c)
            except Exception:  # a model the cost map does not know
                return 0.0
        return 0.0


def token_counts(counts: Any) -> tuple[int, int]:
    """``prompt_tokens`` and ``completion_tokens`` of an answer's ``usage``, for accounting.

    Only non-negative integers are believed. Anything else (a string, a negative or fractional
    count, a ``usage`` that is not an object) counts 0 with a warning: the answer itself may be
    fine, so it is still used, but the cost it reports cannot be, and a negative count would
    otherwise subtract from the run's totals.
    """
    if counts is None:
        return 0, 0  # servers may leave usage out
    if not isinstance(counts, Mapping):
        _bad_usage(f"usage is {type(counts).__name__} {_short(counts)}, not an object")
        return 0, 0
    out = []
    for name in ("prompt_tokens", "completion_tokens"):
        value = counts.get(name)
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)
        if not ok:
            _bad_usage(f"usage.{name} is {_short(value)}, not a non-negative integer")
        out.append(value if ok and value is not None else 0)
    return out[0], out[1]


def _bad_usage(what: str) -> None:
    warnings.warn(f"expert 'api': the provider's answer has {what}; it counts as 0 tokens (and 0 USD) "
                  "in expert_prompt_tokens / expert_completion_tokens / expert_cost_usd. The answer itself "
                  "is used; check the server's usage reporting if the totals matter.", RuntimeWarning, stacklevel=2)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"
