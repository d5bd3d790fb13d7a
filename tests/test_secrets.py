"""Secrets stay out of Ray's logs, and a local Ray goes away with its driver.

Ray writes ``runtime_env`` env vars in plain text to its session logs; the reward server's token and
``WANDB_API_KEY`` must never be among them. Each run here gets its own Ray temp folder (``RAY_TMPDIR``)
so every file Ray wrote for it can be searched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from orchestrator.rewards.remote import make_server
from orchestrator.runtime import actor_env
from tests.conftest import ROOT, run_cli


@pytest.fixture
def ray_tmp():
    """A short private Ray temp folder (Ray's socket paths must stay under ~107 characters)."""
    with tempfile.TemporaryDirectory(prefix="rt", dir="/tmp") as d:
        yield Path(d)


def _files_holding(root: Path, *secrets: str) -> list[str]:
    """Every regular file under ``root`` holding one of ``secrets``."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path} holds {s[:6]}..." for s in secrets if s.encode() in data]
    return found


def test_actor_env_holds_no_secret(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("TETHER_REWARD_TOKEN", "t" * 32)
    assert "k" * 40 not in json.dumps(actor_env()) and "t" * 32 not in json.dumps(actor_env())


@pytest.mark.slow
def test_rlhf_run_with_remote_reward_keeps_secrets_out_of_logs(tmp_path, ray_tmp, monkeypatch):
    token, wandb_key = f"tok-{uuid.uuid4().hex}", f"wandbkey{uuid.uuid4().hex}"
    srv = make_server(lambda p, r: [float(len(x)) / 100 for x in r], "test:lengths", token).start()
    monkeypatch.setenv("TETHER_REWARD_TOKEN", token)
    monkeypatch.setenv("WANDB_API_KEY", wandb_key)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    out = tmp_path / "run"
    try:
        # logger.wandb=false: with a key set the tracker goes online (no network here); the key
        # still sits in the driver's environment, where actor_env() used to copy it from
        proc = run_cli("rollout=hf", "pipeline=rlhf", "algorithm=grpo", "trainer.max_steps=1", "reward.function=null",
                       f"reward.remote_url=http://127.0.0.1:{srv.server_address[1]}/score", f"output_dir={out}",
                       "logger.wandb=false", "logger.progress_bar=false", timeout=400)
    finally:
        srv.shutdown()
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and "reward/remote/mean" in rows[0]  # the actor did reach the server with the token
    sessions = list((ray_tmp / "ray").glob("session_2*"))
    assert len(sessions) == 1 and list((sessions[0] / "logs").glob("runtime_env*")), "no Ray session logs found"
    assert _files_holding(ray_tmp, token, wandb_key) == []
    assert _files_holding(out, token, wandb_key) == []
    assert token not in proc.stdout + proc.stderr and wandb_key not in proc.stdout + proc.stderr


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a live process, None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], fields[19]


def _descendants(root: int) -> dict[int, tuple[str, str]]:
    """Every process under ``root`` (pid -> (command line, start time))."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parent[int(d)] = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    found, frontier = {}, [root]
    while frontier:
        p = frontier.pop()
        for child in (c for c, pp in parent.items() if pp == p):
            try:
                cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            stat = _stat(child)
            if stat:
                found[child] = (cmd, stat[1])
                frontier.append(child)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_local_ray_goes_away_after_kill_9_of_the_driver(tmp_path, ray_tmp):
    out = tmp_path / "run"
    env = dict(os.environ, RAY_TMPDIR=str(ray_tmp), PYTHONUNBUFFERED="1")
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator", "rollout=hf", "pipeline=sft",
                               "trainer.max_steps=5000", f"output_dir={out}", "logger.wandb=false",
                               "logger.progress_bar=false"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().strip()):
            assert driver.poll() is None, f"the run ended (rc={driver.returncode}) before its first step"
            assert time.monotonic() < deadline, "no step logged within 300 s"
            time.sleep(0.5)
        started = _descendants(driver.pid)
        session = next((ray_tmp / "ray").glob("session_2*")).name
        assert any("DashboardAgent" in cmd for cmd, _ in started.values()), started
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    deadline = time.monotonic() + 30
    while True:
        left = {pid: cmd for pid, (cmd, start) in started.items()
                if (s := _stat(pid)) and s[0] != "Z" and s[1] == start}
        left.update({int(d): "named" for d in os.listdir("/proc") if d.isdigit() and _named(int(d), session)})
        if not left or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not left, f"left running 30 s after kill -9 of the driver: {left}"


def _named(pid: int, session: str) -> bool:
    try:
        return session.encode() in Path(f"/proc/{pid}/cmdline").read_bytes() and _stat(pid)[0] != "Z"
    except (OSError, TypeError):
        return False
