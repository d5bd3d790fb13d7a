"""The remote reward server and client: token required, 127.0.0.1 by default, errors on one line."""

from __future__ import annotations

import http.server
import json
import os
import threading
import subprocess
import sys

import pytest

from orchestrator.errors import ConfigError, RewardError
from orchestrator.reward_server import RewardServerConfig
from orchestrator.rewards.remote import make_server, remote_scores
from orchestrator.runtime import Secret
from tests.conftest import ROOT
from orchestrator.specs import RewardSpec
from workers.reward import RewardWorker


def _lengths(prompts, responses):
    return [float(len(r)) for r in responses]


@pytest.fixture
def server():
    srv = make_server(_lengths, "test:_lengths", token="s3cret").start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/score", srv
    srv.shutdown()


def test_scores_with_the_right_token(server):
    url, srv = server
    assert srv.server_address[0] == "127.0.0.1" and RewardServerConfig().host == "127.0.0.1"
    assert remote_scores(url, "s3cret", ["p", "q"], ["abc", "hello"], 5) == [3.0, 5.0]


def test_wrong_token_is_refused(server):
    url, _ = server
    with pytest.raises(RewardError, match="refused the token"):
        remote_scores(url, "guess", ["p"], ["abc"], 5)


def test_server_side_error_comes_back(server):
    url, _ = server
    with pytest.raises(RewardError, match="400"):
        remote_scores(url.replace("/score", "/score"), "s3cret", ["p"], [3], 5)  # a number, not a string


def test_unreachable_server_fails_fast(server):
    _, srv = server
    port = srv.server_address[1]
    srv.shutdown()
    with pytest.raises(RewardError, match="did not answer"):
        remote_scores(f"http://127.0.0.1:{port}/score", "s3cret", ["p"], ["a"], 2)


def test_server_needs_a_token():
    with pytest.raises(ConfigError, match="token"):
        make_server(_lengths, "x", token="")
    env = {k: v for k, v in os.environ.items() if k != "TETHER_REWARD_TOKEN"}
    proc = subprocess.run([sys.executable, "-m", "orchestrator.reward_server", "port=0"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "needs a token" in proc.stderr


def test_reward_worker_adds_the_remote_part(server, monkeypatch, tmp_path):
    """The token comes as a constructor argument (a Secret), not from the worker's environment."""
    url, _ = server
    monkeypatch.delenv("TETHER_REWARD_TOKEN", raising=False)
    fn = tmp_path / "one.py"
    fn.write_text("def one(prompts, responses):\n    return [1.0] * len(responses)\n")
    worker = RewardWorker(RewardSpec(function=f"{fn}:one", remote_url=url, remote_weight=0.5, remote_timeout_s=5),
                          Secret("s3cret"))
    assert "s3cret" not in repr(worker.token) + str(worker.token)
    out = worker.score(["p", "q"], ["ab", "abcd"])
    assert out["reward/remote"] == [2.0, 4.0] and out["reward"] == [2.0, 3.0]


class _BadReplies(http.server.BaseHTTPRequestHandler):
    """A misbehaving third-party reward server: answers 200 with the reply named by the path."""

    REPLIES = {"/dict": {"rewards": {"a": 1.0, "b": 2.0}}, "/strings": {"rewards": ["1", "2"]},
               "/short": {"rewards": [1.0]}, "/none": {"scores": [1.0, 2.0]}, "/nan": {"rewards": [1.0, float("nan")]}}

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps(self.REPLIES[self.path]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("path,expected", [("/dict", "got dict"), ("/strings", "got a str at index 0"),
                                           ("/short", "returned 1 scores for 2"), ("/none", "no 'rewards'"),
                                           ("/nan", "non-finite")])
def test_client_checks_the_reply(path, expected):
    srv = http.server.HTTPServer(("127.0.0.1", 0), _BadReplies)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}{path}"
        with pytest.raises(RewardError) as info:
            remote_scores(url, "t", ["p", "q"], ["a", "b"], 5)
        assert expected in str(info.value) and url in str(info.value) and "\n" not in str(info.value)
    finally:
        srv.shutdown()
