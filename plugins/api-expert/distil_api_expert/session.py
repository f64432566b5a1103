"""One scoring call's requests, whichever transport (:mod:`.transports`) sends them.

A semaphore caps the requests in flight, each request must be answered whole within
``timeout_s`` (a deadline, not a per-read timeout: a server that trickles bytes cannot stall
training), transient failures are retried as the core's :class:`~distil_core.retry.RetryPolicy`
says (exponential backoff with jitter, honouring Retry-After up to the maximum back-off),
identical requests share one answer, answers go to the disk cache (:mod:`.cache`), and what
each query cost is counted (:mod:`.usage`). :func:`checked` turns whatever a hostile answer
makes the caller's check trip over into a malformed-answer CallError.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from distil_core.retry import RetryPolicy

from .cache import ResponseCache
from .errors import CallError, FatalApiError, classify, provider_message, retry_after
from .usage import Pricing, Usage, token_counts


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
