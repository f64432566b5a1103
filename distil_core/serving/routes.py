"""The routes ``distil serve`` answers, and the 404/405 that says what there is instead."""

from __future__ import annotations

from distil_core.serving.requests import ApiError

__all__ = ["COMPLETION_PATHS", "UPDATE_PATHS", "ROUTES", "ALIASES", "route_of", "no_route"]

COMPLETION_PATHS = ("/v1/completions", "/v1/chat/completions")
UPDATE_PATHS = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/collective_rpc", "/reset_prefix_cache")
ROUTES = (("GET", "/v1/models"), ("GET", "/health"), *(("POST", p) for p in COMPLETION_PATHS + UPDATE_PATHS))
ALIASES = {"/models": "/v1/models", "/v1/health": "/health"}
"""Other spellings clients use for a route, answered as it."""
NOT_HERE = {"/v1/responses": "The Responses API (POST /v1/responses) is not supported by distil serve; "
                             "use POST /v1/chat/completions.",
            "/v1/embeddings": "Embeddings (POST /v1/embeddings) are not supported by distil serve."}


def route_of(path: str) -> str:
    """The route a request's path names: its query and trailing slash dropped, an alias resolved."""
    path = path.split("?", 1)[0].rstrip("/")
    return ALIASES.get(path, path)


def no_route(verb: str, path: str) -> ApiError:
    """A 404 (405 for a known path with another verb) that says what there is instead; ``path``
    as the client wrote it (without its query)."""
    if path in NOT_HERE:
        return ApiError(404, NOT_HERE[path], param=None, code="not_found")
    allowed = [v for v, p in ROUTES if p == route_of(path)]
    if allowed:
        return ApiError(405, f"{verb} {path} is not allowed; use {' or '.join(allowed)} {path}.",
                        code="method_not_allowed", headers={"Allow": ", ".join(allowed)})
    routes = ", ".join(f"{v} {p}" for v, p in ROUTES)
    return ApiError(404, f"Unknown endpoint {verb} {path}; distil serve answers {routes}.", code="not_found")
