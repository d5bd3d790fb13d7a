"""The labelling app through Starlette's test client: tokens, CSRF, escaping, bad requests, export,
resume and agreement, on a real SQLite label database."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from orchestrator.collect.agreement import agreement
from orchestrator.collect.store import LabelStore
from orchestrator.preference_data import load_pair_rows
from tests.collect.conftest import XSS_A, login


def _stored(session) -> int:
    return len(session.store.judgements())


def test_every_request_without_a_valid_token_gets_401(labelling):
    session, app, tokens = labelling()
    client = TestClient(app)
    wrong = tokens["alice"][:-1] + ("x" if tokens["alice"][-1] != "x" else "y")
    for token in (None, "", wrong, tokens["alice"] + "x", "short"):
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        for path in ("/", "/api/next", "/page.js", "/status", "/api/status", "/no-such-page"):
            assert client.get(path, headers=headers).status_code == 401, (path, token)
        reply = client.post("/api/judge", headers=headers, json={"pair_id": "x", "choice": "left"})
        assert reply.status_code == 401
    assert client.get(f"/?token={wrong}").status_code == 401
    assert client.get("/api/next", headers={"Authorization": f"Bearer {tokens['alice']}"}).status_code == 200
    assert _stored(session) == 0 and session.store.progress()["done"] == 0


def test_token_url_sets_an_httponly_cookie_and_the_page_is_locked_down(labelling):
    session, app, tokens = labelling()
    client = TestClient(app)
    reply = client.get(f"/?token={tokens['alice']}", follow_redirects=False)
    assert reply.status_code == 303 and reply.headers["location"] == "/"
    cookie = reply.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    page = client.get("/")
    assert page.status_code == 200 and tokens["alice"] not in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("style-src")[0]
    pair = client.get("/api/next").json()["pair"]
    assert XSS_A in (pair["left"], pair["right"])  # sent as JSON data; the page sets it with textContent
    assert "innerHTML" not in client.get("/page.js").text


def test_posts_need_the_annotators_csrf_token(labelling):
    session, app, tokens = labelling()
    alice, bob = TestClient(app), TestClient(app)
    csrf_alice, csrf_bob = login(alice, tokens["alice"]), login(bob, tokens["bob"])
    assert csrf_alice != csrf_bob
    pair = alice.get("/api/next").json()["pair"]
    body = {"pair_id": pair["id"], "choice": "left"}
    for headers in ({}, {"X-CSRF-Token": "0" * 64}, {"X-CSRF-Token": csrf_bob}):
        assert alice.post("/api/judge", json=body, headers=headers).status_code == 403
    assert _stored(session) == 0
    assert alice.post("/api/judge", json=body, headers={"X-CSRF-Token": csrf_alice}).status_code == 200
    assert _stored(session) == 1


@pytest.mark.parametrize("body, code", [
    (b"not json", 400), (b"[1, 2]", 400), (b'{"pair_id": "P", "choice": "up"}', 400),
    (b'{"pair_id": "P", "choice": "left", "tags": ["kind"]}', 400),
    (b'{"pair_id": "P", "choice": "left", "note": "' + b"x" * 2001 + b'"}', 400),
    (b'{"pair_id": "P", "choice": "left", "extra": 1}', 400), (b'{"pair_id": 7, "choice": "left"}', 400),
    (b'{"pair_id": "not-served", "choice": "left"}', 409), (b'{"pair_id": "P", "choice": "left", "note": "' + b"y" * 70000 + b'"}', 413),
    (b"[" * 100000, 413),
])
def test_malformed_judgements_get_4xx_and_change_nothing(labelling, body, code):
    session, app, tokens = labelling()
    client = TestClient(app)
    csrf = login(client, tokens["alice"])
    pair = client.get("/api/next").json()["pair"]
    before = (session.folder / "preferences.jsonl").read_bytes()
    reply = client.post("/api/judge", content=body.replace(b'"P"', json.dumps(pair["id"]).encode()),
                        headers={"X-CSRF-Token": csrf, "Content-Type": "application/json"})
    assert reply.status_code == code, reply.text
    assert _stored(session) == 0 and (session.folder / "preferences.jsonl").read_bytes() == before
    assert client.get("/api/next").json()["pair"]["id"] == pair["id"]  # still the same pair to judge


def test_judgements_are_stored_with_their_order_and_exported_for_dpo(labelling):
    """Four pairs judged left / right / tie / skip: the database keeps who, when, order and time; the
    export holds the two decisive pairs with the response the annotator saw on the chosen side."""
    session, app, tokens = labelling(n_pairs=4)
    client = TestClient(app)
    csrf = login(client, tokens["alice"])
    picked = {}
    reply = client.get("/api/next").json()
    for choice in ("left", "right", "tie", "skip"):
        pair = reply["pair"]
        picked[pair["id"]] = (choice, pair)
        reply = client.post("/api/judge", json={"pair_id": pair["id"], "choice": choice, "note": "n-" + choice,
                                                "tags": ["honest"]}, headers={"X-CSRF-Token": csrf}).json()
    assert reply["pair"] is None and reply["progress"] == {"done": 4, "total": 4, "mine": 4}
    again = next(iter(picked))
    assert client.post("/api/judge", json={"pair_id": again, "choice": "right"},
                       headers={"X-CSRF-Token": csrf}).status_code == 409
    rows = session.store.judgements()
    assert len(rows) == 4 and {r["annotator"] for r in rows} == {"alice"}
    for r in rows:
        choice, shown = picked[r["pair_id"]]
        stored = session.store.pairs()
        pair = next(p for p in stored if p["id"] == r["pair_id"])
        assert shown["left"] == pair["response_" + r["left"]]
        expected = {"left": r["left"], "right": "b" if r["left"] == "a" else "a"}.get(choice, choice)
        assert r["choice"] == expected and r["note"] == "n-" + choice and r["tags"] == "honest"
        assert r["seconds"] >= 0 and r["created_at"] > 0
    exported = [json.loads(line) for line in (session.folder / "preferences.jsonl").read_text().splitlines()]
    assert len(exported) == 2
    for row in exported:
        choice, shown = picked[row["pair_id"]]
        assert row["chosen"] == shown[choice] and row["rejected"] == shown["right" if choice == "left" else "left"]
    assert len(load_pair_rows(str(session.folder / "preferences.jsonl"))) == 2  # what pipeline=dpo / rm read
    summary = json.loads((session.folder / "summary.json").read_text())
    assert (summary["collect/labels"], summary["collect/ties"], summary["collect/skips"]) == (4, 1, 1)


def test_no_pair_goes_to_two_annotators_and_a_restart_resumes(labelling, tmp_path):
    session, app, tokens = labelling(n_pairs=3, annotators=("alice", "bob", "carol"))
    clients = {name: TestClient(app) for name in tokens}
    csrf = {name: login(c, tokens[name]) for name, c in clients.items()}
    first = {name: c.get("/api/next").json()["pair"]["id"] for name, c in clients.items()}
    assert len(set(first.values())) == 3
    assert clients["alice"].post("/api/judge", json={"pair_id": first["alice"], "choice": "left"},
                                 headers={"X-CSRF-Token": csrf["alice"]}).status_code == 200
    assert clients["alice"].get("/api/next").json()["pair"] is None  # the others' pairs are theirs

    # a restart: a new store and app over the same database and token file
    session2, app2, tokens2 = labelling(n_pairs=3, annotators=("alice", "bob", "carol"), folder=session.folder)
    assert tokens2 == tokens and session2.store.count_pairs() == 3  # same URLs, pairs not added twice
    bob = TestClient(app2)
    login(bob, tokens["bob"])
    assert bob.get("/api/next").json()["pair"]["id"] == first["bob"]  # his pending pair, same order
    assert len(session2.store.judgements()) == 1
    alice = TestClient(app2)
    login(alice, tokens["alice"])
    assert alice.get("/api/next").json()["pair"] is None  # nothing labelled is served again


def test_overlap_gives_agreement_and_kappa(labelling):
    """Two annotators on the same four pairs: labels a,a / b,b / a,b / tie,a agree on 2 of 4;
    pooled label shares a 4/8, b 3/8, tie 1/8: p_e = 26/64, kappa = (0.5 - 26/64) / (1 - 26/64) = 3/19."""
    session, app, tokens = labelling(n_pairs=4, overlap=2)
    plan = {"alice": ["a", "b", "a", "tie"], "bob": ["a", "b", "b", "a"]}
    order = [p["id"] for p in session.store.pairs()]
    for name, labels in plan.items():
        client = TestClient(app)
        csrf = login(client, tokens[name])
        for _ in order:
            pair = client.get("/api/next").json()["pair"]
            stored = next(p for p in session.store.pairs() if p["id"] == pair["id"])
            want = labels[order.index(pair["id"])]
            side = want if want == "tie" else "left" if stored["response_" + want] == pair["left"] else "right"
            assert client.post("/api/judge", json={"pair_id": pair["id"], "choice": side},
                               headers={"X-CSRF-Token": csrf}).status_code == 200
    summary = json.loads((session.folder / "summary.json").read_text())
    assert summary["collect/agreement/compared"] == 4
    assert summary["collect/agreement/rate"] == pytest.approx(0.5)
    assert summary["collect/agreement/kappa"] == pytest.approx(3 / 19)
    status = TestClient(app).get("/status", headers={"Authorization": f"Bearer {tokens['bob']}"})
    assert "collect/agreement/kappa" in status.text and f"{3 / 19:.4g}" in status.text
    exported = [json.loads(line) for line in (session.folder / "preferences.jsonl").read_text().splitlines()]
    assert [r["votes"]["a"] - r["votes"]["b"] for r in exported] == [2, -2, 1]  # the split pair (a vs b) is left out


def test_agreement_of_identical_labels_has_no_kappa():
    same = [{"pair_id": "p", "choice": "a"}, {"pair_id": "p", "choice": "a"}, {"pair_id": "q", "choice": "skip"}]
    assert agreement(same) == {"compared": 1, "agreement": 1.0, "kappa": None}
    assert agreement([]) == {"compared": 0, "agreement": None, "kappa": None}


def test_store_accepts_the_same_pairs_once(tmp_path):
    store = LabelStore(f"sqlite:///{tmp_path / 'l.db'}")
    rows = [{"prompt": [{"role": "user", "content": "hi"}], "response_a": "x", "response_b": "y"}]
    assert store.add_pairs(rows, "pairs_path") == 1 and store.add_pairs(rows, "pairs_path") == 0
    assert store.pairs()[0]["prompt"] == rows[0]["prompt"]


def judge_pairs(session, app, token: str, n: int, choice: str) -> None:
    """Alice judges ``n`` served pairs with ``choice``; the session must not end before the last."""
    client = TestClient(app)
    csrf = login(client, token)
    for _ in range(n):
        assert not session.stop.is_set()
        pair = client.get("/api/next").json()["pair"]
        client.post("/api/judge", json={"pair_id": pair["id"], "choice": choice}, headers={"X-CSRF-Token": csrf})


def test_the_session_ends_after_max_labels_or_when_every_pair_is_judged(labelling):
    session, app, tokens = labelling(n_pairs=4, extra=("collect.max_labels=2",))
    judge_pairs(session, app, tokens["alice"], 2, "tie")
    assert session.stop.is_set() and len(session.store.judgements()) == 2
    session.close()
    metrics = [json.loads(line) for line in (session.folder / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2] and metrics[0]["collect/ties"] == 2  # the session's last row

    again, app, tokens = labelling(n_pairs=4, folder=session.folder)  # a new session: 2 of 4 left, no limit
    judge_pairs(again, app, tokens["alice"], 2, "left")
    assert again.stop.is_set()  # every pair judged
