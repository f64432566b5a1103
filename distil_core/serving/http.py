"""``distil serve``: an OpenAI-compatible HTTP server for a local causal LM, with real log-probs.

Endpoints (JSON in, JSON out, OpenAI's shapes; what they compute is :mod:`distil_core.serving.engine`):

    GET  /v1/models
    POST /v1/completions        prompt (text or token ids), max_tokens, temperature, top_p, top_k,
                                n, seed, stop, logprobs (top-k, legacy format), echo (prompt
                                scoring with max_tokens=0), prompt_logprobs (vLLM's format),
                                return_tokens_as_token_ids (vLLM's ``token_id:N`` tokens)
    POST /v1/chat/completions   messages (the model's chat template), logprobs + top_logprobs

and vLLM's endpoints for changing the served weights while it runs (the model side is
:mod:`distil_core.serving.weights`):

    POST /v1/load_lora_adapter    lora_name, lora_path (a peft adapter directory), load_inplace
    POST /v1/unload_lora_adapter  lora_name
    POST /collective_rpc          method "reload_weights", kwargs.weights_path (a safetensors
                                  model directory; default: where the model was loaded from)
    POST /reset_prefix_cache      accepted; there is no prefix cache to reset

A request's ``model`` is the base model's name or a loaded adapter's. Errors come in OpenAI's
JSON shape with their status (400, 401 with an API key, 404, 500). Requests are served on
threads; their generations are decoded on one model thread, concurrent requests that can share
a batch (same adapter, max_tokens and sampling parameters) together, as vLLM batches them. The
model runs one batch at a time, and weight changes wait for it.

For testing clients, a *fault schedule* makes the next requests fail on purpose (see
:func:`parse_fault`): ``LocalOpenAIServer(..., faults=["429", "slow:2"])`` or
``distil serve --fault 429 --fault slow:2``.
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Sequence

from distil_core.serving.engine import ApiError, LocalLM, token_bytes_table, token_string

FAULT_KINDS = ("429", "500", "503", "slow", "malformed", "no_logprobs", "no_token_ids", "ok")

__all__ = ["LocalOpenAIServer", "Fault", "parse_fault", "load_for_serving", "token_bytes_table", "token_string"]


# -- faults -------------------------------------------------------------------------------------


@dataclass
class Fault:
    """One scheduled misbehaviour: ``kind`` in FAULT_KINDS, with its delay or Retry-After."""

    kind: str
    seconds: float = 0.0


def parse_fault(spec: str | Fault) -> Fault:
    """``429[:retry_after_s]``, ``500``, ``503``, ``slow:delay_s``, ``malformed``, ``no_logprobs``,
    ``no_token_ids``, ``ok``.

    ``slow`` answers normally after the delay; ``malformed`` answers 200 with broken JSON;
    ``no_logprobs`` answers 200 with every log-prob field removed; ``no_token_ids`` ignores
    ``return_tokens_as_token_ids`` (tokens come as text, as from a server without that option);
    ``ok`` is a normal answer (a placeholder in a schedule).
    """
    if isinstance(spec, Fault):
        return spec
    kind, _, arg = str(spec).strip().partition(":")
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault {spec!r}; use one of {', '.join(FAULT_KINDS)} (slow:SECONDS, 429:RETRY_AFTER)")
    try:
        seconds = float(arg) if arg else (0.0 if kind != "slow" else 1.0)
    except ValueError:
        raise ValueError(f"fault {spec!r}: {arg!r} is not a number of seconds") from None
    return Fault(kind, seconds)


# -- the server ---------------------------------------------------------------------------------


class LocalOpenAIServer:
    """Serves ``model`` (a HF causal LM) and ``tokenizer`` on ``host:port`` (0 = any free port).

    ``start()`` returns the base URL (clients use ``base_url + "/v1"``); ``stop()`` shuts down.
    ``source`` is the model directory a full-weight reload without a path reads (default: the
    directory the model was loaded from, when known).
    ``api_key`` makes every request need ``Authorization: Bearer <api_key>``. ``faults`` is a
    schedule consumed one entry per completion request (see :func:`parse_fault`); more can be
    queued with :meth:`add_faults`. ``stats`` counts requests, the most in flight at once, and
    the batches generations were decoded in (``batches``; ``max_batch_requests``: the most
    requests one batch served). ``max_batch_rows`` caps the rows one batch gathers.
    """

    def __init__(self, model: Any, tokenizer: Any, *, model_name: str = "local", host: str = "127.0.0.1",
                 port: int = 0, api_key: Optional[str] = None, faults: Sequence[str | Fault] = (),
                 verbose: bool = False, source: Optional[str] = None, max_batch_rows: int = 256):
        if source is None and os.path.isdir(str(getattr(model, "name_or_path", "") or "")):
            source = model.name_or_path  # where ``reload_weights`` without a path reads from
        self.lm = LocalLM(model, tokenizer, model_name, source=source, max_batch_rows=max_batch_rows,
                          on_batch=self._count_batch)
        self.model_name = model_name
        self.host, self.port, self.api_key, self.verbose = host, port, api_key, verbose
        self._faults: deque[Fault] = deque(parse_fault(f) for f in faults)
        self._stats_lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.reset_stats()

    # -- lifecycle

    def start(self) -> str:
        handler = type("Handler", (_Handler,), {"app": self})
        self._httpd = ThreadingHTTPServer((self.host, self.port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="distil-serve", daemon=True)
        self._thread.start()
        return self.base_url

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self._stopping.set()
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

    # -- test hooks

    def add_faults(self, *faults: str | Fault) -> None:
        with self._stats_lock:
            self._faults.extend(parse_fault(f) for f in faults)

    def clear_faults(self) -> None:
        with self._stats_lock:
            self._faults.clear()

    def reset_stats(self) -> None:
        with self._stats_lock:
            self.stats: dict[str, Any] = {"requests": 0, "in_flight": 0, "max_in_flight": 0, "paths": {},
                                          "batches": 0, "max_batch_requests": 0}

    def _count_batch(self, requests: int, rows: int) -> None:
        with self._stats_lock:
            self.stats["batches"] += 1
            self.stats["max_batch_requests"] = max(self.stats["max_batch_requests"], requests)

    def _count(self, path: str) -> None:
        with self._stats_lock:
            self.stats["paths"][path] = self.stats["paths"].get(path, 0) + 1

    def _enter(self, path: str) -> Optional[Fault]:
        with self._stats_lock:
            s = self.stats
            s["requests"] += 1
            s["paths"][path] = s["paths"].get(path, 0) + 1
            s["in_flight"] += 1
            s["max_in_flight"] = max(s["max_in_flight"], s["in_flight"])
            return self._faults.popleft() if self._faults else None

    def _leave(self) -> None:
        with self._stats_lock:
            self.stats["in_flight"] -= 1

    # -- request handling

    def handle(self, method: str, path: str, headers: Any, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        """One request → (status, headers, body). Never raises."""
        path = path.split("?", 1)[0].rstrip("/")
        try:
            if self.api_key is not None:
                given = headers.get("Authorization", "")
                if given != f"Bearer {self.api_key}":
                    raise ApiError(401, "Incorrect API key provided. Pass the key given to `distil serve --api-key`.",
                                   "authentication_error", code="invalid_api_key")
            if method == "GET" and path in ("/v1/models", "/models"):
                cards = [self._model_card()] + self.lm.weights.cards(self.model_name)
                return _json(200, {"object": "list", "data": cards})
            if method == "GET" and path in ("/health", "/v1/health"):
                return _json(200, {"status": "ok"})
            updates = {"/v1/load_lora_adapter": self._load_adapter, "/v1/unload_lora_adapter": self._unload_adapter,
                       "/collective_rpc": self._collective_rpc, "/reset_prefix_cache": lambda body: (200, "")}
            if method == "POST" and path in updates:
                self._count(path)
                status, text = updates[path](_body(raw, required=path != "/reset_prefix_cache"))
                return status, {"Content-Type": "text/plain; charset=utf-8"}, text.encode()
            routes = {"/v1/completions": self.lm.completions, "/v1/chat/completions": self.lm.chat_completions}
            route = routes.get(path)
            if route is None or method != "POST":
                raise ApiError(404, f"Unknown endpoint {method} {path}.", code="not_found")
            return self._handle_completion(path, route, raw)
        except ApiError as exc:
            return _json(exc.status, exc.body(), exc.headers)
        except Exception as exc:  # a bug or a model failure: a 500 in OpenAI's shape
            return _json(500, ApiError(500, f"{type(exc).__name__}: {exc}", "server_error").body())

    def _handle_completion(self, path: str, route: Any, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        fault = self._enter(path)
        try:
            if fault is not None and fault.kind in ("429", "500", "503"):
                return self._fault_error(fault)
            if fault is not None and fault.kind == "slow":
                self._stopping.wait(fault.seconds)
            body = _body(raw)
            name = body.get("model")
            if name != self.model_name and name not in self.lm.weights.adapters:
                served = [self.model_name, *self.lm.weights.adapters]
                raise ApiError(404, f"The model {name!r} does not exist; this server serves "
                                    f"{', '.join(repr(s) for s in served)}.", param="model", code="model_not_found")
            if fault is not None and fault.kind == "no_token_ids":
                body = {**body, "return_tokens_as_token_ids": False}
            result = route(body, None if name == self.model_name else name)
            if fault is not None and fault.kind == "malformed":
                text = json.dumps(result)
                return 200, {"Content-Type": "application/json"}, text[: len(text) // 2].encode()
            if fault is not None and fault.kind == "no_logprobs":
                for choice in result["choices"]:
                    choice["logprobs"] = None
                    choice.pop("prompt_logprobs", None)
            return _json(200, result)
        finally:
            self._leave()

    def _fault_error(self, fault: Fault) -> tuple[int, dict[str, str], bytes]:
        if fault.kind == "429":
            seconds = fault.seconds
            headers = {"Retry-After": f"{seconds:g}", "retry-after-ms": str(int(seconds * 1000))}
            err = ApiError(429, "Rate limit reached (scheduled fault). Retry after the given delay.",
                           "rate_limit_error", code="rate_limit_exceeded", headers=headers)
        elif fault.kind == "503":
            err = ApiError(503, "The server is overloaded (scheduled fault).", "service_unavailable")
        else:
            err = ApiError(500, "The server had an error (scheduled fault).", "server_error")
        return _json(err.status, err.body(), err.headers)

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": 0, "owned_by": "distil"}

    # -- weight updates (vLLM's endpoints and request shapes)

    def _load_adapter(self, body: dict[str, Any]) -> tuple[int, str]:
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not isinstance(path, str):
            raise ApiError(400, "Send 'lora_name' and 'lora_path' (strings), and 'load_inplace': true to "
                                "replace a loaded adapter.", param="lora_name")
        if name == self.model_name:
            raise ApiError(400, f"'lora_name' {name!r} is the base model's name; pick another.", param="lora_name")
        with self.lm.updating() as weights:
            try:
                weights.load_adapter(name, path, inplace=bool(body.get("load_inplace", False)))
            except ValueError as exc:
                raise ApiError(400, str(exc), param="lora_path") from None
        return 200, f"Success: LoRA adapter '{name}' added successfully."

    def _unload_adapter(self, body: dict[str, Any]) -> tuple[int, str]:
        name = body.get("lora_name")
        with self.lm.updating() as weights:
            try:
                weights.unload_adapter(str(name))
            except KeyError as exc:
                raise ApiError(404, exc.args[0], param="lora_name", code="not_found") from None
        return 200, f"Success: LoRA adapter '{name}' removed successfully."

    def _collective_rpc(self, body: dict[str, Any]) -> tuple[int, str]:
        """vLLM's development-mode RPC; of the worker methods only ``reload_weights`` exists here."""
        if body.get("method") != "reload_weights":
            raise ApiError(400, f"Method {body.get('method')!r} is not available here; this server runs "
                                "'reload_weights' (kwargs: weights_path) only.", param="method")
        kwargs = body.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise ApiError(400, "'kwargs' must be an object, e.g. {\"weights_path\": \"/path/to/model\"}.",
                           param="kwargs")
        with self.lm.updating() as weights:
            try:
                weights.reload(kwargs.get("weights_path"))
            except ValueError as exc:
                raise ApiError(400, str(exc), param="weights_path") from None
        return 200, json.dumps({"results": [None]})


def _body(raw: bytes, required: bool = True) -> dict[str, Any]:
    """The request's JSON object; an empty body is ``{}`` unless ``required``."""
    if not raw and not required:
        return {}
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise ApiError(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


def _json(status: int, body: Any, headers: Optional[dict[str, str]] = None) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    app: LocalOpenAIServer

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        status, headers, body = self.app.handle(method, self.path, self.headers, raw)
        try:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout)
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def log_message(self, format: str, *args: Any) -> None:  # quiet; `distil serve --verbose` logs
        if self.app.verbose:
            super().log_message(format, *args)


# -- the command --------------------------------------------------------------------------------


def load_for_serving(model: str, overrides: Sequence[str] = (), *, progress: bool = True) -> tuple[Any, Any, str]:
    """(model, tokenizer, served name) for ``distil serve --model``: ``tiny`` or a local directory."""
    import os

    from distil_core.config import load_config
    from distil_core.plugin_host import get_host
    from distil_core.training.runtime import load_policy, pick_device

    config = load_config(None, [f"model.name={model}", *overrides])
    task = get_host().build("task", config.task.name, config.task.options) if model == "tiny" else None
    policy, tokenizer, source = load_policy(config, task, progress=progress)
    policy.to(pick_device(config.model.device))
    policy.eval()
    name = "tiny" if model == "tiny" else os.path.basename(os.path.normpath(source))
    return policy, tokenizer, name
