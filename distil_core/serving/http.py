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
with an API key, 403 for a web page's request (:mod:`~distil_core.serving.guard`), 404 naming the
routes there are, 405 for a known path with another method, 500). A body is read by its
``Content-Length``, or chunked, under :data:`MAX_BODY_BYTES` (:mod:`~distil_core.serving.bodies`);
a client that sends nothing for :data:`READ_TIMEOUT_S`, or whose request has not arrived whole
:data:`REQUEST_DEADLINE_S` after its first byte, loses its connection
(:mod:`~distil_core.serving.handler`), so it cannot hold a thread. Each connection has its own
thread, so a slow one delays no other; at most ``max_connections`` (:data:`MAX_CONNECTIONS`) are
served at once, and one past that is answered 503 with ``Retry-After`` and closed at once (the
rollout client retries it). ``stop()`` closes the connections still open, so no client goes on
being answered by a stopped server. A client that hangs up while its request waits for the model
has its request withdrawn, unanswered (:func:`~distil_core.serving.batcher.watching_client`;
``stats["hung_up"]``). The listening socket queues :data:`ACCEPT_BACKLOG` connections, so a burst
of clients connecting at once is not made to retry. Generations are decoded on one model thread,
concurrent requests that can share a batch (same adapter, max_tokens and sampling parameters)
together, as vLLM batches them; one request decodes at most ``max_request_rows`` rows (prompts ×
``n``), so a few kilobytes of JSON cannot ask for gigabytes. Weight changes wait for the batch.

Clients' failure handling is tested against :class:`~distil_core.serving.faults.FaultyServer`,
which answers through :meth:`LocalOpenAIServer.complete`; this module has no faults of its own.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import threading
from typing import Any, Iterator, Optional

from distil_core.serving.batcher import ClientGone
from distil_core.serving.bodies import MAX_BODY_BYTES
from distil_core.serving.connections import ACCEPT_BACKLOG, MAX_CONNECTIONS, CappedHTTPServer
from distil_core.serving.engine import MAX_REQUEST_ROWS, LocalLM
from distil_core.serving.guard import browser_refusal, loopback_address
from distil_core.serving.handler import READ_TIMEOUT_S, REQUEST_DEADLINE_S, RequestHandler, Response, json_response
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
           "REQUEST_DEADLINE_S", "ACCEPT_BACKLOG", "MAX_CONNECTIONS", "MAX_REQUEST_ROWS"]

STREAM_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


class LocalOpenAIServer:
    """Serves ``model`` (a HF causal LM) and ``tokenizer`` on ``host:port`` (0 = any free port).

    ``start()`` returns the base URL (clients use ``base_url + "/v1"``); ``stop()`` shuts down.
    ``source`` is the model directory a full-weight reload without a path reads (default: the
    directory the model was loaded from, when known).
    ``api_key`` makes every request need ``Authorization: Bearer <api_key>``. ``stats`` counts
    completion requests, the most in flight at once, requests per path, and the batches
    generations were decoded in (``batches``; ``max_batch_requests``: the most requests one batch
    served). ``max_batch_rows`` caps the rows one batch gathers, ``max_request_rows`` those one
    request asks for. ``read_timeout_s``: how long a connection may send nothing before it is
    closed (:data:`READ_TIMEOUT_S`); ``request_deadline_s``: how long a request may take to arrive
    whole (:data:`REQUEST_DEADLINE_S`). ``max_connections``:
    how many connections are served at once (:data:`MAX_CONNECTIONS`); ``stats["busy_refused"]``
    counts those answered 503 because that many were open, ``stats["hung_up"]`` the requests
    withdrawn because their client hung up while they waited, or before their stream ended.
    """

    def __init__(self, model: Any, tokenizer: Any, *, model_name: str = "local", host: str = "127.0.0.1",
                 port: int = 0, api_key: Optional[str] = None, verbose: bool = False,
                 source: Optional[str] = None, max_batch_rows: int = 256, read_timeout_s: float = READ_TIMEOUT_S,
                 max_connections: int = MAX_CONNECTIONS, max_request_rows: int = MAX_REQUEST_ROWS,
                 request_deadline_s: float = REQUEST_DEADLINE_S):
        for name, value in (("max_connections", max_connections), ("max_request_rows", max_request_rows)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1 (got {value!r})")
        if not 0 < request_deadline_s < float("inf"):
            raise ValueError(f"request_deadline_s must be a positive number of seconds (got {request_deadline_s!r})")
        if source is None and os.path.isdir(str(getattr(model, "name_or_path", "") or "")):
            source = model.name_or_path  # where ``reload_weights`` without a path reads from
        self.lm = LocalLM(model, tokenizer, model_name, source=source, max_batch_rows=max_batch_rows,
                          max_request_rows=max_request_rows, on_batch=self._count_batch)
        self.model_name = model_name
        self.host, self.port, self.api_key, self.verbose = host, port, api_key, verbose
        self.read_timeout_s, self.request_deadline_s = read_timeout_s, request_deadline_s
        self.max_connections = max_connections
        self._stats_lock = threading.Lock()
        self._httpd: Optional[CappedHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.reset_stats()

    # -- lifecycle

    def start(self) -> str:
        self.lm.open()  # after a stop(), the model thread may start again
        handler = type("Handler", (RequestHandler,), {"app": self, "timeout": self.read_timeout_s,
                                                      "request_deadline_s": self.request_deadline_s})
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
            self._httpd.close_connections()
            self._httpd = None
        self.lm.close()

    def __enter__(self) -> "LocalOpenAIServer":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- counters

    def reset_stats(self) -> None:
        """Start the counts again. ``in_flight`` is not a count but the requests being answered
        now, so it is kept (zeroed, a request still finishing would take it below zero), and
        ``max_in_flight`` starts from it."""
        with self._stats_lock:
            now = getattr(self, "stats", {}).get("in_flight", 0)
            self.stats: dict[str, Any] = {"requests": 0, "in_flight": now, "max_in_flight": now, "paths": {},
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
            if self.api_key is not None:  # a page cannot send the key (Authorization needs a preflight)
                self._authorize(headers)
            else:  # a web page's request is refused (:mod:`distil_core.serving.guard`)
                refusal = browser_refusal(headers, check_host=loopback_address(self.host))
                if refusal is not None:
                    raise ApiError(403, refusal, "permission_error", code="forbidden")
            if get and route == "/v1/models":
                cards = [self._model_card()] + self.lm.weights.cards(self.model_name)
                return json_response(200, {"object": "list", "data": cards})
            if get and route == "/health":
                return json_response(200, {"status": "ok"})
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
            return json_response(exc.status, exc.body(), exc.headers)
        except ClientGone:
            raise
        except Exception as exc:  # a bug or a model failure: a 500 in OpenAI's shape
            return json_response(500, ApiError(500, f"{type(exc).__name__}: {exc}", "server_error").body())

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
        return json_response(200, result)

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


def _closing_after(body: Iterator[bytes], done: contextlib.ExitStack) -> Iterator[bytes]:
    """``body``, then ``done`` closed, however the sending ends (the client may hang up)."""
    try:
        yield from body
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
        done.close()
