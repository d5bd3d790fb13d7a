"""`launch.sh head start`: a fixed port that is already taken fails at once with one line naming the
port and the setting that moves it (Ray itself would start and fail every later job submission with
"No available agent"); a head that starts pins its dashboard agent ports and prints the exports with
which plain `ray status`, `ray list actors` and `ray job submit` work (and without which they fail).

Each head here has its own temp dir and free ports, so it never joins or disturbs another Ray.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time

import psutil
import pytest

from tests.conftest import ROOT, free_ports as _free_ports

LAUNCH = str(ROOT / "launch.sh")
RAY = str(ROOT / ".venv" / "bin" / "ray") if (ROOT / ".venv" / "bin" / "ray").exists() else "ray"


def _head_env(head_dir: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER", "RAY_AUTH_MODE"))}
    dashboard, gcs, client, agent, grpc = _free_ports(5)
    ports = dict(TETHER_DASHBOARD_PORT=str(dashboard), TETHER_GCS_PORT=str(gcs), TETHER_CLIENT_PORT=str(client),
                 TETHER_DASHBOARD_AGENT_PORT=str(agent), TETHER_DASHBOARD_AGENT_GRPC_PORT=str(grpc))
    return {**env, "TETHER_HEAD_DIR": head_dir, "TETHER_HEAD_NUM_CPUS": "1", "PYTHONUNBUFFERED": "1", **ports, **extra}


def _launch(*args: str, env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([LAUNCH, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _head_processes(head_dir: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(head_dir in a for a in p.info["cmdline"] or []):
                found.append(p)
        except psutil.Error:
            pass
    return found


@pytest.fixture
def head_dir():
    path = tempfile.mkdtemp(prefix="tether-hp-", dir="/tmp")  # short: Ray's socket paths
    yield path
    subprocess.run([LAUNCH, "head", "stop"], cwd=ROOT, env={**os.environ, "TETHER_HEAD_DIR": path},
                   capture_output=True, timeout=120)
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("setting", ["TETHER_DASHBOARD_AGENT_PORT", "TETHER_DASHBOARD_AGENT_GRPC_PORT", "TETHER_GCS_PORT"])
def test_taken_port_is_one_line_and_nothing_starts(head_dir, setting):
    """A port held by another process (listening on 127.0.0.1 only, as a local service would):
    exit 2 within seconds, exactly one `launch.sh: error:` line with the port and the setting,
    no traceback, and no Ray process of this head left running."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        start = time.monotonic()
        proc = _launch("head", "start", env=_head_env(head_dir, **{setting: str(port)}), timeout=60)
        seconds = time.monotonic() - start
    finally:
        holder.close()
    errors = [line for line in proc.stderr.splitlines() if line.startswith("launch.sh: error:")]
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1, proc.stderr
    assert f"port {port} " in errors[0] and setting in errors[0], errors[0]
    assert "Traceback" not in proc.stderr and "No available agent" not in proc.stderr
    assert seconds < 10, seconds
    assert not _head_processes(head_dir)


def test_taken_extra_ray_start_port_names_its_option(head_dir):
    """A port given as a `ray start` option after `head start --` is checked the same way."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        proc = _launch("head", "start", "--", f"--object-manager-port={port}", env=_head_env(head_dir), timeout=60)
    finally:
        holder.close()
    assert proc.returncode == 2, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("launch.sh: error:")]
    assert f"port {port} (object-manager-port)" in line and "--object-manager-port" in line


def test_bad_port_setting_is_one_line(head_dir):
    proc = _launch("head", "start", env=_head_env(head_dir, TETHER_DASHBOARD_AGENT_PORT="52365x"), timeout=60)
    assert proc.returncode == 2 and "TETHER_DASHBOARD_AGENT_PORT=52365x is not a port number" in proc.stderr


@pytest.mark.slow
def test_head_pins_agent_ports_and_prints_working_exports(head_dir):
    """The started head's dashboard agent listens on the pinned ports; the printed `export` line
    makes plain `ray status` and `ray list actors` work, and without RAY_AUTH_MODE they fail."""
    env = _head_env(head_dir)
    proc = _launch("head", "start", env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exports = re.search(r"^  export (.+)$", proc.stdout, re.M)
    assert exports, proc.stdout
    settings = dict(item.split("=", 1) for item in exports.group(1).split())
    assert settings["RAY_AUTH_MODE"] == "token"
    assert settings["RAY_API_SERVER_ADDRESS"] == f"http://127.0.0.1:{env['TETHER_DASHBOARD_PORT']}"

    deadline = time.monotonic() + 30
    wanted = {int(env["TETHER_DASHBOARD_AGENT_PORT"]), int(env["TETHER_DASHBOARD_AGENT_GRPC_PORT"])}
    while time.monotonic() < deadline:
        listening = {c.laddr.port for c in psutil.net_connections(kind="tcp") if c.status == "LISTEN"}
        if wanted <= listening:
            break
        time.sleep(1)
    assert wanted <= listening, wanted - listening

    plain = {k: v for k, v in env.items() if not k.startswith("TETHER_")}
    with_exports = {**plain, **settings}
    for _ in range(30):  # the autoscaler's first report can take a few seconds after start
        status = subprocess.run([RAY, "status"], env=with_exports, capture_output=True, text=True, timeout=60)
        if status.returncode or "Active:" in status.stdout:
            break
        time.sleep(1)
    assert status.returncode == 0 and "Active:" in status.stdout, status.stdout[-1000:] + status.stderr[-2000:]
    actors = subprocess.run([RAY, "list", "actors"], env=with_exports, capture_output=True, text=True, timeout=60)
    assert actors.returncode == 0, actors.stderr[-2000:]
    no_auth = {k: v for k, v in with_exports.items() if k != "RAY_AUTH_MODE"}
    refused = subprocess.run([RAY, "status"], env=no_auth, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "AuthenticationError" in refused.stdout + refused.stderr, refused.stderr[-2000:]
