"""The remote reward server and client: token required, 127.0.0.1 by default, errors on one line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from orchestrator.errors import ConfigError, RewardError
from orchestrator.reward_server import RewardServerConfig
from orchestrator.rewards.remote import make_server, remote_scores
from tests.conftest import ROOT
from workers.reward import RewardWorker


def _lengths(prompts, responses):
    return [float(len(r)) for r in responses]


@pytest.fixture
def server():
    srv = make_server(_lengths, "test:_lengths", token="s3cret")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
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
    srv.server_close()
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
    url, _ = server
    monkeypatch.setenv("TETHER_REWARD_TOKEN", "s3cret")
    fn = tmp_path / "one.py"
    fn.write_text("def one(prompts, responses):\n    return [1.0] * len(responses)\n")
    worker = RewardWorker({"seed": 0, "device": "cpu", "dtype": "float32", "trust_remote_code": False,
                           "torch_threads": 1, "function": f"{fn}:one", "function_weight": 1.0, "model_path": None,
                           "remote_url": url, "remote_weight": 0.5, "remote_token_env": "TETHER_REWARD_TOKEN",
                           "remote_timeout_s": 5})
    out = worker.score(["p", "q"], ["ab", "abcd"])
    assert out["reward/remote"] == [2.0, 4.0] and out["reward"] == [2.0, 3.0]
