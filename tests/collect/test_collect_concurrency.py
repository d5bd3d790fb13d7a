"""20 annotators posting at once to the real server (uvicorn; SQLite, and a PostgreSQL server): no judgement
lost, none doubled."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from orchestrator.rewards.remote import RewardServer, ServerLimits
from tests.collect.conftest import login

N = 20


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_twenty_annotators_posting_at_once_lose_nothing_and_duplicate_nothing(labelling, database, request):
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else None
    names = tuple(f"a{i}" for i in range(N))
    session, app, tokens = labelling(n_pairs=2 * N, annotators=names, url=url)
    server = RewardServer(app, "127.0.0.1", 0, ServerLimits()).start()
    url = "http://127.0.0.1:%d" % server.server_address[1]
    try:
        clients = {n: httpx.Client(base_url=url, timeout=60) for n in names}
        csrf = {n: login(c, tokens[n]) for n, c in clients.items()}
        start = threading.Barrier(N)

        def serve_then_judge_twice(name):
            client = clients[name]
            start.wait()
            pair = client.get("/api/next").json()["pair"]  # all 20 ask at once
            start.wait()
            body = {"pair_id": pair["id"], "choice": "left" if int(name[1:]) % 2 else "right"}
            with ThreadPoolExecutor(2) as two:  # the same judgement posted twice at once (a double click)
                codes = sorted(two.map(lambda _: client.post("/api/judge", json=body,
                                                             headers={"X-CSRF-Token": csrf[name]}).status_code, range(2)))
            return pair["id"], codes

        with ThreadPoolExecutor(N) as pool:
            results = list(pool.map(serve_then_judge_twice, names))
        for c in clients.values():
            c.close()
    finally:
        server.shutdown()
    served = [pid for pid, _ in results]
    assert len(set(served)) == N  # no pair went to two annotators
    assert all(codes == [200, 409] for _, codes in results), results  # one stored, the repeat refused
    rows = session.store.judgements()
    assert len(rows) == N and {(r["pair_id"], r["annotator"]) for r in rows} == set(zip(served, names))
    exported = (session.folder / "preferences.jsonl").read_text().splitlines()
    assert len(exported) == N and session.values["collect/labels"] == N
