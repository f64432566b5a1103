"""What went wrong with a request, and what to do about it.

:class:`FatalApiError` (authentication failed, the model does not exist): nothing will work
until the config changes, and the expert reports it as a ConfigError. :class:`CallError`: this
one query fails and the others go on. The ``openai`` and ``litellm`` SDKs (and ``httpx`` under
them) share no exception hierarchy, so :func:`classify` sorts what either raises by status code
and class name; :func:`provider_message` and :func:`retry_after` read what the provider said and
how long it asked us to wait.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Optional

from distil_core.retry import is_transient_status, retry_after_seconds

from .usage import Usage


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
