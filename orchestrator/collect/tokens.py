"""Annotator tokens and CSRF tokens.

Each annotator named in ``collect.annotators`` gets a random token (``secrets.token_urlsafe``), kept
in ``<output_dir>/collect/tokens.json`` (mode 0600), so a restart keeps everyone's URL. Tokens never
enter the config, a log line, a metrics row or the database; the pipeline prints each annotator's
URL once, at start. A request's token is compared with every annotator's in constant time
(``hmac.compare_digest``, no early exit). The CSRF token of an annotator is an HMAC of their name
under a key kept in the same file; the page sends it with every post.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from orchestrator.errors import ConfigError


def load_or_create(path: Path, annotators: list[str]) -> dict:
    """``{"tokens": {name: token}, "csrf_key": hex}`` for ``annotators`` (new ones get a new token)."""
    data = {"tokens": {}, "csrf_key": secrets.token_hex(32)}
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            assert isinstance(data.get("tokens"), dict) and isinstance(data.get("csrf_key"), str)
        except (ValueError, AssertionError):
            raise ConfigError(f"{path}: not a token file written by pipeline=collect; move it away to make new "
                              "tokens") from None
    tokens = {name: data["tokens"].get(name) or secrets.token_urlsafe(24) for name in annotators}
    data = {"tokens": tokens, "csrf_key": data["csrf_key"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)
    return data


class Tokens:
    """Who a token belongs to, and each annotator's CSRF token."""

    def __init__(self, data: dict):
        self._tokens = [(name, token.encode()) for name, token in data["tokens"].items()]
        self._key = bytes.fromhex(data["csrf_key"])

    def annotator(self, token: str | None) -> str | None:
        """The annotator whose token this is, else None (every token compared, in constant time)."""
        sent = (token or "").encode()
        found = None
        for name, expected in self._tokens:
            if hmac.compare_digest(sent, expected):
                found = name
        return found

    def csrf(self, annotator: str) -> str:
        return hmac.new(self._key, annotator.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, annotator: str, sent: str | None) -> bool:
        return hmac.compare_digest((sent or "").encode(), self.csrf(annotator).encode())
