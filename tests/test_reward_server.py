"""The reward server as a user starts it (``python -m orchestrator.reward_server`` in a subprocess):
right scores, 401, and every input bounded: 413 for large bodies, 400 for malformed or deeply nested
JSON, half-sent requests closed within the read timeout, idle connections that cannot starve
``/health``, and nothing written where it is started."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from orchestrator.errors import RewardError
from orchestrator.rewards.remote import remote_scores
from tests.conftest import ROOT

TOKEN = "server-test-token"
READ_TIMEOUT_S = 2.0
MAX_BODY = 300_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A reward server subprocess started in an empty folder; yields (port, that folder)."""
    cwd = tmp_path_factory.mktemp("server_cwd")
    fn = tmp_path_factory.mktemp("fn") / "lengths.py"
    fn.write_text("def score(prompts, responses):\n    return [float(len(r)) for r in responses]\n")
    env = dict(os.environ, TETHER_REWARD_TOKEN=TOKEN, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.reward_server", f"function={fn}:score", "port=0",
                             f"read_timeout_s={READ_TIMEOUT_S}", f"max_body_bytes={MAX_BODY}"],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("reward server: http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
    port = int(line.split("127.0.0.1:")[1].split("/")[0])
    yield port, cwd
    proc.terminate()
    assert proc.wait(timeout=15) is not None


def _raw(port: int, data: bytes, wait_s: float = 10.0) -> tuple[bytes, float]:
    """Send ``data`` on a new connection; return everything the server sent until it closed, and
    the seconds that took (``<open>`` is appended if it had not closed after ``wait_s``)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(wait_s)
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, socket.timeout):
            out += b"<open>"
        except ConnectionResetError:
            pass
    return out, time.monotonic() - start


def _post_head(length: int | None, token: str = TOKEN, extra: str = "") -> bytes:
    cl = f"Content-Length: {length}\r\n" if length is not None else ""
    return f"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n{cl}{extra}\r\n".encode()


def _status_and_error(reply: bytes) -> tuple[int, str]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]


def test_scores_and_token(server):
    port, _ = server
    url = f"http://127.0.0.1:{port}/score"
    assert remote_scores(url, TOKEN, ["p", "q"], ["abc", "hello"], 10) == [3.0, 5.0]
    with pytest.raises(RewardError, match="refused the token"):
        remote_scores(url, "wrong", ["p"], ["abc"], 10)
    reply, _ = _raw(port, _post_head(2, token="") + b"{}")
    assert _status_and_error(reply)[0] == 401


def test_body_size_is_bounded(server):
    port, _ = server
    reply, seconds = _raw(port, _post_head(10**9))  # declared: refused before a byte of body is read
    code, message = _status_and_error(reply)
    assert code == 413 and "max_body_bytes" in message and seconds < READ_TIMEOUT_S
    chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"  # chunked, no length: counted while it streams in
    reply, _ = _raw(port, _post_head(None, extra="Transfer-Encoding: chunked\r\n") + chunk * 6)
    assert _status_and_error(reply)[0] == 413


@pytest.mark.parametrize("body,expected", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"{not json", "invalid request"),
    (b'{"prompts": ["a"], "responses": [1]}', "'responses' must be a list of strings"),
    (b'{"prompts": ["a", "b"], "responses": ["x"]}', "2 prompts but 1 responses"),
], ids=["deep", "malformed", "not-strings", "lengths"])
def test_bad_json_gets_400_with_one_line(server, body, expected):
    port, _ = server
    reply, _ = _raw(port, _post_head(len(body)) + body)
    code, message = _status_and_error(reply)
    assert code == 400 and expected in message and "\n" not in message


def test_half_sent_requests_are_closed_and_health_stays_up(server):
    port, _ = server
    for half in (b"POST /score HTTP/1.1\r\nHost: x\r\n", _post_head(100) + b'{"prompts"'):
        reply, seconds = _raw(port, half)
        assert reply == b"" and seconds < READ_TIMEOUT_S + 3, (reply, seconds)
    idle = []
    for _ in range(300):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(_post_head(1000) + b"{")
        idle.append(s)
    try:
        start = time.monotonic()
        reply, _ = _raw(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200") and time.monotonic() - start < READ_TIMEOUT_S, reply[:200]
        deadline = time.monotonic() + READ_TIMEOUT_S + 10
        for s in idle:  # every one of them is closed by the server within the read timeout
            s.settimeout(max(deadline - time.monotonic(), 0.1))
            assert s.recv(100) == b""
    finally:
        for s in idle:
            s.close()


def test_nothing_written_where_it_starts(server):
    port, cwd = server
    assert remote_scores(f"http://127.0.0.1:{port}/score", TOKEN, ["p"], ["a"], 10) == [1.0]
    assert list(cwd.iterdir()) == [], "the server wrote into the folder it was started in (Hydra outputs/?)"


def test_bad_arguments_are_one_line(tmp_path):
    env = dict(os.environ, TETHER_REWARD_TOKEN=TOKEN, PYTHONPATH=str(ROOT))
    for args, expected in ((["port=abc"], "port"), (["no_such_key=1"], "no_such_key"),
                           (["max_body_bytes=0"], "max_body_bytes")):
        proc = subprocess.run([sys.executable, "-m", "orchestrator.reward_server", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("tether: error:") and expected in lines[0]
    assert list(tmp_path.iterdir()) == []
