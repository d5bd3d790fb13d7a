"""Fixtures of the labelling app tests: a label database with pairs, and the app over it."""

from __future__ import annotations

import json

import pytest

from tests.conftest import compose_config

XSS_A = 'A1 <script>window.__xss = 1</script> done'
XSS_B = 'B1 <img src=x onerror="window.__xss = 2"> done'


def pair_rows(n: int) -> list[dict]:
    """``n`` pairs; the first holds markup that would run script if it were parsed as HTML."""
    rows = [{"prompt": f"Question {i}?", "response_a": f"Answer A{i}.", "response_b": f"Answer B{i}."} for i in range(n)]
    rows[0].update(response_a=XSS_A, response_b=XSS_B)
    return rows


def write_pairs(path, n: int):
    path.write_text("".join(json.dumps(r) + "\n" for r in pair_rows(n)))
    return path


@pytest.fixture
def labelling(tmp_path):
    """``make(n_pairs, annotators, overlap)`` -> (session, starlette app, {name: token}) over a SQLite
    database in ``tmp_path``; trackers off."""
    from orchestrator.collect.app import make_app
    from orchestrator.collect.session import LabellingSession, database_url
    from orchestrator.collect.store import LabelStore

    made = []

    def make(n_pairs=4, annotators=("alice", "bob"), overlap=1, folder=None, url=None, extra=()):
        names = ",".join(annotators)
        cfg = compose_config("pipeline=collect", f"collect.annotators=[{names}]", f"collect.overlap={overlap}",
                             "logger.wandb=false", "logger.tensorboard=false", f"output_dir={tmp_path}",
                             *([f"collect.database_url='{url}'"] if url else []), *extra)
        folder = folder or tmp_path / "collect"
        folder.mkdir(exist_ok=True)
        store = LabelStore(database_url(cfg, folder), overlap)
        store.add_pairs(pair_rows(n_pairs), "pairs_path")
        session = LabellingSession(cfg, store, folder)
        made.append(session)
        app = make_app(store, session.tokens, session.status, session.after_judgement, cfg.collect.max_body_bytes)
        return session, app, dict(zip(annotators, session.tokens_in_order()))

    yield make
    for s in made:
        s.tracker.close()


def login(client, token: str) -> str:
    """Log ``client`` in with ``token``; returns the page's CSRF token."""
    import re

    reply = client.get(f"/?token={token}", follow_redirects=True)
    assert reply.status_code == 200, reply.text
    return re.search(r'name="csrf-token" content="([0-9a-f]+)"', reply.text).group(1)


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """A PostgreSQL server of its own (pgserver's bundled binaries) for the session; its SQLAlchemy URL."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("postgres"), cleanup_mode="stop")
    yield server.get_uri().replace("postgresql://", "postgresql+psycopg2://")
    server.cleanup()
