"""The output folder's contract, end to end (issue 13, data loss 1, 2, 15a): one writer per folder, and
no run's files deleted unless ``overwrite=true`` says so. Two real DPO runs (trainer.max_steps 2, then 1);
the refused runs stop before Ray starts. The rules' details are unit-tested in tests/test_checkpoint.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from orchestrator.outputs import LOCK_FILE
from tests.conftest import ROOT, error_line, run_cli

DPO = ["pipeline=dpo", "algorithm=dpo", "logger.progress_bar=false"]  # wandb offline (tests/conftest.py)


def _files(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


@pytest.mark.slow
def test_second_run_meets_the_lock_and_only_overwrite_deletes(tmp_path):
    out = tmp_path / "d"
    first = subprocess.Popen([sys.executable, "-m", "orchestrator", *DPO, "trainer.max_steps=2", f"output_dir={out}"],
                             cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not ((out / LOCK_FILE).is_file() and (out / LOCK_FILE).read_text()):
            assert first.poll() is None and time.time() < deadline, "the first run never took its lock"
            time.sleep(0.2)
        second = run_cli(*DPO, "trainer.max_steps=2", f"output_dir={out}", timeout=180)
        assert first.poll() is None, "the first run ended before the second met its lock"
    finally:
        stdout, stderr = first.communicate(timeout=600)
    assert second.returncode == 2
    line = error_line(second)
    assert f"output_dir='{out}' is in use by another run (pid {first.pid} on " in line, line
    assert first.returncode == 0, stderr[-3000:]
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and (out / "final" / "model.safetensors").is_file()
    before = _files(out)
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == first.pid

    # resume=auto on a run with no checkpoint (trainer.save_steps=0): refused, nothing touched
    proc = run_cli(*DPO, "resume=auto", "trainer.max_steps=1", f"output_dir={out}", timeout=180)
    assert proc.returncode == 2
    line = error_line(proc)
    assert "no checkpoint" in line and "overwrite=true" in line and "nothing was changed" in line, line
    # no resume: the error suggests only what works (no checkpoint: not resume=auto)
    proc = run_cli(*DPO, "trainer.max_steps=1", f"output_dir={out}", timeout=180)
    line = error_line(proc)
    assert proc.returncode == 2 and "already holds a run" in line and "overwrite=true" in line
    assert "resume=auto" not in line, line
    assert _files(out) == before

    # overwrite=true: the old run's files go (metrics, config, final/, tracker folders); a fresh run
    (out / "redteam").mkdir()  # an earlier red-team pass's outputs go too; collected labels never do
    (out / "redteam" / "summary.json").write_text("{}")
    (out / "collect").mkdir()
    (out / "collect" / "labels.db").write_text("labels")
    proc = run_cli(*DPO, "overwrite=true", "trainer.max_steps=1", f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / "redteam").exists() and (out / "collect" / "labels.db").read_text() == "labels"
    assert "overwrite=true: removed the previous run's metrics.jsonl, config.yaml, final" in proc.stdout + proc.stderr
    assert [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1
    assert len(list((out / "tensorboard").rglob("events.out.tfevents.*"))) == 1
    assert (out / "final" / "model.safetensors").is_file()

    # an output_dir that is a file: one line, before Ray starts
    proc = run_cli(*DPO, f"output_dir={out / 'metrics.jsonl'}", timeout=180)
    assert proc.returncode == 2 and "is a file, not a folder" in error_line(proc)
