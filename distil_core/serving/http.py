"""``distil serve``: an OpenAI-compatible HTTP server for a local causal LM, with real log-probs.

Endpoints (JSON in, JSON out, OpenAI's shapes; the bodies are :mod:`distil_core.serving.requests`,
what they compute is :mod:`distil_core.serving.engine`):

    GET  /v1/models
    POST /v1/completions        prompt (text or token ids), max_tokens, temperature, top_p, top_k,
                                n, seed, stop, logprobs (top-k, legacy format), echo (prompt
                                scoring with max_tokens=0), prompt_logprobs (vLLM's format),
                                return_tokens_as_token_ids (vLLM's ``token_id:N`` tokens)
    POST /v1/chat/completions   messages (the model's chat template), logprobs + top_logprobs

Both take ``stream`` (server-sent events, :mod:`distil_core.serving.streaming`) and
``stream_options.include_usage``; any parameter they do not implement (``tools``,
``response_format``, an unknown name) is a 400 naming it (:mod:`distil_core.serving.requests`).

and vLLM's endpoints for changing the served weights while it runs (the model side is
:mod:`distil_core.serving.weights`):

    POST /v1/load_lora_adapter    lora_name, lora_path (a peft adapter directory), load_inplace
    POST /v1/unload_lora_adapter  lora_name
    POST /collective_rpc          method "reload_weights", kwargs.weights_path (a safetensors
                                  model directory; default: where the model was loaded from)
    POST /reset_prefix_cache      accepted; there is no prefix cache to reset

A request's ``model`` is the base model's name or a loaded adapter's (missing or not a string:
a 400; another name: a 404). Errors come in OpenAI's JSON shape with their status (400, 401
with an API key, 404 naming the routes there are, 405 for a known path with another method,
whatever the method, 500). A body is read by its ``Content-Length``, or chunked, under
:data:`MAX_BODY_BYTES` (:mod:`distil_core.serving.bodies`: what is refused, and how); a client that
stops sending for :data:`READ_TIMEOUT_S` (idle between requests, or within its headers or body) loses
its connection, so it cannot hold a thread. Each connection has its own thread, so a slow one delays no
other; at most ``max_connections`` (:data:`MAX_CONNECTIONS`) are served at once, and one past that is
answered 503 with ``Retry-After`` and closed at once (the rollout client retries it), so a flood of
connections cannot start a thread each until memory runs out. A client that hangs up while its request
waits for the model (its timeout, say) has its request withdrawn, unanswered
(:func:`~distil_core.serving.batcher.watching_client`; ``stats["hung_up"]``). The listening socket
queues :data:`ACCEPT_BACKLOG` connections, so a burst of clients connecting at once is not made to retry
(with ``http.server``'s queue of 5 the kernel drops the rest and they connect a second later, on the
SYN's retry). Requests are served on threads; their generations are decoded on one model thread,
concurrent requests that can share a batch (same adapter, max_tokens and sampling parameters) together,
as vLLM batches them. The model runs one batch at a time, and weight changes wait for it.

Clients' failure handling is tested against :class:`~distil_core.serving.faults.FaultyServer`,
which answers through :meth:`LocalOpenAIServer.complete`; this module has no faults of its own.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any, Iterator, Optional, Union

from distil_core.serving.batcher import ClientGone, watching_client
from distil_core.serving.bodies import MAX_BODY_BYTES, body_length, read_body
from distil_core.serving.connections import ACCEPT_BACKLOG, MAX_CONNECTIONS, CappedHTTPServer, hung_up
from distil_core.serving.engine import LocalLM
from distil_core.serving.requests import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    LoadAdapterRequest,
    ReloadRequest,
    UnloadAdapterRequest,
    parse_body,
    validated,
)
from distil_core.serving.routes import COMPLETION_PATHS, ROUTES, UPDATE_PATHS, no_route, route_of
from distil_core.serving.streaming import chat_chunks, completion_chunks, server_sent_events

__all__ = ["LocalOpenAIServer", "Response", "COMPLETION_PATHS", "ROUTES", "MAX_BODY_BYTES", "READ_TIMEOUT_S",
           "ACCEPT_BACKLOG", "MAX_CONNECTIONS"]

Response = tuple[int, dict[str, str], Union[bytes, Iterator[bytes]]]  # status, headers, body (or a stream)
READ_TIMEOUT_S = 60.0
"""How long a connection may send nothing (within a request, or idle between requests) before it is closed."""
STREAM_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


class LocalOpenAIServer:
    """Serves ``model`` (a HF causal LM) and ``tokenizer`` on ``host:port`` (0 = any free port).

    ``start()`` returns the base URL (clients use ``base_url + "/v1"``); ``stop()`` shuts down.
    ``source`` is the model directory a full-weight reload without a path reads (default: the
    directory the model was loaded from, when known).
    ``api_key`` makes every request need ``Authorization: Bearer <api_key>``. ``stats`` counts
    completion requests, the most in flight at once, requests per path, and the batches
    generations were decoded in (``batches``; ``max_batch_requests``: the most requests one batch
    served). ``max_batch_rows`` caps the rows one batch gathers. ``read_timeout_s``: how long a
    connection may send nothing before it is closed (:data:`READ_TIMEOUT_S`). ``max_connections``:
    how many connections are served at once (:data:`MAX_CONNECTIONS`); ``stats["busy_refused"]``
    counts those answered 503 because that many were open, ``stats["hung_up"]`` the requests
    withdrawn because their client hung up while they waited, or before their stream ended.
    """

    def __init__(self, model: Any, tokenizer: Any, *, model_name: str = "local", host: str = "127.0.0.1",
                 port: int = 0, api_key: Optional[str] = None, verbose: bool = False,
                 source: Optional[str] = None, max_batch_rows: int = 256, read_timeout_s: float = READ_TIMEOUT_S,
                 max_connections: int = MAX_CONNECTIONS):
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ValueError(f"max_connections must be a whole number of at least 1 (got {max_connections!r})")
        if source is None and os.path.isdir(str(getattr(model, "name_or_path", "") or "")):
            source = model.name_or_path  # where ``reload_weights`` without a path reads from
        self.lm = LocalLM(model, tokenizer, model_name, source=source, max_batch_rows=max_batch_rows,
                          on_batch=self._count_batch)
        self.model_name = model_name
        self.host, self.port, self.api_key, self.verbose = host, port, api_key, verbose
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self._stats_lock = threading.Lock()
        self._httpd: Optional[CappedHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.reset_stats()

    # -- lifecycle

    def start(self) -> str:
        handler = type("Handler", (_Handler,), {"app": self, "timeout": self.read_timeout_s})
        self._httpd = CappedHTTPServer((self.host, self.port), handler)
        self._httpd.limit(self.max_connections, lambda: self.count("busy_refused"))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="distil-serve", daemon=True)
        self._thread.start()
        return self.base_url

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self.lm.close()

    def __enter__(self) -> "LocalOpenAIServer":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- counters

    def reset_stats(self) -> None:
        with self._stats_lock:
            self.stats: dict[str, Any] = {"requests": 0, "in_flight": 0, "max_in_flight": 0, "paths": {},
                                          "batches": 0, "max_batch_requests": 0, "busy_refused": 0,
                                          "hung_up": 0}

    def count(self, key: str) -> None:
        """One more of ``stats[key]`` (``busy_refused``, ``hung_up``)."""
        with self._stats_lock:
            self.stats[key] += 1

    def _count_batch(self, requests: int, rows: int) -> None:
        with self._stats_lock:
            self.stats["batches"] += 1
            self.stats["max_batch_requests"] = max(self.stats["max_batch_requests"], requests)

    def _count(self, path: str) -> None:
        with self._stats_lock:
            self.stats["paths"][path] = self.stats["paths"].get(path, 0) + 1

    @contextlib.contextmanager
    def _in_flight(self, path: str) -> Iterator[None]:
        """Counts one completion request while it is answered."""
        with self._stats_lock:
            s = self.stats
            s["requests"] += 1
            s["paths"][path] = s["paths"].get(path, 0) + 1
            s["in_flight"] += 1
            s["max_in_flight"] = max(s["max_in_flight"], s["in_flight"])
        try:
            yield
        finally:
            with self._stats_lock:
                self.stats["in_flight"] -= 1

    # -- request handling

    def handle(self, verb: str, path: str, headers: Any, raw: bytes) -> Response:
        """One request → (status, headers, body). Raises only :class:`ClientGone` (there is no
        one to answer). HEAD is answered as GET (the handler sends no body)."""
        path = path.split("?", 1)[0].rstrip("/")
        route, get = route_of(path), verb in ("GET", "HEAD")
        try:
            self._authorize(headers)
            if get and route == "/v1/models":
                cards = [self._model_card()] + self.lm.weights.cards(self.model_name)
                return _json(200, {"object": "list", "data": cards})
            if get and route == "/health":
                return _json(200, {"status": "ok"})
            updates = {"/v1/load_lora_adapter": self._load_adapter, "/v1/unload_lora_adapter": self._unload_adapter,
                       "/collective_rpc": self._collective_rpc, "/reset_prefix_cache": lambda body: (200, "")}
            assert set(updates) == set(UPDATE_PATHS), "routes.UPDATE_PATHS and the handlers here must agree"
            if verb == "POST" and route in updates:
                self._count(route)
                status, text = updates[route](parse_body(raw, required=route != "/reset_prefix_cache"))
                return status, {"Content-Type": "text/plain; charset=utf-8"}, text.encode()
            if verb != "POST" or route not in COMPLETION_PATHS:
                raise no_route(verb, path)
            return self._answer(route, raw)
        except ApiError as exc:
            return _json(exc.status, exc.body(), exc.headers)
        except ClientGone:
            raise
        except Exception as exc:  # a bug or a model failure: a 500 in OpenAI's shape
            return _json(500, ApiError(500, f"{type(exc).__name__}: {exc}", "server_error").body())

    def _answer(self, path: str, raw: bytes) -> Response:
        """:meth:`complete`, counted in flight until its answer is sent (a stream's last byte)."""
        counting = contextlib.ExitStack()
        counting.enter_context(self._in_flight(path))
        try:
            status, headers, body = self.complete(path, raw)
        except BaseException:
            counting.close()
            raise
        if isinstance(body, bytes):
            counting.close()
            return status, headers, body
        return status, headers, _closing_after(body, counting)

    def complete(self, path: str, raw: bytes) -> Response:
        """The answer to one completion request (``path`` in :data:`COMPLETION_PATHS`); raises
        :class:`ApiError` for the client's mistakes. Counted in ``stats`` while it runs.

        The one place a request's answer is made, so a wrapper (the fault schedule of
        :mod:`distil_core.serving.faults`) can replace or alter it without touching the rest.
        """
        body = parse_body(raw)
        adapter = self.lm.resolve(body.get("model"))
        if path == "/v1/completions":
            request = validated(CompletionRequest, body)
            if request.stream:
                return 200, dict(STREAM_HEADERS), server_sent_events(completion_chunks(self.lm, request, adapter))
            result = self.lm.completions(request, adapter)
        else:
            chat = validated(ChatRequest, body)
            if chat.stream:
                return 200, dict(STREAM_HEADERS), server_sent_events(chat_chunks(self.lm, chat, adapter))
            result = self.lm.chat_completions(chat, adapter)
        return _json(200, result)

    def _authorize(self, headers: Any) -> None:
        if self.api_key is None:
            return
        given = str(headers.get("Authorization", "")).encode("utf-8")
        if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode("utf-8")):  # no timing leak
            raise ApiError(401, "Incorrect API key provided. Pass the key given to `distil serve --api-key`.",
                           "authentication_error", code="invalid_api_key")

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": 0, "owned_by": "distil"}

    # -- weight updates (vLLM's endpoints and request shapes)

    def _load_adapter(self, body: dict[str, Any]) -> tuple[int, str]:
        request = validated(LoadAdapterRequest, body)
        name = request.lora_name
        if name == self.model_name:
            raise ApiError(400, f"'lora_name' {name!r} is the base model's name; pick another.", param="lora_name")
        with self.lm.updating() as weights:
            try:
                weights.load_adapter(name, request.lora_path, inplace=request.load_inplace)
            except ValueError as exc:
                raise ApiError(400, str(exc), param="lora_path") from None
        return 200, f"Success: LoRA adapter '{name}' added successfully."

    def _unload_adapter(self, body: dict[str, Any]) -> tuple[int, str]:
        name = validated(UnloadAdapterRequest, body).lora_name
        with self.lm.updating() as weights:
            try:
                weights.unload_adapter(name)
            except KeyError as exc:
                raise ApiError(404, exc.args[0], param="lora_name", code="not_found") from None
        return 200, f"Success: LoRA adapter '{name}' removed successfully."

    def _collective_rpc(self, body: dict[str, Any]) -> tuple[int, str]:
        """vLLM's development-mode RPC; of the worker procedures only ``reload_weights`` exists here."""
        request = validated(ReloadRequest, body)
        with self.lm.updating() as weights:
            try:
                weights.reload(request.kwargs.weights_path)
            except ValueError as exc:
                raise ApiError(400, str(exc), param="weights_path") from None
        return 200, json.dumps({"results": [None]})


def _json(status: int, body: Any, headers: Optional[dict[str, str]] = None) -> Response:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body).encode()


def _closing_after(body: Iterator[bytes], done: contextlib.ExitStack) -> Iterator[bytes]:
    """``body``, then ``done`` closed, however the sending ends (the client may hang up)."""
    try:
        yield from body
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
        done.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = READ_TIMEOUT_S  # the socket's (read_timeout_s): a read that waits longer ends the connection
    app: LocalOpenAIServer

    def _serve(self, verb: str) -> None:
        try:
            raw = self._body()
        except ApiError as exc:  # the body was not read, so the connection cannot carry another request
            response = _json(exc.status, exc.body(), {"Connection": "close"})
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
            self._send(*_json(exc.status, exc.body(), {"Connection": "close"}), head=False)  # closes after
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
