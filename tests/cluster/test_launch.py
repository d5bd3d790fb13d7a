"""`launch.sh`: bad addresses fail fast with one line; the default job submitted to a local head
node (started by `launch.sh submit` itself) succeeds end to end, and status / logs / list /
actors report on it.

The head of this module is its own: a fresh temp dir and free ports, so it neither joins nor
disturbs any other Ray instance on the machine, and `launch.sh head stop` stops only its processes.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

import psutil
import pytest

from orchestrator.tracking import read_metrics
from tests.conftest import ROOT, free_ports as _free_ports

LAUNCH = str(ROOT / "launch.sh")


def launch(*args: str, env: dict | None = None, timeout: int = 60) -> subprocess.CompletedProcess:
    """Run ``launch.sh ARGS`` and return the finished process."""
    return subprocess.run([LAUNCH, *args], cwd=ROOT, env=env or _env(), capture_output=True, text=True,
                          timeout=timeout)


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("launch.sh: error:")]
    assert len(lines) == 1, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return lines[0]


def test_help_and_unknown_command():
    """--help lists the commands; an unknown command is one error line and exit 2."""
    proc = launch("--help")
    assert proc.returncode == 0
    for word in ("submit", "status", "logs", "stop", "list", "actors", "head start", "tensorboard"):
        assert word in proc.stdout
    proc = launch("frobnicate")
    assert proc.returncode == 2 and "unknown command frobnicate" in _error_line(proc)


def test_unreachable_addresses_fail_within_seconds():
    """A closed port, a server that never answers and an HTTP server that is not Ray each give
    one `launch.sh: error:` line and exit 2 within 10 s; nothing is submitted."""
    silent = socket.socket()  # accepts connections (kernel backlog), never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    not_ray = socket.socket()
    not_ray.bind(("127.0.0.1", 0))
    not_ray.listen(8)

    def answer_404():
        while True:
            try:
                conn, _ = not_ray.accept()
            except OSError:
                return
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            conn.close()

    threading.Thread(target=answer_404, daemon=True).start()
    closed = _free_ports(1)[0]
    cases = {
        f"http://127.0.0.1:{closed}": "cannot reach the Ray Jobs API",
        f"127.0.0.1:{silent.getsockname()[1]}": "(no answer within 5s)",
        f"http://127.0.0.1:{not_ray.getsockname()[1]}": "not as a Ray Jobs API (HTTP 404",
        "ray://127.0.0.1:10001": "Ray Client address",
    }
    try:
        for address, expected in cases.items():
            start = time.monotonic()
            proc = launch("submit", "--address", address, "--", "trainer.max_steps=1", timeout=30)
            seconds = time.monotonic() - start
            assert proc.returncode == 2, (address, proc.stderr)
            assert expected in _error_line(proc), address
            assert seconds < 10, (address, seconds)
            assert "job id:" not in proc.stdout
        # the same check guards the other job commands, and RAY_ADDRESS is read too
        proc = launch("status", "some-job", env=_env(RAY_ADDRESS=f"http://127.0.0.1:{closed}"))
        assert proc.returncode == 2 and "cannot reach" in _error_line(proc)
    finally:
        silent.close()
        not_ray.close()


@pytest.fixture(scope="module")
def local_head():
    """Environment pointing launch.sh at a head of its own (not started here: the first
    `launch.sh submit` starts it); stopped and removed afterwards."""
    head_dir = tempfile.mkdtemp(prefix="tether-head-", dir="/tmp")  # short: Ray's socket paths
    dashboard, gcs, client = _free_ports(3)
    env = _env(TETHER_HEAD_DIR=head_dir, TETHER_DASHBOARD_PORT=str(dashboard), TETHER_GCS_PORT=str(gcs),
               TETHER_CLIENT_PORT=str(client), TETHER_HEAD_NUM_CPUS="2")
    yield env, dashboard, head_dir
    stop = launch("head", "stop", env=env, timeout=120)
    try:
        assert stop.returncode == 0, stop.stderr
        left = [p for p in psutil.process_iter(["cmdline"]) if any(head_dir in a for a in p.info["cmdline"] or [])]
        assert not left, [" ".join(p.info["cmdline"])[:200] for p in left]
    finally:
        shutil.rmtree(head_dir, ignore_errors=True)


def _listening_hosts(port: int, head_dir: str) -> set[str]:
    """Where the head's own processes (those started with its ``--temp-dir``) listen on ``port``. Another
    test's process may listen on the same port number on another address (gloo binds the node's IP)."""
    head = {p.pid for p in psutil.process_iter(["cmdline"]) if any(head_dir in a for a in p.info["cmdline"] or [])}
    return {c.laddr.ip for c in psutil.net_connections(kind="tcp")
            if c.status == "LISTEN" and c.laddr.port == port and c.pid in head}


@pytest.mark.slow
def test_submit_default_job_to_local_head(local_head, tmp_path):
    """`launch.sh submit` (no address) starts a local head on 127.0.0.1, runs the default job to
    SUCCEEDED and exits 0; the printed output_dir holds 2 metrics rows and TensorBoard events;
    status, logs, list and actors (role names) report on the job; the head stops cleanly."""
    env, dashboard, head_dir = local_head
    env = {**env, "TETHER_OUTPUT_ROOT": str(tmp_path / "outputs")}
    proc = launch("submit", "--", "trainer.max_steps=2", "logger.wandb=false", "logger.progress_bar=false",
                  env=env, timeout=840)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-4000:]}"
    fields = dict(re.findall(r"^(job id|dashboard|output_dir): (.+)$", proc.stdout, re.M))
    job_id, out = fields["job id"], fields["output_dir"]
    assert fields["dashboard"] == f"http://127.0.0.1:{dashboard}"
    assert out.startswith(str(tmp_path / "outputs") + "/")
    assert f"job {job_id}: SUCCEEDED" in proc.stdout

    # the head's dashboard / Jobs API listen on loopback only, and it answers
    assert _listening_hosts(dashboard, head_dir) == {"127.0.0.1"}
    assert urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/", timeout=10).status == 200
    assert os.path.exists(os.path.join(head_dir, "ray_current_cluster"))

    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(isinstance(r["reward/mean"], float) for r in rows)
    events = [f for f in os.listdir(os.path.join(out, "tensorboard")) if f.startswith("events.out.tfevents")]
    assert events

    status = launch("status", job_id, env=env)
    assert status.returncode == 0, status.stderr
    assert f"job {job_id}: SUCCEEDED" in status.stdout and f"output_dir: {out}" in status.stdout
    logs = launch("logs", job_id, env=env)
    assert logs.returncode == 0 and f"metrics: {out}/metrics.jsonl" in logs.stdout
    listing = launch("list", "--address", fields["dashboard"], env=env)
    assert re.search(rf"^{re.escape(job_id)}\s+SUCCEEDED\s.*{re.escape(out)}$", listing.stdout, re.M), listing.stdout
    actors = launch("actors", job_id, env=env)
    assert actors.returncode == 0, actors.stderr
    names = [line.split()[0] for line in actors.stdout.splitlines()]
    for role in ("rollout-0-", "policy-rank0-", "critic-rank0-", "reference-", "reward-"):
        assert any(n.startswith(role) for n in names), (role, actors.stdout)
    missing = launch("status", "no-such-job", env=env)
    assert missing.returncode == 2 and "does not exist" in _error_line(missing)
