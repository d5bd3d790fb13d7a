"""Remote reward: a client for an HTTP reward server, and the server itself.

Protocol: ``POST /score`` with ``Authorization: Bearer <token>`` and JSON
``{"prompts": [...], "responses": [...]}``; the answer is ``{"rewards": [...]}`` (one number per
response) or ``{"error": "..."}`` with status 400. A wrong or missing token gets 401.
``GET /health`` answers 200. The server refuses to start without a token and binds 127.0.0.1
unless told otherwise.
"""

from __future__ import annotations

import hmac
import json
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from orchestrator.errors import ConfigError, RewardError
from orchestrator.rewards.loader import call_reward_function


def remote_scores(url: str, token: str, prompts: list[str], responses: list[str], timeout_s: float) -> list[float]:
    """Scores from the reward server at ``url``; RewardError with the reason on any failure."""
    body = json.dumps({"prompts": prompts, "responses": responses}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            data = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise RewardError(f"reward server {url} refused the token (401); check reward.remote_token_env") from None
        detail = exc.read().decode(errors="replace")[:200]
        raise RewardError(f"reward server {url} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RewardError(f"reward server {url} did not answer (within {timeout_s:g}s): {reason}") from None
    except ValueError as exc:
        raise RewardError(f"reward server {url} sent invalid JSON: {exc}") from None
    return call_reward_function(lambda p, r: data.get("rewards"), f"at {url}", prompts, responses)


def check_remote_config(url: str, token: str | None, token_env: str) -> None:
    """ConfigError for a URL that is not http(s) or a token that is not set."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"reward.remote_url={url!r} must start with http:// or https://")
    if not token:
        raise ConfigError(f"reward.remote_url is set but the token variable {token_env} is empty "
                          "(reward.remote_token_env); the reward server requires a token")


def make_server(fn: Callable, spec: str, token: str, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server scoring with ``fn``; call ``serve_forever()`` on it (``port=0``: any free port)."""
    if not token:
        raise ConfigError("the reward server needs a token: set the variable named by token_env")

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 (http.server naming)
            self._send(200, {"ok": True}) if self.path == "/health" else self._send(404, {"error": "not found"})

        def do_POST(self):  # noqa: N802
            if self.path != "/score":
                return self._send(404, {"error": "not found"})
            sent = self.headers.get("Authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
                return self._send(401, {"error": "missing or wrong token"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                rewards = call_reward_function(fn, spec, body["prompts"], body["responses"])
            except (ValueError, KeyError, TypeError, RewardError) as exc:
                return self._send(400, {"error": str(exc)})
            self._send(200, {"rewards": rewards})

        def log_message(self, *args) -> None:  # quiet: one line per request is noise at RL rates
            pass

    return ThreadingHTTPServer((host, port), Handler)
