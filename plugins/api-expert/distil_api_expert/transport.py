"""Talking to the provider: one request in, one JSON answer out.

- :class:`OpenAITransport` and :class:`LiteLLMTransport` send a request through the ``openai``
  SDK or ``litellm`` (imported only when chosen) and return the answer as a plain dict.
- :class:`Session` wraps a transport for one scoring call: a semaphore caps the requests in
  flight, each request must be answered whole within ``timeout_s`` (a deadline, not a per-read
  timeout: a server that trickles bytes cannot stall training), transient failures are retried
  as the core's :class:`~distil_core.retry.RetryPolicy` says (exponential backoff with jitter,
  honouring Retry-After up to the maximum back-off), identical requests share one answer, and
  answers go to a disk cache. Token counts in an answer's ``usage`` are believed only when they
  are non-negative integers.
- :func:`classify` sorts exceptions from either SDK into what to do about them.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import re
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from distil_core import SECRET_NAME, url_secrets
from distil_core.io import atomic_write_json
from distil_core.retry import RetryPolicy, is_transient_status, retry_after_seconds

# -- errors -------------------------------------------------------------------------------------


class FatalApiError(Exception):
    """Authentication failed or the model does not exist: nothing will work until the config changes."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class CallError(Exception):
    """This request failed (retries exhausted, a malformed or unusable answer); other queries go on."""

    def __init__(self, kind: str, message: str, usage: Optional["Usage"] = None):
        super().__init__(message)
        self.kind = kind
        self.usage = usage or Usage()


_TRANSIENT_NAMES = {"APITimeoutError", "Timeout", "APIConnectionError", "TimeoutException", "TransportError",
                    "ConnectError", "ReadTimeout", "RemoteProtocolError", "TimeoutError",
                    "ServiceUnavailableError", "InternalServerError", "RateLimitError"}


def status_of(exc: BaseException) -> Optional[int]:
    for source in (exc, getattr(exc, "response", None)):
        code = getattr(source, "status_code", None)
        if isinstance(code, int):
            return code
    return None


_UNPARSED_BY_LITELLM = re.compile(r"object has no attribute 'model_dump'|line \d+ column \d+ \(char \d+\)")
"""What litellm's own 500 says when the provider's 200 answer could not be parsed: a JSON
decoder's position (broken JSON) or the missing ``model_dump`` of a text or a JSON list; a
provider's real 500 reads "Error code: 500"."""


def classify(exc: BaseException) -> str:
    """``auth`` | ``not_found`` | ``transient`` | ``malformed`` | ``bad_request`` | ``error``."""
    if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError, RecursionError)):  # nested past the JSON reader
        return "malformed"
    status = status_of(exc)
    names = {cls.__name__ for cls in type(exc).__mro__}
    text = str(exc)
    if "InternalServerError" in names and "Error code:" not in text and _UNPARSED_BY_LITELLM.search(text):
        return "malformed"  # asking again gets the same answer
    if status in (401, 403) or names & {"AuthenticationError", "PermissionDeniedError"}:
        return "auth"
    if "missing credentials" in text.lower():  # litellm reports a missing key as a server error
        return "auth"
    if status == 404 or "NotFoundError" in names:
        return "not_found"
    if any(type(cause).__name__ == "TooManyRedirects" for cause in causes(exc)):
        return "error"  # a redirect loop: asking again only loops again
    if is_transient_status(status):
        return "transient"
    if names & _TRANSIENT_NAMES or isinstance(exc, (asyncio.TimeoutError, ConnectionError)):
        return "transient"
    if status in (400, 422) or names & {"BadRequestError", "UnprocessableEntityError", "UnsupportedParamsError"}:
        return "bad_request"
    return "error"


def causes(exc: BaseException) -> list[BaseException]:
    """The exceptions ``exc`` was raised from (its ``__cause__`` chain, nearest first): an SDK's
    "Connection error." hides what went wrong (refused, a redirect loop) there."""
    found, seen = [], {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
        found.append(exc)
    return found


def provider_message(exc: BaseException) -> str:
    """What the provider said, on one line, with the cause an SDK's own error wraps."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    under = causes(exc)
    if under:
        cause = " ".join(str(under[-1]).split())
        if cause and cause not in text:
            text = f"{text} ({type(under[-1]).__name__}: {cause})"
    return text if len(text) <= 600 else text[:600] + "…"


def retry_after(exc: BaseException) -> Optional[float]:
    """Seconds the provider asked us to wait (``retry-after-ms`` or ``Retry-After``), if it said."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    return retry_after_seconds(headers, getattr(exc, "litellm_response_headers", None))


# -- transports ---------------------------------------------------------------------------------


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


def import_litellm() -> Any:
    """litellm, without its network fetch of the model cost map (it ships a local copy)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    with warnings.catch_warnings():  # its pydantic models warn at import; nothing for our users to act on
        warnings.simplefilter("ignore")
        import litellm

    litellm.suppress_debug_info = True
    # its pydantic models warn when first used; nothing for our users to act on
    warnings.filterwarnings("ignore", message=".*is using the `ReadOnly` qualifier.*", category=UserWarning)
    return litellm


def _plain(response: Any) -> dict[str, Any]:
    if isinstance(response, dict):
        return response
    for method in ("model_dump", "dict", "json"):
        fn = getattr(response, method, None)
        if callable(fn):
            out = fn()
            return json.loads(out) if isinstance(out, str) else out
    raise TypeError(f"unexpected response type {type(response).__name__}")


# -- accounting ---------------------------------------------------------------------------------


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


# -- cache --------------------------------------------------------------------------------------


class ResponseCache:
    """Answers on disk, one JSON file per request hash; each written whole or not at all, so a
    run killed mid-write never leaves an answer that reads as garbage.

    The cache only saves requests: a file that cannot be read back (damaged, even nested too
    deeply for the JSON reader) is a miss, and a write the disk refuses (full, read-only) is
    warned about once and the run goes on uncached, since the answer itself has arrived.
    """

    def __init__(self, directory: str):
        self.directory = directory
        self.write_failed = False
        os.makedirs(directory, exist_ok=True)

    @staticmethod
    def key(request: dict[str, Any]) -> str:
        canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, key[:2], key + ".json")

    def get(self, key: str) -> Optional[dict[str, Any]]:
        try:
            with open(self._path(key), encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError, RecursionError):  # missing, or damaged by something other than us
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        try:
            atomic_write_json(self._path(key), value)
        except OSError as exc:
            if not self.write_failed:
                self.write_failed = True
                warnings.warn(f"expert 'api': cannot write to the answer cache {self.directory} ({exc}); answers "
                              "are used but not cached. Free some space there, or change options.cache_dir.",
                              RuntimeWarning, stacklevel=2)


# -- one scoring call ---------------------------------------------------------------------------


def retry_policy(max_retries: int = 4, backoff_s: float = 0.5, backoff_max_s: float = 30.0) -> RetryPolicy:
    """The plugin's options as the core's retry policy. A provider's Retry-After is believed up
    to ``backoff_max_s`` and no further: the server cannot make one query wait longer than the
    configured maximum back-off (a ``Retry-After: 3600`` would otherwise park training for an
    hour per retry). Backoff has jitter, to spread the retries of concurrent queries."""
    return RetryPolicy(retries=max_retries, backoff_s=backoff_s, backoff_max_s=backoff_max_s,
                       retry_after_max_s=backoff_max_s, jitter=True)


class DeadlineExceeded(TimeoutError):
    """The whole answer did not arrive within ``timeout_s`` (connecting and every read together)."""


@dataclass
class Session:
    """One scoring call's requests: concurrency cap, deadline, retries, shared answers, cache, usage."""

    transport: Any
    retry: RetryPolicy
    pricing: Pricing
    max_concurrency: int
    cache: Optional[ResponseCache] = None
    cache_scope: dict[str, Any] = field(default_factory=dict)
    _semaphore: Any = None
    _pending: dict[str, Any] = field(default_factory=dict)

    async def __aenter__(self) -> "Session":
        self._semaphore = asyncio.Semaphore(self.max_concurrency)
        await self.transport.open()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.transport.close()

    async def call(self, endpoint: str, params: dict[str, Any], check: Callable[[dict[str, Any]], Any],
                   *, use_cache: bool = True) -> tuple[Any, Usage]:
        """``check(answer)`` turns the answer into what the caller needs, or raises CallError."""
        key = ResponseCache.key({**self.cache_scope, "endpoint": endpoint, "params": params})
        if use_cache and self.cache is not None:
            stored = self.cache.get(key)
            if stored is not None:
                try:
                    return checked(check, stored), Usage(cached=1)
                except CallError:
                    pass  # an answer this version cannot use: ask again
        if key in self._pending:  # the same request is already on its way: share its answer
            try:
                answer = await asyncio.shield(self._pending[key])
            except CallError as exc:
                raise CallError(exc.kind, str(exc)) from None
            return checked(check, answer), Usage(cached=1)
        future = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            answer, usage = await self._fetch(endpoint, params)
        except BaseException as exc:
            del self._pending[key]
            future.set_exception(exc if isinstance(exc, Exception) else CallError("error", "cancelled"))
            future.exception()  # marked as retrieved: sharers re-raise it, nobody else needs it
            raise
        future.set_result(answer)
        try:
            result = checked(check, answer)
        except CallError as exc:
            exc.usage = usage  # the request was made (and paid for) even if its answer is unusable
            raise
        if use_cache and self.cache is not None:
            self.cache.put(key, answer)
        return result, usage

    async def _attempt(self, endpoint: str, params: dict[str, Any]) -> Any:
        """One request, answered whole within the transport's ``timeout_s`` or DeadlineExceeded.

        The SDKs' own timeouts apply to each read, so a server sending a byte now and then
        would never trip them; this deadline covers connecting and reading the whole answer.
        Waiting for a free slot under ``max_concurrency`` does not count.
        """
        timeout_s = self.transport.timeout_s
        async with self._semaphore:
            try:
                return await asyncio.wait_for(self.transport.request(endpoint, params), timeout_s)
            except asyncio.TimeoutError:
                raise DeadlineExceeded(f"the request timed out: no complete answer within timeout_s={timeout_s:g} s "
                                       "(connecting and reading the whole answer)") from None

    async def _fetch(self, endpoint: str, params: dict[str, Any]) -> tuple[dict[str, Any], Usage]:
        usage = Usage()
        attempt = 0
        while True:
            usage.requests += 1
            try:
                answer = await self._attempt(endpoint, params)
            except CallError as exc:  # the transport's own verdict (an answer too large): not retried
                raise CallError(exc.kind, str(exc), usage) from None
            except Exception as exc:
                kind = classify(exc)
                message = provider_message(exc)
                if kind in ("auth", "not_found"):
                    raise FatalApiError(kind, message) from None
                if kind == "transient" and attempt < self.retry.retries:
                    await asyncio.sleep(self.retry.delay(attempt, retry_after(exc)))
                    attempt += 1
                    usage.retries += 1
                    continue
                if kind == "transient":
                    tries = f"{attempt + 1} attempt" + ("s" if attempt else "")
                    message = f"gave up after {tries}: {message}"
                if kind == "malformed":
                    message = f"the answer is malformed: not JSON ({message})"
                raise CallError(kind, message, usage) from None
            if not isinstance(answer, dict):
                raise CallError("malformed", f"the answer is a JSON {type(answer).__name__}, not an object", usage)
            prompt_tokens, completion_tokens = token_counts(answer.get("usage"))
            usage.prompt_tokens += prompt_tokens
            usage.completion_tokens += completion_tokens
            usage.cost_usd += self.pricing.cost(prompt_tokens, completion_tokens)
            return answer, usage


def checked(check: Callable[[dict[str, Any]], Any], answer: dict[str, Any]) -> Any:
    """``check(answer)``, with anything it trips over in a hostile answer (a string where a
    number belongs, a missing key) reported as a malformed answer rather than escaping raw."""
    try:
        return check(answer)
    except CallError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        raise CallError("malformed", f"the answer is malformed ({type(exc).__name__}: {provider_message(exc)})") from None


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


_SECRET = re.compile(r"(sk-[A-Za-z0-9_\-]{6})[A-Za-z0-9_\-]+")
MIN_SECRET_CHARS = 4  # shorter values would blot out ordinary words of a message


def secret_values(api_key: Optional[str], options: Optional[Mapping[str, Any]] = None,
                  api_base: Optional[str] = None) -> list[str]:
    """The configured key, every text value under a secret-looking name in ``options`` (nested
    mappings included) and the secrets written into ``api_base`` (``url_secrets``): what
    :func:`redact` must never let through."""
    found = [api_key] if api_key else []
    found += url_secrets(api_base)
    stack = [options or {}]
    while stack:
        for name, value in stack.pop().items():
            if isinstance(value, Mapping):
                stack.append(value)
            elif isinstance(value, str) and SECRET_NAME.search(str(name)):
                found.append(value)
    return sorted({v for v in found if len(v) >= MIN_SECRET_CHARS}, key=len, reverse=True)


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with every value of ``secrets`` (see :func:`secret_values`) replaced by ``***``
    and anything shaped like an OpenAI key shortened: messages end up in logs and metrics."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return _SECRET.sub(r"\1…", text)
