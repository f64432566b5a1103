"""Reading a provider's answer: the tokens and log-probs it scored, or the text it wrote.

Anything an answer lacks or gets wrong (no choices, an error object sent with status 200,
missing or malformed log-probs, no text, a text withheld by the content filter) is a
:class:`~distil_api_expert.errors.CallError` whose kind says which, so one bad answer fails
its query and the others go on. The log-prob formats themselves are read by
:mod:`distil_api_expert.align`.
"""

from __future__ import annotations

from typing import Any, Sequence

from . import align
from .errors import CallError


def _first_choice(answer: dict[str, Any]) -> dict[str, Any]:
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        error = answer.get("error")  # some providers answer 200 with an error object instead
        said = error.get("message") if isinstance(error, dict) else error
        said = " ".join(said.split())[:300] if isinstance(said, str) and said.strip() else None
        raise CallError("malformed", "the answer has no choices" + (f"; the provider said: {said}" if said else ""))
    return choices[0]


def echo_tokens(answer: dict[str, Any]) -> list[align.ApiToken]:
    try:
        return align.parse_echo(_first_choice(answer))
    except align.NoLogprobs as exc:
        raise CallError("no_logprobs", str(exc)) from None
    except align.BadLogprobs as exc:
        raise CallError("malformed", f"the answer's log-probs are malformed: {exc}") from None


def prompt_logprobs_tokens(answer: dict[str, Any], ids: Sequence[int]) -> list[align.ApiToken]:
    choice = _first_choice(answer)
    if "prompt_logprobs" not in choice and isinstance(answer.get("prompt_logprobs"), list):
        choice = {"prompt_logprobs": answer["prompt_logprobs"]}
    try:
        return align.parse_prompt_logprobs(choice, ids)
    except align.NoLogprobs as exc:
        raise CallError("no_logprobs", str(exc)) from None
    except align.BadLogprobs as exc:
        raise CallError("malformed", f"the answer's log-probs are malformed: {exc}") from None


def written_text(answer: dict[str, Any], chat: bool, with_logprobs: bool, usable: bool = True) -> str:
    """The text of an answer the expert wrote. With ``usable`` (every query but the probe's),
    an answer with nothing to train on fails: an empty text (a reasoning model that spent
    ``max_tokens`` before writing, say) would teach the student to stop at once, and one the
    provider cut for its content filter is not the expert's answer. An answer cut at
    ``max_tokens`` (``finish_reason: length``) with text is kept: ``max_tokens`` defaults to the
    student's own ``max_new_tokens``."""
    choice = _first_choice(answer)
    message = choice.get("message")
    text = (message if isinstance(message, dict) else {}).get("content") if chat else choice.get("text")
    if not isinstance(text, str):
        raise CallError("malformed", "the answer has no text")
    if with_logprobs:
        try:
            align.check_written_logprobs(choice.get("logprobs"), chat)
        except align.NoLogprobs as exc:
            raise CallError("no_logprobs", str(exc)) from None
        except align.BadLogprobs as exc:
            raise CallError("malformed", f"the answer's log-probs are malformed: {exc}") from None
    finish = choice.get("finish_reason")
    if usable and finish == "content_filter":
        raise CallError("filtered", "the provider withheld the answer (finish_reason 'content_filter')")
    if usable and not text.strip():
        hint = f" (finish_reason {finish!r})" if finish else ""
        if finish == "length":
            hint = (" (finish_reason 'length': max_tokens ran out before any text; a reasoning model may need a "
                    "larger options.max_tokens)")
        raise CallError("empty", f"the answer is empty{hint}")
    return text
