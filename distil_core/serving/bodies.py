"""Request bodies of ``distil serve`` as they come off the connection (what they hold is
:mod:`distil_core.serving.requests`).

A body is read by its ``Content-Length``: one that is not a non-negative integer (or several
values that disagree) is a 400, one over :data:`MAX_BODY_BYTES` a 413 (neither is read). A
body sent with ``Transfer-Encoding: chunked`` (what requests, httpx and curl send for a
streamed upload) is decoded (:func:`read_chunked`) under the same cap, a 413 as soon as a
chunk's size would pass it (that chunk is not read). Framing that is not HTTP/1.1's chunked
encoding is a 400: a chunk size that is not hexadecimal, chunk data not followed by CRLF, a
line ended by a bare LF, a size line over :data:`MAX_CHUNK_LINE` bytes, trailers that do not
end within :data:`MAX_TRAILERS` lines, or more bytes of framing than the cap. So are a transfer
coding other than ``chunked`` alone, ``Transfer-Encoding`` beside ``Content-Length`` (which one
frames the body is how requests are smuggled past proxies), and ``Transfer-Encoding`` in an
HTTP/1.0 request. A refused body is not read on, so its connection is closed after the answer;
to a client that sent ``Expect: 100-continue`` the refusal is sent instead of the 100 (Continue),
so it never sends the body (:func:`body_length` checks the headers alone).

Every read is bounded, and a client that stops sending (half a chunk, a size line without its
end, trailers without their empty line) is left to the socket's read timeout, which closes the
connection; one that goes on sending a byte now and then meets its request's deadline
(:data:`~distil_core.serving.handler.REQUEST_DEADLINE_S`). No body holds a thread for long.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from distil_core.serving.requests import ApiError

__all__ = ["MAX_BODY_BYTES", "MAX_CHUNK_LINE", "MAX_TRAILERS", "body_length", "read_body", "read_chunked"]

MAX_BODY_BYTES = 64 << 20
"""The largest request body read (64 MiB: a prompt of a million token ids is about 7 MiB)."""
MAX_CHUNK_LINE = 4096
"""The longest line of chunked framing read (a chunk size with its extensions, or one trailer), CRLF included."""
MAX_TRAILERS = 100
"""The most trailer lines after a chunked body's last chunk (http.client's limit on header lines)."""

_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]+)[ \t]*(?:;[^\r\n]*)?\r\n")
"""A chunk-size line: hex digits, then any chunk extensions (read past, as RFC 9112 lets a
recipient do), then CRLF; nothing else (no sign, ``0x``, whitespace before the digits or bare LF)."""
_HEX_DIGITS = [bytes([c]) for c in b"0123456789abcdefABCDEF"]


def read_body(headers: Any, version: str, rfile: Any, cap: int = MAX_BODY_BYTES) -> Optional[bytes]:
    """The body of a request with ``headers`` (an ``http.client.HTTPMessage``) and HTTP
    ``version``, from ``rfile``. None: the client closed before sending it all. Raises
    :class:`ApiError` for a body it will not read."""
    length = body_length(headers, version, cap)
    if length is None:
        return read_chunked(rfile, cap)
    raw = rfile.read(length) if length else b""
    return raw if len(raw) == length else None


def body_length(headers: Any, version: str, cap: int = MAX_BODY_BYTES) -> Optional[int]:
    """The body's length by its headers alone, None when it is chunked; raises :class:`ApiError`
    for framing it will not read. Checked before a client that sent ``Expect: 100-continue`` is
    told to send its body, so a body that would be refused is never sent."""
    codings = ",".join(headers.get_all("Transfer-Encoding") or [])
    lengths = {v.strip() for value in headers.get_all("Content-Length") or [] for v in value.split(",")}
    if codings.strip():
        if version == "HTTP/1.0":
            raise ApiError(400, "Transfer-Encoding is not defined for HTTP/1.0; send the body with a "
                                "Content-Length header, or use HTTP/1.1.")
        if lengths:
            raise ApiError(400, "The request has both Transfer-Encoding and Content-Length; send one of them.")
        if [c.strip().lower() for c in codings.split(",")] != ["chunked"]:
            raise ApiError(400, f"Transfer-Encoding {codings!r} is not supported; distil serve decodes "
                                "'chunked' alone (send the body uncompressed, chunked or with a Content-Length).")
        return None
    if not lengths:
        return 0
    if len(lengths) > 1:
        raise ApiError(400, f"The request has several Content-Length values ({', '.join(sorted(lengths))}); "
                            "send one.")
    given = lengths.pop()
    if not given.isascii() or not given.isdigit():
        raise ApiError(400, f"Content-Length {given!r} is not a number of bytes.")
    length = int(given)
    if length > cap:
        raise _too_large(f"The request body ({length} bytes)", cap)
    return length


def read_chunked(rfile: Any, cap: int = MAX_BODY_BYTES) -> Optional[bytes]:
    """A body sent with ``Transfer-Encoding: chunked`` (RFC 9112, section 7.1), read from
    ``rfile`` up to and including the CRLF that ends its trailers, so the connection can carry
    the next request. Trailer fields are read and dropped.

    None: the connection ended before the body did. :class:`ApiError`: 413 once the data would
    pass ``cap`` bytes, 400 for framing that is not chunked encoding.
    """
    return _Chunked(rfile, cap).read()


class _Chunked:
    """One chunked body being read: its data so far and the bytes of framing read."""

    def __init__(self, rfile: Any, cap: int):
        self.rfile, self.cap = rfile, cap
        self.pieces: list[bytes] = []
        self.size = self.framing = 0

    def read(self) -> Optional[bytes]:
        while True:
            length = self._size()
            if length is None:
                return None
            if length == 0:
                break
            if not self._data(length):
                return None
        for _ in range(MAX_TRAILERS + 1):  # the trailer section: field lines, then an empty line
            text = self._line("a trailer line")
            if text is None:
                return None
            if text == b"\r\n":
                return b"".join(self.pieces)
        raise ApiError(400, f"Chunked body: the trailers after the last chunk do not end within {MAX_TRAILERS} "
                            "lines (an empty line ends them).")

    def _size(self) -> Optional[int]:
        """The next chunk's size (0: the last chunk; None: the connection closed)."""
        ahead = self.rfile.peek(1)[:41]  # a size line that cannot be one is refused now, not at its end
        if ahead and ahead[:1] not in _HEX_DIGITS:
            raise _not_a_size(ahead[: ahead.find(b"\n") + 1 or None])
        text = self._line("a chunk-size line")
        if text is None:
            return None
        match = _CHUNK_SIZE.fullmatch(text)
        if match is None:
            raise _not_a_size(text)
        return int(match.group(1), 16)

    def _data(self, length: int) -> bool:
        """Read one chunk's data and its CRLF (False: the connection closed)."""
        if self.size + length > self.cap:
            raise _too_large(f"The chunked request body (a chunk of {length} bytes after {self.size})", self.cap)
        data = self.rfile.read(length)
        if len(data) < length:
            return False
        self.pieces.append(data)
        self.size += length
        end = self.rfile.read(2)
        self.framing += 2
        if len(end) < 2:
            return False
        if end != b"\r\n":
            raise ApiError(400, f"Chunked body: a chunk's data is not followed by CRLF (got {_shown(end)} after "
                                f"the {length} bytes its size gave); the size must count the data exactly.")
        return True

    def _line(self, what: str) -> Optional[bytes]:
        """One line of framing with its CRLF (None: the connection closed within it)."""
        text = self.rfile.readline(MAX_CHUNK_LINE + 1)
        self.framing += len(text)
        if len(text) > MAX_CHUNK_LINE:
            raise ApiError(400, f"Chunked body: {what} is longer than {MAX_CHUNK_LINE} bytes.")
        if self.framing > self.cap:
            raise ApiError(400, f"Chunked body: more than {self.cap} bytes of chunk framing (sizes, extensions "
                                "and trailers); send larger chunks.")
        if not text.endswith(b"\n"):
            return None
        if not text.endswith(b"\r\n"):
            raise ApiError(400, f"Chunked body: {what} ends with a bare LF; lines end with CRLF.")
        return text


def _not_a_size(text: bytes) -> ApiError:
    return ApiError(400, f"Chunked body: the chunk size {_shown(text)} is not a hexadecimal number followed by CRLF.")


def _too_large(what: str, cap: int) -> ApiError:
    limit = f"{cap >> 20} MiB" if cap >= 1 << 20 else f"{cap} bytes"
    return ApiError(413, f"{what} is larger than distil serve reads ({limit}).", code="request_too_large")


def _shown(raw: bytes) -> str:
    return repr(raw[:40].decode("latin-1")) + ("..." if len(raw) > 40 else "")
