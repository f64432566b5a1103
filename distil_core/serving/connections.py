"""The listening side of ``distil serve``: a thread per connection, a bounded number of them.

A connection past :data:`MAX_CONNECTIONS` (``distil serve --max-connections``) is answered 503
with ``Retry-After`` on the accepting thread, in one small write, and closed: without a bound a
flood of idle connections starts a thread each, for as long as the read timeout lets it wait.
The rollout client and the API expert retry a 503 after its ``Retry-After``.

:func:`hung_up` tells a request's thread that its client closed the connection while it waited
for the model (:func:`~distil_core.serving.batcher.watching_client`).
"""

from __future__ import annotations

import json
import select
import socket
import threading
from http.server import ThreadingHTTPServer
from typing import Any, Callable, Optional

from distil_core.errors import ConfigError
from distil_core.serving.requests import ApiError

__all__ = ["ACCEPT_BACKLOG", "MAX_CONNECTIONS", "BUSY_RETRY_AFTER_S", "CappedHTTPServer", "hung_up", "check_port"]

ACCEPT_BACKLOG = 1024
"""Connections the listening socket queues before they are accepted (the kernel caps it at somaxconn)."""
MAX_CONNECTIONS = 256
"""Connections served at once, each on its own thread; one more is answered 503 and closed."""
BUSY_RETRY_AFTER_S = 1
"""Seconds a refused client is told to wait before it retries."""


def check_port(port: int) -> None:
    """A ConfigError for a ``--port`` outside 0–65535, before anything is loaded: the resolver
    would take it modulo 65536 and listen on another port without a word."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: a port is a number from 0 to 65535 (0 picks a free one).")


class CappedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most ``slots`` of them: a connection past that is answered 503
    on the accepting thread, in one small write, and closed."""

    request_queue_size = ACCEPT_BACKLOG  # socketserver's 5 makes a burst of connections wait for SYN retries

    def limit(self, connections: int, on_busy: Callable[[], None]) -> None:
        self.connections, self.on_busy = connections, on_busy
        self.slots = threading.BoundedSemaphore(connections)
        self.open: set[Any] = set()  # the sockets of the connections being served
        self.open_lock = threading.Lock()

    def close_connections(self) -> None:
        """End every connection still open (a kept-alive client between requests, one waiting
        for its answer): after ``shutdown()`` no new one is accepted, and none already accepted
        may go on being answered by a server that was stopped (or by the model thread, which a
        later request would start again)."""
        with self.open_lock:
            sockets = list(self.open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the connection's thread sees the end and returns
            except OSError:  # already closed by its thread
                pass

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.on_busy()
            self._refuse_busy(request)
            return
        with self.open_lock:  # on the accepting thread: once shutdown() returns, every connection is in it
            self.open.add(request)
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:  # no thread started (e.g. the system has no more): the slot is free again
            with self.open_lock:
                self.open.discard(request)
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.open_lock:
                self.open.discard(request)
            self.slots.release()

    def _refuse_busy(self, request: Any) -> None:
        message = (f"distil serve is serving as many connections as it may ({self.connections}); "
                   f"retry after {BUSY_RETRY_AFTER_S} s, or start it with a larger --max-connections")
        body = json.dumps(ApiError(503, message, "server_busy").body()).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: {BUSY_RETRY_AFTER_S}\r\nConnection: close\r\n\r\n")
        try:
            request.settimeout(1.0)  # a small write; a client that reads nothing cannot stall accepting
            request.sendall(head.encode("ascii") + body)
        except OSError:
            pass
        self.shutdown_request(request)


def hung_up(connection: socket.socket) -> bool:
    """Whether the client has closed ``connection`` (or it broke), without reading from it.

    Asked without waiting: a connection with nothing to read is a client still waiting for its
    answer, and a byte to read is one that already sent its next request. Only the end of the
    stream, or an error, is a client that is gone; on Linux the TCP state says so too when the
    end is queued behind bytes not read yet (a large pipelined request, then the close). A
    client that shuts down only its sending side and still reads reads as gone too (HTTP
    clients do not do that).
    """
    if _tcp_state(connection) in _PEER_CLOSED:
        return True
    try:
        if hasattr(select, "poll"):  # no limit on the descriptor's number, unlike select()
            poller = select.poll()
            poller.register(connection, select.POLLIN)
            readable = bool(poller.poll(0))
        else:
            readable = bool(select.select([connection], [], [], 0)[0])
        # readable: a peek returns at once, with a byte or with the end of the stream
        return readable and connection.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):  # reset by the peer, or closed under us
        return True


_PEER_CLOSED = (7, 8)  # Linux's TCP_CLOSE and TCP_CLOSE_WAIT (include/net/tcp_states.h)


def _tcp_state(connection: socket.socket) -> Optional[int]:
    """The connection's TCP state (``tcpi_state``, the first byte of ``TCP_INFO``); None where
    the platform does not tell."""
    option = getattr(socket, "TCP_INFO", None)
    if option is None or not hasattr(socket, "IPPROTO_TCP"):
        return None
    try:
        return connection.getsockopt(socket.IPPROTO_TCP, option, 1)[0]
    except (OSError, ValueError, IndexError):
        return None
