"""Worker failures and numerical faults during a real run (processes killed by PID)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import pytest

from orchestrator import checkpoint
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _start(out, *overrides):
    log = open(out.parent / f"{out.name}.log", "w")
    cmd = [sys.executable, "-m", "orchestrator", f"output_dir={out}", "logger.wandb=false",
           "logger.progress_bar=false", *overrides]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return proc, out.parent / f"{out.name}.log"


def _rows(out):
    path = out / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _wait_for(cond, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        assert proc.poll() is None, "the run ended before the failure was injected"
        time.sleep(0.2)
    raise AssertionError("condition not reached")


def _kill_actor(class_name: str, driver_pid: int) -> int:
    """SIGKILL one actor process of ``class_name`` started under the run's Ray (a descendant of the
    run's driver: other Ray instances on the machine are left alone)."""
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].startswith("ray::") and class_name in cmd[0]:
            try:
                ours = driver_pid in [a.pid for a in p.parents()]
            except psutil.Error:
                continue
            if ours:
                p.kill()
                return p.pid
    raise AssertionError(f"no {class_name} process found")


def test_killed_rollout_and_reward_actors_are_restarted_and_the_run_completes(tmp_path):
    out = tmp_path / "run"
    proc, log = _start(out, "algorithm=grpo", "trainer.max_steps=20")
    _wait_for(lambda: len(_rows(out)) >= 3, proc)
    _kill_actor("RolloutWorker", proc.pid)
    _wait_for(lambda: len(_rows(out)) >= 6, proc)  # the restarted engine has generated again
    _kill_actor("RewardWorker", proc.pid)
    assert proc.wait(timeout=400) == 0, log.read_text()[-3000:]
    rows = _rows(out)
    assert [r["step"] for r in rows] == list(range(1, 21))
    text = log.read_text()
    assert "rollout-0 was restarted by Ray" in text and "the reward actor was restarted by Ray" in text
    assert rows[-1]["reward/mean"] > rows[0]["reward/mean"]  # training went on with current weights


def test_killed_trainer_rank_ends_the_run_cleanly(tmp_path):
    out = tmp_path / "run"
    proc, log = _start(out, "algorithm=grpo", "rollout=hf", "trainer.num_ranks=2", "trainer.max_steps=200",
                       "trainer.save_steps=2", "cluster.call_timeout_s=120")
    _wait_for(lambda: checkpoint.latest(out) is not None and len(_rows(out)) >= 3, proc)
    _kill_actor("TrainerRank", proc.pid)
    killed = time.monotonic()
    rc = proc.wait(timeout=120)
    assert time.monotonic() - killed < 60
    text = log.read_text()
    assert rc == 2, text[-3000:]
    error = [x for x in text.splitlines() if x.startswith("tether: error:")]
    assert len(error) == 1 and "policy rank" in error[0] and "died" in error[0], error
    folder, state = checkpoint.latest(out)
    assert state["step"] >= 2 and checkpoint.problem(folder) is None


def test_non_finite_updates_are_skipped_then_the_run_stops(tmp_path):
    fn = tmp_path / "reward_fn.py"
    fn.write_text(
        "calls = 0\n"
        "def score(prompts, responses):\n"
        "    global calls\n"
        "    calls += 1\n"
        "    return [0.1 * len(r) if calls <= 2 else 3e38 for r in responses]\n")
    out = tmp_path / "run"
    proc, log = _start(out, f"reward.function={fn}:score", "algorithm.whiten_advantages=false",
                       "trainer.max_steps=10", "trainer.save_steps=1", "trainer.max_nonfinite_steps=3",
                       "rollout=hf")
    rc = proc.wait(timeout=400)
    text = log.read_text()
    assert rc == 2, text[-3000:]
    assert "consecutive steps" in [x for x in text.splitlines() if x.startswith("tether: error:")][0]
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["train/nonfinite_skips"] > 0 for r in rows] == [False, False, True, True, True]
    folder, state = checkpoint.latest(out)
    assert state["step"] == 4 and checkpoint.problem(folder) is None


def test_killed_feedback_actor_is_restarted_and_labels_the_pairs(tmp_path):
    """pipeline=cai: the feedback model's process is killed during the SFT steps; Ray restarts it
    and stage 2 still labels every pair."""
    out = tmp_path / "run"
    proc, log = _start(out, "pipeline=cai", "trainer.max_steps=60")
    _wait_for(lambda: len(_rows(out)) >= 3, proc)
    _kill_actor("FeedbackWorker", proc.pid)
    assert proc.wait(timeout=400) == 0, log.read_text()[-3000:]
    rows = _rows(out)
    assert [r["step"] for r in rows] == list(range(1, 61))
    assert json.loads((out / "cai" / "summary.json").read_text())["cai/pairs"] > 0
    assert (out / "cai" / "preferences.jsonl").exists()
