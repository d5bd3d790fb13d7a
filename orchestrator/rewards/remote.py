"""Remote reward: a client for an HTTP reward server, and the server itself.

Protocol: ``POST /score`` with ``Authorization: Bearer <token>`` and JSON
``{"prompts": [...], "responses": [...]}``; the answer is ``{"rewards": [...]}`` (one number per
response) or ``{"error": "..."}`` with status 400. A wrong or missing token gets 401.
``GET /health`` answers 200. The server refuses to start without a token and binds 127.0.0.1
unless told otherwise.

The server is uvicorn (ASGI, one event loop; the reward function runs in a thread pool) with every
input bounded: a body over ``max_body_bytes`` gets 413 (checked on Content-Length and while it
streams in); malformed or too deeply nested JSON gets 400 with a one-line error; a connection
whose request is not fully received within ``read_timeout_s`` is closed; at most
``max_connections`` connections and requests are served at once (503 beyond), so idle or half-sent
requests cost no thread and cannot starve ``/health``.
"""

from __future__ import annotations

import hmac
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Callable

from orchestrator.errors import ConfigError, RewardError
from orchestrator.rewards.loader import call_reward_function, check_scores


MAX_REPLY_BYTES = 16 << 20  # a longer reply from a reward server is an error, never held in memory


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: the request carries the bearer token (urllib would send it on)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # the 3xx reaches the caller as an HTTPError


_OPENER = urllib.request.build_opener(_NoRedirect)


def remote_scores(url: str, token: str, prompts: list[str], responses: list[str], timeout_s: float) -> list[float]:
    """Scores from the reward server at ``url``; RewardError with the reason on any failure."""
    body = json.dumps({"prompts": prompts, "responses": responses}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + timeout_s  # for the whole reply: a server trickling bytes is cut off too
    try:
        with _OPENER.open(request, timeout=timeout_s) as reply:
            raw = bytearray()
            while chunk := reply.read1(1 << 16):
                raw += chunk
                if len(raw) > MAX_REPLY_BYTES:
                    raise RewardError(f"reward server {url} sent a reply over {MAX_REPLY_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise TimeoutError("the reply did not arrive in time")
            data = json.loads(raw)
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise RewardError(f"reward server {url} refused the token (401); check reward.remote_token_env") from None
        if 300 <= exc.code < 400:
            raise RewardError(f"reward server {url} answered {exc.code} (a redirect to {exc.headers.get('Location')!r}); "
                              "redirects are not followed (the token must reach no other host): set "
                              "reward.remote_url to the server's own URL") from None
        detail = exc.read().decode(errors="replace")[:200]
        raise RewardError(f"reward server {url} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RewardError(f"reward server {url} did not answer (within {timeout_s:g}s): {reason}") from None
    except (ValueError, RecursionError) as exc:
        raise RewardError(f"reward server {url} sent invalid JSON: {exc}") from None
    if not isinstance(data, dict) or "rewards" not in data:
        raise RewardError(f"reward server {url} sent no 'rewards' list (got {type(data).__name__})")
    return check_scores(data["rewards"], len(responses), f"reward server {url}")


def check_remote_config(url: str, token: str | None, token_env: str) -> None:
    """ConfigError for a URL that is not http(s) or a token that is not set."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"reward.remote_url={url!r} must start with http:// or https://")
    if not token:
        raise ConfigError(f"reward.remote_url is set but the token variable {token_env} is empty "
                          "(reward.remote_token_env); the reward server requires a token")
    if not all(33 <= ord(c) <= 126 for c in token):  # it goes in an HTTP header; errors would echo it
        raise ConfigError(f"the token in {token_env} holds a space, newline or other character that is not "
                          "printable ASCII (a trailing newline from a file?); strip it")
    if "@" in urllib.parse.urlsplit(url).netloc:
        raise ConfigError("reward.remote_url holds a user name or password (user:pass@host); the URL is saved in "
                          f"config.yaml and shown in errors: give the server's URL without them and the token in {token_env}")


# ---- the server --------------------------------------------------------------------------------
@dataclass
class ServerLimits:
    """Bounds on what one client can make the server hold."""

    max_body_bytes: int = 4 * 1024 * 1024  # larger request bodies get 413
    read_timeout_s: float = 5.0  # a request not fully received by then: connection closed
    max_connections: int = 512  # connections + requests served at once (uvicorn limit_concurrency)
    keep_alive_s: int = 5  # idle keep-alive connections are closed after this


def _timed_h11(read_timeout_s: float):
    """uvicorn's h11 protocol with a deadline on receiving each request (headers and body).

    uvicorn bounds only idle keep-alive time; a client that sends half a request would otherwise
    hold its connection open forever.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _deadline = None

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(read_timeout_s, self._read_timed_out)

        def _read_timed_out(self) -> None:
            self._deadline = None
            if self.conn.their_state not in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED) and not self.transport.is_closing():
                self.transport.close()  # the app, if it is reading the body, sees a disconnect

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request on this connection gets its own deadline

        def connection_lost(self, exc) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            super().connection_lost(exc)

    return TimedH11Protocol


def _request_lists(data) -> tuple[list[str], list[str]]:
    """``prompts`` and ``responses`` of a request body; ValueError saying what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"the body must be a JSON object with prompts and responses, got {type(data).__name__}")
    lists = []
    for key in ("prompts", "responses"):
        value = data.get(key)
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise ValueError(f"'{key}' must be a list of strings")
        lists.append(value)
    if len(lists[0]) != len(lists[1]):
        raise ValueError(f"{len(lists[0])} prompts but {len(lists[1])} responses")
    return lists[0], lists[1]


def make_app(fn: Callable, spec: str, token: str, limits: ServerLimits):
    """The Starlette app serving ``POST /score`` and ``GET /health``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    expected = f"Bearer {token}".encode()
    max_bytes = limits.max_body_bytes
    too_large = f"request body over {max_bytes} bytes (max_body_bytes)"

    def error(code: int, message: str, close: bool = False) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=code, headers={"Connection": "close"} if close else None)

    async def health(request):
        return JSONResponse({"ok": True})

    async def score(request):
        sent = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(sent, expected):
            return error(401, "missing or wrong token", close=True)
        length = request.headers.get("content-length")
        if length is not None and not length.isdigit():
            return error(400, "bad Content-Length", close=True)
        if length is not None and int(length) > max_bytes:
            return error(413, too_large, close=True)  # refused before a byte of the body is read
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_bytes:  # chunked bodies declare no length
                    return error(413, too_large, close=True)
        except ClientDisconnect:
            return error(400, "the client went away before sending the whole body", close=True)
        try:
            prompts, responses = _request_lists(json.loads(body))
        except RecursionError:
            return error(400, "invalid JSON: nested too deeply")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return error(400, f"invalid request: {exc}".splitlines()[0])
        try:
            rewards = await run_in_threadpool(call_reward_function, fn, spec, prompts, responses)
        except RewardError as exc:
            return error(400, str(exc).splitlines()[0])
        return JSONResponse({"rewards": rewards})

    async def http_error(request, exc: HTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    return Starlette(routes=[Route("/score", score, methods=["POST"]), Route("/health", health, methods=["GET"])],
                     exception_handlers={HTTPException: http_error})


class RewardServer:
    """A bound reward server: ``serve_forever()`` in this thread, or ``start()`` one in the
    background; ``shutdown()`` stops it. ``server_address`` is ``(host, port)``."""

    def __init__(self, app, host: str, port: int, limits: ServerLimits):
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family, backlog=2048)
        self.server_address = self.socket.getsockname()[:2]
        config = uvicorn.Config(app, http=_timed_h11(limits.read_timeout_s), ws="none", lifespan="off",
                                limit_concurrency=limits.max_connections, timeout_keep_alive=limits.keep_alive_s,
                                h11_max_incomplete_event_size=64 * 1024, access_log=False, log_level="warning",
                                server_header=False)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        """Serve until ``shutdown()`` or SIGINT / SIGTERM (in the main thread)."""
        self.server.run(sockets=[self.socket])

    def start(self, timeout_s: float = 30.0) -> "RewardServer":
        """Serve in a daemon thread; returns once the server accepts connections."""
        self._thread = threading.Thread(target=self.serve_forever, name="reward-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RewardError(f"the reward server did not start within {timeout_s:g}s")
            time.sleep(0.02)
        return self

    def shutdown(self) -> None:
        """Stop serving and release the port."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.socket.close()


def make_server(fn: Callable, spec: str, token: str, host: str = "127.0.0.1", port: int = 0,
                limits: ServerLimits | None = None) -> RewardServer:
    """A reward server scoring with ``fn`` (``port=0``: any free port); see ``RewardServer``."""
    if not token:
        raise ConfigError("the reward server needs a token: set the variable named by token_env")
    limits = limits or ServerLimits()
    for name in ("max_body_bytes", "read_timeout_s", "max_connections", "keep_alive_s"):
        if getattr(limits, name) <= 0:
            raise ConfigError(f"{name}={getattr(limits, name)} must be > 0")
    return RewardServer(make_app(fn, spec, token, limits), host, port, limits)
