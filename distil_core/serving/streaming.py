"""Streamed answers (``"stream": true``): OpenAI's chunks, sent as server-sent events.

The chunks carry text as the model thread decodes it (:meth:`LocalLM.stream
<distil_core.serving.engine.LocalLM.stream>` yields the rows after every step), each piece
cut by :class:`~distil_core.serving.text.TextDeltas` so that it never splits a UTF-8
character or shows the start of a stop string the answer will not have; the pieces of a
choice add up to the text the same request gets unstreamed. Completions stream
``text_completion`` chunks, chat ``chat.completion.chunk`` chunks (the role first, then the
content, then ``finish_reason`` with an empty delta); ``stream_options.include_usage`` adds a
last chunk with ``usage`` and no choices, and ``"usage": null`` on the others. Then
``data: [DONE]``.

Log-probs, ``echo`` and ``prompt_logprobs`` are not streamed: asking for them with
``"stream": true`` is a 400 naming the parameter.

The request is checked before the first byte is sent (errors are plain 400s); a failure while
decoding ends the stream with an ``error`` event, which the OpenAI SDK raises.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from distil_core.serving.requests import ApiError, ChatRequest, CompletionRequest, token_usage
from distil_core.serving.text import TextDeltas

if TYPE_CHECKING:
    from distil_core.serving.engine import LocalLM

__all__ = ["completion_chunks", "chat_chunks", "server_sent_events"]

Chunk = dict[str, Any]


def _refuse(param: str) -> ApiError:
    return ApiError(400, f"'{param}' cannot be combined with 'stream': true on distil serve; send the request "
                         "without streaming to get it.", param=param)


def completion_chunks(lm: "LocalLM", r: CompletionRequest, adapter: Optional[str]) -> Iterator[Chunk]:
    """The chunks of a streamed completions request; the request is checked before this returns."""
    for param, asked in (("logprobs", r.logprobs is not None), ("echo", r.echo),
                         ("prompt_logprobs", r.prompt_logprobs is not None)):
        if asked:
            raise _refuse(param)
    prompts = lm.completion_prompts(r)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": adapter or lm.model_name}

    def choice(index: int, text: str, finish: Optional[str]) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}

    return _chunks(lm, r, adapter, prompts, r.max_tokens, head, choice, opening=None)


def chat_chunks(lm: "LocalLM", r: ChatRequest, adapter: Optional[str]) -> Iterator[Chunk]:
    """The chunks of a streamed chat request; the request is checked before this returns."""
    if r.logprobs:
        raise _refuse("logprobs")
    ids, max_tokens = lm.chat_prompt(r)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": adapter or lm.model_name}

    def choice(index: int, text: str, finish: Optional[str]) -> dict[str, Any]:
        delta = {"content": text} if finish is None else {}
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    def opening(index: int) -> dict[str, Any]:
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                "finish_reason": None}

    return _chunks(lm, r, adapter, [ids], max_tokens, head, choice, opening)


def _chunks(lm: "LocalLM", r: Any, adapter: Optional[str], prompts: list[list[int]], max_tokens: int,
            head: Chunk, choice: Callable[[int, str, Optional[str]], dict[str, Any]],
            opening: Optional[Callable[[int], dict[str, Any]]]) -> Iterator[Chunk]:
    """Rows come prompt-major (choice ``index`` = row); each row's pieces, then its end."""
    usage = r.stream_options.include_usage if r.stream_options is not None else False
    sampling = r.sampling()
    rows = len(prompts) * r.n

    def chunk(*choices: dict[str, Any]) -> Chunk:
        return {**head, "choices": list(choices), **({"usage": None} if usage else {})}

    if opening is not None:
        for index in range(rows):
            yield chunk(opening(index))
    texts = [TextDeltas(lm.vocab, sampling["stop"], sampling["skip_special"]) for _ in range(rows)]
    ended = [False] * rows
    last: list[Any] = []
    with contextlib.closing(lm.stream(prompts, r.n, max_tokens, sampling, adapter)) as steps:
        for last in steps:  # closed early (the client hung up): the model thread drops the rows
            for index, gen in enumerate(last):
                if ended[index]:
                    continue
                piece = texts[index].update(gen)
                if piece:
                    yield chunk(choice(index, piece, None))
                if gen.done:
                    ended[index] = True
                    yield chunk(choice(index, "", gen.finish_reason))
    for index, gen in enumerate(last):  # the rows that reached max_tokens
        if not ended[index]:
            piece = texts[index].update(gen, final=True)
            if piece:
                yield chunk(choice(index, piece, None))
            yield chunk(choice(index, "", gen.finish_reason))
    if usage:
        completion = sum(len(gen.ids) for gen in last)
        prompt = sum(len(ids) for ids in prompts)
        yield {**head, "choices": [], "usage": token_usage(prompt, completion)}


def server_sent_events(chunks: Iterator[Chunk]) -> Iterator[bytes]:
    """``data: {chunk}`` events, then ``data: [DONE]``; a failure on the way is an ``error`` event."""
    try:
        for item in chunks:
            yield b"data: " + json.dumps(item).encode() + b"\n\n"
    except ApiError as exc:
        yield b"data: " + json.dumps(exc.body()).encode() + b"\n\n"
        return
    except Exception as exc:  # a bug or a model failure, after the 200 was sent
        error = ApiError(500, f"{type(exc).__name__}: {exc}", "server_error")
        yield b"data: " + json.dumps(error.body()).encode() + b"\n\n"
        return
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    yield b"data: [DONE]\n\n"
