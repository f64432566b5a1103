"""The desk's routes (Starlette): the queue, a problem's page, saving an entry, the export.

Pages are rendered on the server from the Jinja2 templates beside this module; the only
script is a small inline one for keyboard shortcuts, so the desk needs no build step and
fetches nothing from elsewhere. Every value a template writes is HTML-escaped and has its
control characters and direction marks shown as escapes (:func:`~distil_human.text.shown_escaped`),
as the terminal review does: a response's U+202E would otherwise reverse what the reviewer
reads after it. The one exception is a refused entry's own text, put back in its form
unchanged (``| e``) so that saving it again sends what the reviewer wrote.

The store and the verifier block (a save may wait up to 30 s for another process's write
lock), so no handler runs them on the event loop: pages and the export are plain functions,
which Starlette runs in its thread pool, and a save reads its form asynchronously and then
does its work in that pool too. One reviewer's save waiting for the lock holds up nobody else.
"""

from __future__ import annotations

import hmac
import os
from typing import Optional
from urllib.parse import quote, unquote, urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from distil_core import ConfigError
from distil_core.serving import loopback_host

from ..text import author_name, shown_escaped
from .desk import Desk, Outcome, View

TOKEN_COOKIE = "distil_desk_token"
"""The token cookie's name, followed by the desk's port (:func:`token_cookie`)."""
AUTHOR_COOKIE = "distil_desk_author"
QUEUE_ROWS = 500  # a page a browser draws at once; the counts cover the whole queue
TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


def build_app(desk: Desk, token: Optional[str] = None) -> Starlette:
    """The ASGI app over ``desk``; with ``token``, every request must carry it (see :func:`_allowed`)."""
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                      finalize=_shown)
    env.filters["pct"] = lambda x: f"{x:.0%}"
    # a problem id in a path: every "/" escaped too, or a browser drops the id's "/../" segments
    env.filters["path_part"] = lambda x: quote(str(x), safe="")
    templates = Jinja2Templates(env=env)

    def page(request: Request, name: str, status: int = 200, **values) -> Response:
        values.setdefault("author", author_name(unquote(request.cookies.get(AUTHOR_COOKIE) or "")) or desk.author)
        return templates.TemplateResponse(request, name, {"desk": desk, **values}, status_code=status)

    def settings(request: Request) -> View:
        try:
            return desk.view(request.query_params)
        except ConfigError as exc:
            raise _BadRequest(str(exc)) from None

    def queue(request: Request) -> Response:
        view = settings(request)
        groups = desk.queue(view)
        reviewed = desk.store.reviewed()
        return page(request, "queue.html", view=view, groups=groups, shown=groups[:QUEUE_ROWS], reviewed=reviewed,
                    qs=_qs(view),
                    entries=desk.store.count(), unreviewed=sum(g.unreviewed(reviewed) for g in groups))

    def problem_page(request: Request, problem_id: str, view: View, outcome: Optional[Outcome] = None,
                     form: Optional[dict] = None) -> Response:
        group, prev_id, next_id = desk.problem(problem_id, view)
        if group is None:
            return PlainTextResponse(f"This run has no failed response to problem {problem_id!r}.", 404)
        entries = desk.store.all(problem_id)
        status = 200 if outcome is None or outcome.entry else 422
        sent = author_name((form or {}).get("author", ""))  # a refused save keeps the name it was sent with
        extra = {"author": sent} if sent else {}
        return page(request, "problem.html", status, **extra, view=view, group=group, prev_id=prev_id,
                    next_id=next_id, entries=entries, qs=_qs(view), outcome=outcome, form=form or {},
                    saved=request.query_params.get("saved", ""), quote=quote)

    def problem(request: Request) -> Response:
        return problem_page(request, request.path_params["problem_id"], settings(request))

    async def save(request: Request) -> Response:
        sent = (await request.form()).multi_items()  # every part: a file hidden behind a text field of its name too
        files = [k for k, v in sent if not isinstance(v, str)]
        if files:
            return PlainTextResponse(f"Refused: field {files[0]!r} was sent as a file upload; the desk takes text "
                                     "typed into its forms.", 400)
        names = [k for k, _ in sent]
        twice = next((k for k in names if names.count(k) > 1), None)
        if twice is not None:
            return PlainTextResponse(f"Refused: field {twice[:80]!r} was sent more than once; the desk's forms send "
                                     "each field once.", 400)
        return await run_in_threadpool(store_form, request, {k: str(v) for k, v in sent})

    def store_form(request: Request, form: dict[str, str]) -> Response:
        problem_id = request.path_params["problem_id"]
        view = settings(request)
        group, _, _ = desk.problem(problem_id, view)
        if group is None:
            return PlainTextResponse(f"This run has no failed response to problem {problem_id!r}.", 404)
        outcome = desk.save(group, form)
        if outcome.entry is None:
            return problem_page(request, problem_id, view, outcome, form)
        where = f"/problem/{quote(problem_id, safe='')}?{_qs(view, saved=outcome.entry.id[:8])}"
        response = RedirectResponse(where, status_code=303)
        if outcome.entry.author:
            response.set_cookie(AUTHOR_COOKIE, quote(outcome.entry.author), samesite="strict")
        return response

    def export(request: Request) -> Response:
        return Response(desk.export(), media_type="application/x-ndjson",
                        headers={"Content-Disposition": 'attachment; filename="corrections.jsonl"'})

    async def bad_request(request: Request, exc: Exception) -> Response:
        return PlainTextResponse(str(exc), 400)

    app = Starlette(routes=[
        Route("/", queue),
        Route("/problem/{problem_id:path}", problem, methods=["GET"]),
        Route("/save/{problem_id:path}", save, methods=["POST"]),
        Route("/export", export),
    ], exception_handlers={_BadRequest: bad_request})
    return _Guard(app, token)


class _BadRequest(Exception):
    pass


def _shown(value: object) -> object:
    """What a template writes for ``value``: text from outside with its controls and direction marks
    escaped; markup the template made safe itself (``| e``, a str subclass) passes as it is."""
    return shown_escaped(value) if type(value) is str else value


def _qs(view: View, **extra: str) -> str:
    return urlencode({**view.query(), **extra})


class _Guard:
    """Every request passes here first, so that only the reviewer's own browser tab (or a
    client holding the token) can read or write the store:

    - with a token, every request must carry it (the address, its cookie, or ``Authorization:
      Bearer``);
    - without one (the desk on a loopback address), the ``Host`` must be 127.0.0.1, localhost
      or [::1] with the desk's port: a web page whose own name was re-pointed at 127.0.0.1 (DNS
      rebinding) sends its own name, and is refused before it can post or read the export;
    - a write (any method but GET and HEAD) must come from the desk's own pages: an ``Origin``
      equal to the desk's address. Browsers send it with every form they post; a missing or
      ``null`` one (a sandboxed frame, a ``data:`` page, a redirect) is refused too, as is a
      ``Sec-Fetch-Site`` other than same-origin. A request holding the token in its
      ``Authorization`` header (a script) may leave the origin out: a browser never adds that
      header by itself. Another site's ``Origin`` is refused whatever else the request holds.
    """

    def __init__(self, app: Starlette, token: Optional[str]):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is not None:
            return await refusal(scope, receive, send)
        sent_token = self.token and request.query_params.get("token") == self.token

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                extra = list(FRAMING_HEADERS)
                if sent_token:
                    cookie = f"{token_cookie(scope)}={quote(self.token, safe='')}; Path=/; HttpOnly; SameSite=Strict"
                    extra.append((b"set-cookie", cookie.encode()))
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, request: Request) -> Optional[Response]:
        host = request.headers.get("host", "")
        bearer = False
        if self.token:
            header = request.headers.get("authorization", "")
            bearer = header.startswith("Bearer ") and _same(header.removeprefix("Bearer "), self.token)
            cookie = unquote(request.cookies.get(token_cookie(request.scope)) or "")
            if not (bearer or _same(request.query_params.get("token") or cookie, self.token)):
                return PlainTextResponse("This review desk needs its token: open the address that "
                                         "`distil review --web` printed (it ends in ?token=...).", 401)
        elif not loopback_host(host):
            return PlainTextResponse(f"Refused a request for {host or 'no host'!r}: this desk answers only at "
                                     "127.0.0.1, localhost or [::1] (start it with --host and a "
                                     "--token to reach it by another name).", 403)
        if request.method in ("GET", "HEAD"):
            return None
        origin = request.headers.get("origin")
        site = request.headers.get("sec-fetch-site", "same-origin")
        if origin and origin != "null" and urlsplit(origin).netloc != host:
            return PlainTextResponse(f"Refused a form sent from another site ({origin}).", 403)
        if (not origin or origin == "null" or site != "same-origin") and not bearer:
            return PlainTextResponse(f"Refused a write without the desk's own origin (Origin: {origin or 'none'}, "
                                     f"Sec-Fetch-Site: {site}): save from the desk's pages.", 403)
        return None


FRAMING_HEADERS = ((b"x-frame-options", b"DENY"), (b"content-security-policy", b"frame-ancestors 'none'"))
"""Sent with every page: no other site may show the desk in a frame, where a click on the
framed Save (a request from the desk's own origin) would pass the origin check."""


def token_cookie(scope) -> str:
    """The token cookie's name for the desk answering ``scope``: cookies are not kept per port, so
    one name for every desk would let a second desk's token log the reviewer out of the first
    (and send each token to the other)."""
    server = scope.get("server") or (None, None)
    return f"{TOKEN_COOKIE}_{server[1]}" if server[1] is not None else TOKEN_COOKIE


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass"))
