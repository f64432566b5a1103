"""Talking to the provider: one request in, one JSON answer out.

:class:`OpenAITransport` and :class:`LiteLLMTransport` send a request through the ``openai``
SDK or ``litellm`` (imported only when chosen, so importing the plugin stays cheap) and return
the answer as a plain dict. Retries, the deadline, shared answers and the cache are the
:class:`~distil_api_expert.session.Session`'s, the same for either client. The openai
transport reads every body through :func:`capped_body`: the SDK would read any body whole.
"""

from __future__ import annotations

import functools
import json
import zlib
from typing import Any, Optional

from .errors import CallError
from .litellm_loader import import_litellm


class OpenAITransport:
    """The ``openai`` SDK's async client; any OpenAI-compatible server through ``api_base``.

    Every answer body, an error's included, is read through :func:`capped_body` and refused
    past ``max_answer_bytes`` (declared or received): a runaway or hostile server cannot make
    the trainer hold an arbitrarily large body. The SDK reads an error's body whole before it
    raises, so the cap is put on the HTTP client the SDK is given (a response hook), where it
    covers every response whatever the SDK does with it.
    """

    name = "openai"

    def __init__(self, model: str, api_base: Optional[str], api_key: str, timeout_s: float,
                 max_answer_bytes: int = 64 * 2**20):
        self.model, self.api_base, self.api_key, self.timeout_s = model, api_base, api_key, timeout_s
        self.max_answer_bytes = max_answer_bytes
        self.client: Any = None

    async def open(self) -> None:
        import httpx
        import openai

        http = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=True, event_hooks={"response": [self._cap]},
                                 headers={"Accept-Encoding": ", ".join(DECODED)})
        self.client = openai.AsyncOpenAI(base_url=self.api_base, api_key=self.api_key,
                                         timeout=self.timeout_s, max_retries=0, http_client=http)

    async def _cap(self, response: Any) -> None:
        encoding = response.headers.get("content-encoding", "").strip().lower()
        response.stream = capped_body(response.stream, self.max_answer_bytes, response.status_code,
                                      response.headers.get("content-length"), encoding)
        if encoding and encoding != "identity":  # decoded (and capped) by the capped body itself
            del response.headers["content-encoding"]

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    async def request(self, endpoint: str, params: dict[str, Any]) -> dict[str, Any]:
        import httpx

        body = {"model": self.model, **{k: v for k, v in params.items() if k != "extra_body"}}
        body.update(params.get("extra_body") or {})
        path = "/chat/completions" if endpoint == "chat" else "/completions"
        # the SDK's raw-stream mode: the answer's body is read here, through the capped body (_cap)
        response = await self.client.post(path, body=body, cast_to=httpx.Response,
                                          options={"headers": {"X-Stainless-Raw-Response": "stream"}})
        try:
            data = await response.aread()
        finally:
            await response.aclose()
        return json.loads(data)  # JSONDecodeError (a ValueError): a malformed answer


DECODED = ("gzip", "deflate")
"""The content codings asked for and decoded under the cap (zlib's; anything else is refused)."""


def capped_body(inner: Any, limit: int, status: int, declared: Optional[str], encoding: str = "") -> Any:
    """A response's body as it arrives, refused with CallError("too_large") once it declares
    (``Content-Length``) or has sent more than ``limit`` bytes: nothing past the cap is read.

    A compressed body (``encoding``: gzip or deflate) is decoded here, and the cap counts the
    decoded bytes too: a few hundred kilobytes of gzip can unpack to gigabytes, and the SDK reads
    an error's body whole. The caller drops the Content-Encoding header, so nothing decodes it twice."""
    return _capped_body_class()(inner, limit, status, declared, encoding)


@functools.lru_cache(maxsize=None)
def _capped_body_class() -> type:
    import httpx  # only with client openai: importing this module stays cheap

    class CappedBody(httpx.AsyncByteStream):
        def __init__(self, inner: Any, limit: int, status: int, declared: Optional[str], encoding: str):
            self.inner, self.limit, self.declared, self.encoding = inner, limit, str(declared or ""), encoding
            self.what = "the answer" if 200 <= status < 300 else f"the error answer (HTTP {status})"

        async def __aiter__(self) -> Any:
            if self.declared.isascii() and self.declared.isdigit() and int(self.declared) > self.limit:
                raise CallError("too_large", _too_large(f"{self.what} declares {int(self.declared)} bytes", self.limit))
            decode = body_decoder(self.encoding, self.what)
            size = unpacked = 0
            async for chunk in self.inner:
                size += len(chunk)
                if size > self.limit:
                    raise CallError("too_large", _too_large(
                        f"{self.what} passed {self.limit} bytes and was not finished", self.limit))
                if decode is not None:
                    chunk = decode.decompress(chunk, self.limit + 1 - unpacked)
                    unpacked += len(chunk)
                    if unpacked > self.limit or decode.unconsumed_tail:
                        raise CallError("too_large", _too_large(
                            f"{self.what} unpacks ({self.encoding}) past {self.limit} bytes", self.limit))
                yield chunk
            if decode is not None:
                yield decode.flush()

        async def aclose(self) -> None:
            await self.inner.aclose()

    return CappedBody


def body_decoder(encoding: str, what: str) -> Any:
    """A zlib decompressor for a body sent with Content-Encoding ``encoding`` (None for none); a
    coding that was not asked for is a CallError naming it."""
    if encoding in ("", "identity"):
        return None
    if encoding not in DECODED:
        raise CallError("malformed", f"{what} is encoded as {encoding!r}, which was not asked for "
                        f"(Accept-Encoding: {', '.join(DECODED)})")
    return zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)


def _too_large(what: str, limit: int) -> str:
    return (f"{what}, over the cap of {limit / 2**20:g} MB; it was not read. "
            "Raise options.max_answer_mb if answers this large are expected")


class LiteLLMTransport:
    """``litellm`` (``acompletion`` / ``atext_completion``); ``extra`` goes into every call."""

    name = "litellm"

    def __init__(self, model: str, api_base: Optional[str], api_key: Optional[str], timeout_s: float,
                 extra: Optional[dict[str, Any]] = None):
        self.model, self.api_base, self.api_key, self.timeout_s = model, api_base, api_key, timeout_s
        self.extra = dict(extra or {})
        self.litellm: Any = None

    async def open(self) -> None:
        self.litellm = import_litellm()

    async def close(self) -> None:
        # litellm keeps async clients in a module-level cache; they belong to this event loop,
        # which ends with the scoring call, so close and forget them
        close = getattr(self.litellm, "close_litellm_async_clients", None)
        if close is not None:
            try:
                await close()
            except Exception:
                pass
        flush = getattr(getattr(self.litellm, "in_memory_llm_clients_cache", None), "flush_cache", None)
        if callable(flush):
            flush()

    async def request(self, endpoint: str, params: dict[str, Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self.model, "timeout": self.timeout_s, "num_retries": 0, **self.extra, **params}
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self.api_key:
            kwargs["api_key"] = self.api_key
        call = self.litellm.acompletion if endpoint == "chat" else self.litellm.atext_completion
        response = await call(**kwargs)
        return _plain(response)


def _plain(response: Any) -> dict[str, Any]:
    if isinstance(response, dict):
        return response
    for method in ("model_dump", "dict", "json"):
        fn = getattr(response, method, None)
        if callable(fn):
            out = fn()
            return json.loads(out) if isinstance(out, str) else out
    raise TypeError(f"unexpected response type {type(response).__name__}")
