"""The labelling web app (Starlette): the comparison page, its JSON API and a status page.

Routes (every one answers 401 without a valid annotator token):

- ``GET /?token=T``: sets the annotator's cookie (HttpOnly, SameSite=Strict) and redirects to ``/``.
- ``GET /``: the page (``static/page.html``); ``GET /page.js``, ``GET /page.css``: its script and style.
- ``GET /api/next``: the pair to judge now (``{"pair": {"id", "prompt", "left", "right"}, "progress"}``,
  ``pair`` null when none is left for this annotator).
- ``POST /api/judge``: JSON ``{"pair_id", "choice": left|right|tie|skip, "note"?, "tags"?}`` with the
  ``X-CSRF-Token`` header; stores the judgement (committed) and answers like ``/api/next``.
- ``GET /status``, ``GET /api/status``: counts, label balance and agreement, as HTML or JSON.

A token is read from the cookie or an ``Authorization: Bearer`` header. Texts reach the page as JSON
and are put into it with ``textContent`` (never parsed as HTML), and every page is sent with a
Content-Security-Policy that allows only this server's own script, so markup inside a response runs
nothing. A body over ``max_body_bytes``, malformed JSON, an unknown choice or tag, or a note over
``MAX_NOTE_CHARS`` gets a 4xx and changes nothing; so does a judgement of a pair not served to the
annotator, or a second judgement of the same pair (409).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from orchestrator.collect.store import TAGS, Conflict, LabelStore
from orchestrator.collect.tokens import Tokens

STATIC = Path(__file__).with_name("static")
COOKIE = "tether_collect"
MAX_NOTE_CHARS = 2000
SIDES = ("left", "right", "tie", "skip")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
}


def _bad(code: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=code)


def parse_judgement(body: bytes) -> dict:
    """The fields of a judgement post; ValueError saying what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ValueError("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    unknown = set(data) - {"pair_id", "choice", "note", "tags"}
    if unknown:
        raise ValueError(f"unknown field {sorted(unknown)[0]!r}")
    if not isinstance(data.get("pair_id"), str) or not data["pair_id"]:
        raise ValueError("'pair_id' must be a non-empty string")
    if data.get("choice") not in SIDES:
        raise ValueError(f"'choice' must be one of {', '.join(SIDES)}")
    note = data.get("note", "")
    if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
        raise ValueError(f"'note' must be a string of at most {MAX_NOTE_CHARS} characters")
    tags = data.get("tags", [])
    if not isinstance(tags, list) or not all(t in TAGS for t in tags):
        raise ValueError(f"'tags' must be a list of: {', '.join(TAGS)}")
    return {"pair_id": data["pair_id"], "side": data["choice"], "note": note, "tags": tuple(tags)}


class TokenGate(BaseHTTPMiddleware):
    """401 for every request without a valid token; ``request.state.annotator`` for the others."""

    def __init__(self, app, tokens: Tokens):
        super().__init__(app)
        self.tokens = tokens

    async def dispatch(self, request, call_next):
        if request.url.path == "/" and "token" in request.query_params:
            name = self.tokens.annotator(request.query_params["token"])
            if name is None:
                return PlainTextResponse("unknown token", status_code=401)
            reply = RedirectResponse("/", status_code=303)
            reply.set_cookie(COOKIE, request.query_params["token"], httponly=True, samesite="strict", path="/")
            return reply
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else request.cookies.get(COOKIE)
        name = self.tokens.annotator(token)
        if name is None:
            return PlainTextResponse("a valid annotator token is required", status_code=401)
        request.state.annotator = name
        reply = await call_next(request)
        reply.headers.update(SECURITY_HEADERS)
        return reply


def make_app(store: LabelStore, tokens: Tokens, status: Callable[[], dict], on_judgement: Callable[[], None],
             max_body_bytes: int = 64 * 1024) -> Starlette:
    """The app over ``store``; ``status()`` gives the status numbers, ``on_judgement()`` runs after each
    stored judgement (export, metrics, stop check)."""

    def next_reply(annotator: str) -> dict:
        served = store.next_pair(annotator)
        pair = None if served is None else {"id": served.pair_id, "prompt": served.prompt,
                                            "left": served.left, "right": served.right}
        return {"pair": pair, "progress": store.progress(annotator)}

    async def page(request):
        text = (STATIC / "page.html").read_text(encoding="utf-8")
        csrf = tokens.csrf(request.state.annotator)
        text = text.replace("{{csrf}}", csrf).replace("{{annotator}}", html.escape(request.state.annotator))
        return HTMLResponse(text)

    async def asset(request):
        name = request.url.path.lstrip("/")
        kind = {"page.js": "text/javascript", "page.css": "text/css"}[name]
        return Response((STATIC / name).read_text(encoding="utf-8"), media_type=kind)

    async def next_pair(request):
        return JSONResponse(await run_in_threadpool(next_reply, request.state.annotator))

    async def judge(request):
        annotator = request.state.annotator
        if not tokens.csrf_ok(annotator, request.headers.get("x-csrf-token")):
            return _bad(403, "missing or wrong X-CSRF-Token")
        length = request.headers.get("content-length")
        if length is None or not length.isdigit() or int(length) > max_body_bytes:
            return _bad(413 if length and length.isdigit() else 411, f"the body must declare a length <= {max_body_bytes}")
        body = await request.body()
        if len(body) > max_body_bytes:
            return _bad(413, f"body over {max_body_bytes} bytes")
        try:
            fields = parse_judgement(body)
        except ValueError as exc:
            return _bad(400, str(exc))
        try:
            await run_in_threadpool(store.judge, annotator, fields["pair_id"], fields["side"], fields["note"], fields["tags"])
        except Conflict as exc:
            return _bad(409, str(exc))
        await run_in_threadpool(on_judgement)
        return JSONResponse(await run_in_threadpool(next_reply, annotator))

    async def status_json(request):
        return JSONResponse(await run_in_threadpool(status))

    async def status_page(request):
        values = await run_in_threadpool(status)
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape('-' if v is None else f'{v:.4g}' if isinstance(v, float) else str(v))}</td></tr>"
                       for k, v in values.items())
        return HTMLResponse("<!doctype html><html><head><meta charset=utf-8><title>Labelling status</title>"
                            f"<link rel=stylesheet href=/page.css></head><body><h1>Labelling status</h1>"
                            f"<table id=status>{rows}</table></body></html>")

    routes = [Route("/", page), Route("/api/next", next_pair), Route("/api/judge", judge, methods=["POST"]),
              Route("/status", status_page), Route("/api/status", status_json),
              Route("/page.js", asset, name="page.js"), Route("/page.css", asset, name="page.css")]
    return Starlette(routes=routes, middleware=[Middleware(TokenGate, tokens=tokens)])
