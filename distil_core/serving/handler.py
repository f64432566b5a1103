"""One connection of ``distil serve`` (:class:`RequestHandler`): how its requests are read off
the socket and their answers written back; what an answer holds is
:meth:`~distil_core.serving.http.LocalOpenAIServer.handle`.

Two clocks bound how long a client may hold its connection's thread. One is the socket's read
timeout (:data:`READ_TIMEOUT_S`): a client that sends nothing for that long, idle between
requests or within one, loses its connection. The other is the request's own deadline
(:data:`REQUEST_DEADLINE_S`): once a request's first byte has come, its request line, headers
and body must all arrive within it. Without it a client sending a byte every few seconds (one
header line at a time, or a body trickled against its ``Content-Length``) never trips the read
timeout, and a few hundred such clients hold every connection slot.
"""

from __future__ import annotations

import io
import json
import socket
import time
from http.server import BaseHTTPRequestHandler
from typing import Any, Iterator, Optional, Union

from distil_core.serving.batcher import ClientGone, watching_client
from distil_core.serving.bodies import MAX_BODY_BYTES, body_length, read_body
from distil_core.serving.connections import hung_up
from distil_core.serving.requests import ApiError

__all__ = ["Response", "READ_TIMEOUT_S", "REQUEST_DEADLINE_S", "DeadlineReader", "RequestHandler", "json_response"]

Response = tuple[int, dict[str, str], Union[bytes, Iterator[bytes]]]  # status, headers, body (or a stream)
READ_TIMEOUT_S = 60.0
"""How long a connection may send nothing (within a request, or idle between requests) before it is closed."""
REQUEST_DEADLINE_S = 120.0
"""How long a request may take to arrive whole (its line, headers and body), from its first byte.
A body at the 64 MiB cap arrives within it at about half a megabyte per second."""


def json_response(status: int, body: Any, headers: Optional[dict[str, str]] = None) -> Response:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body).encode()


class DeadlineReader(io.RawIOBase):
    """The connection's socket as a raw stream whose reads end at the request's deadline.

    A read waits at most the idle timeout, and once the request's first byte has come, at most
    what is left of its deadline; then it raises ``TimeoutError`` (which ``http.server`` answers
    by closing the connection). The socket's timeout is put back after every read, so writing
    the answer is not cut short by a deadline that only concerns the request."""

    def __init__(self, sock: socket.socket, idle_s: Optional[float], deadline_s: float):
        self.sock, self.idle_s, self.deadline_s = sock, idle_s, deadline_s
        self.started: Optional[float] = None

    def next_request(self) -> None:
        """The next byte read begins a new request (the deadline starts again there)."""
        self.started = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        wait = self.idle_s
        if self.started is not None:
            left = self.started + self.deadline_s - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the request did not arrive whole within {self.deadline_s:g} s")
            wait = left if wait is None else min(wait, left)
        self.sock.settimeout(wait)
        try:
            count = self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(self.idle_s)
        if count and self.started is None:
            self.started = time.monotonic()
        return count


class RequestHandler(BaseHTTPRequestHandler):
    """One connection of ``distil serve``: its requests read (each whole within
    ``request_deadline_s``), handed to ``app.handle`` and answered, streamed or whole."""

    protocol_version = "HTTP/1.1"
    timeout = READ_TIMEOUT_S  # the socket's (read_timeout_s): a read that waits longer ends the connection
    request_deadline_s = REQUEST_DEADLINE_S
    app: Any  # the LocalOpenAIServer

    def setup(self) -> None:
        super().setup()
        self.deadline = DeadlineReader(self.connection, self.timeout, self.request_deadline_s)
        self.rfile = io.BufferedReader(self.deadline)

    def handle_one_request(self) -> None:
        self.deadline.next_request()
        super().handle_one_request()

    def _serve(self, verb: str) -> None:
        try:
            raw = self._body()
        except ApiError as exc:  # the body was not read, so the connection cannot carry another request
            response = json_response(exc.status, exc.body(), {"Connection": "close"})
        else:
            if raw is None:  # the client hung up halfway through its body
                self.close_connection = True
                return
            try:
                with watching_client(lambda: hung_up(self.connection)):
                    response = self.app.handle(verb, self.path, self.headers, raw)
            except ClientGone:  # withdrawn while it waited for the model: no one to answer
                self.app.count("hung_up")
                self.close_connection = True
                return
        self._send(*response, head=verb == "HEAD")

    def handle_expect_100(self) -> bool:
        """``Expect: 100-continue``: a body refused by its headers is answered instead of the 100."""
        try:
            body_length(self.headers, self.request_version, MAX_BODY_BYTES)
        except ApiError as exc:
            self._send(*json_response(exc.status, exc.body(), {"Connection": "close"}), head=False)  # closes after
            return False
        return super().handle_expect_100()

    def _body(self) -> Optional[bytes]:
        """The request body (:func:`~distil_core.serving.bodies.read_body`; None: the client hung up)."""
        return read_body(self.headers, self.request_version, self.rfile, MAX_BODY_BYTES)

    def _send(self, status: int, headers: dict[str, str], body: Union[bytes, Iterator[bytes]], head: bool) -> None:
        streamed = False  # every event of a stream sent: a client resetting before the last chunk did not hang up
        try:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            if isinstance(body, bytes):
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)
            else:  # a stream: HTTP/1.1 chunks, each event sent as soon as it is made
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for piece in body:
                    self.wfile.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                streamed = True
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout, a closed stream)
            self.close_connection = True
            if not isinstance(body, bytes) and not streamed:  # a stream cut short: withdrawn, as unstreamed
                self.app.count("hung_up")
        finally:
            close = getattr(body, "close", None)
            if close is not None:  # a stream not sent to its end stops its decoding
                close()

    # http.server calls do_<VERB>; every verb goes through the routes, so another method on a known
    # path is a 405 in OpenAI's shape (not http.server's HTML 501), and HEAD is GET without the body
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve("HEAD")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")

    def do_OPTIONS(self) -> None:  # noqa: N802
        self._serve("OPTIONS")

    def log_message(self, format: str, *args: Any) -> None:  # quiet; `distil serve --verbose` logs
        if self.app.verbose:
            super().log_message(format, *args)
