"""Checkpoint + resume=auto: a run killed after step k and resumed matches an uninterrupted run
(same data order, same rewards and losses), across an epoch boundary, with no duplicate rows.

The killed run's folder is made from the uninterrupted run (``interrupted_copy``): its checkpoints up
to step k-1 and its metrics rows up to step k, without ``final/``. That is what a run killed after
logging step k leaves, and it spares a third run."""

from __future__ import annotations

import json

import pytest

from orchestrator import checkpoint
from tests.conftest import RunsCode, error_line, interrupted_copy, run_cli

COMMON = ["logger.wandb=false", "logger.progress_bar=false", "trainer.keep_checkpoints=1"]
SAVE_TWO = [*COMMON[:2], "trainer.keep_checkpoints=2"]
KEYS = ["reward/mean", "kl", "loss/policy", "loss/value", "entropy", "epoch"]


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(tmp_path):
    """A run killed after logging step 4 (its newest checkpoint: step 3) and resumed with resume=auto
    logs steps 4-6 again, once each, with the rewards and losses of the uninterrupted run; steps 5-6
    are in epoch 1 (64 prompts / 16 per step = 4 steps per epoch)."""
    full, parted = tmp_path / "full", tmp_path / "parted"
    proc = run_cli("trainer.max_steps=6", "trainer.save_steps=3", f"output_dir={full}", *SAVE_TWO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    interrupted_copy(full, parted, checkpoint_step=3, logged_steps=4)
    proc = run_cli("trainer.max_steps=6", "resume=auto", f"output_dir={parted}", *COMMON)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step_000003 (step 3)" in proc.stdout + proc.stderr and (parted / "final" / "model.safetensors").is_file()

    a, b = _rows(full), _rows(parted)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in b] == [0, 0, 0, 0, 1, 1]
    for ra, rb in zip(a, b):
        for key in KEYS:
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (ra["step"], key)


@pytest.mark.slow
def test_dpo_resume_skips_a_rigged_checkpoint_and_matches_uninterrupted_run(tmp_path):
    """The offline loop (shared by dpo, rm and sft). The newest checkpoint (step 6) of a finished run
    has its DeepSpeed file replaced by a pickle that runs code, its manifest rewritten so the hash
    check passes. resume=DIR on it stops with one line naming the file; resume=auto skips it for
    step 3 and steps 4-6 then see the same pairs in the same order with the same losses, across the
    epoch boundary (64 pairs / 16 per step); the resumed part continues the run's wandb run; the code
    never runs."""
    import torch

    keys = ["loss", "rewards/margins", "logps/chosen", "logps/rejected", "epoch"]
    full, parted, marker = tmp_path / "full", tmp_path / "parted", tmp_path / "code-ran"
    dpo = ["pipeline=dpo", "algorithm=dpo", "logger.progress_bar=false", "trainer.max_steps=6",
           "trainer.save_steps=3", "trainer.keep_checkpoints=2"]  # wandb offline (tests/conftest.py)
    proc = run_cli(*dpo, f"output_dir={full}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    interrupted_copy(full, parted, checkpoint_step=6, logged_steps=6)
    rigged = checkpoint.root(parted) / "step_000006"
    [target] = rigged.glob("*/ds/mp_rank_00_model_states.pt")
    state = torch.load(target, weights_only=False)
    torch.save({**state, "client_state": RunsCode(marker)}, target)
    (rigged / "COMPLETE").write_text(json.dumps({"groups": ["policy"], "files": checkpoint._manifest(rigged)}))
    assert checkpoint.problem(rigged) is None

    proc = run_cli(*dpo, f"resume={rigged}", f"output_dir={tmp_path / 'branch'}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = error_line(proc)
    assert str(target) in line and "posix.system" in line and "weights_only=True" in line, line
    proc = run_cli(*dpo, "resume=auto", f"output_dir={parted}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "skipping checkpoint" in log and "posix.system" in log and "step_000003 (step 3)" in log
    assert not marker.exists()

    # the resumed part continues the run's wandb run: a second offline folder with the same id
    wandb_id = checkpoint.latest(parted)[1]["wandb_id"]
    runs = list((parted / "wandb").glob("offline-run-*"))
    assert wandb_id and len(runs) == 2 and all(f"-{wandb_id}" in r.name for r in runs), runs
    a, b = _rows(full), _rows(parted)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6] and [r["epoch"] for r in b] == [0, 0, 0, 0, 1, 1]
    for ra, rb in zip(a, b):
        for key in keys:
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (ra["step"], key)


def test_output_dir_with_a_run_needs_resume(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    proc = run_cli(f"output_dir={out}", timeout=120)
    assert proc.returncode == 2 and "overwrite=true" in proc.stderr and "resume=auto" not in proc.stderr  # no checkpoint


def test_latest_skips_broken_checkpoints(tmp_path, caplog):
    def make(step, complete=True, state=True, group=True):
        d = checkpoint.root(tmp_path) / f"step_{step:06d}"
        d.mkdir(parents=True)
        if group:
            (d / "policy").mkdir()
            (d / "policy" / "latest").write_text("ds")
        if state:
            (d / "state.json").write_text(json.dumps({"step": step}))
        if complete:
            (d / "COMPLETE").write_text(json.dumps({"groups": ["policy"], "files": {}}))

    make(2)
    make(4, group=False)
    make(6, complete=False)
    make(8, state=False)
    (checkpoint.root(tmp_path) / "step_000010").mkdir()
    (checkpoint.root(tmp_path) / "step_000010" / "COMPLETE").write_text('["policy"]')
    folder, state = checkpoint.latest(tmp_path)
    assert folder.name == "step_000002" and state["step"] == 2
    warnings = [r.getMessage() for r in caplog.records]
    assert any("step_000006" in w and "half-written" in w for w in warnings)
    assert any("step_000004" in w and "missing trainer state" in w for w in warnings)
    assert checkpoint.latest(tmp_path / "nothing") is None


def test_checkpoint_with_an_altered_file_is_skipped(tmp_path):
    good = checkpoint.root(tmp_path) / "step_000001"
    bad = checkpoint.root(tmp_path) / "step_000002"
    for d, step in ((good, 1), (bad, 2)):
        (d / "policy").mkdir(parents=True)
        (d / "policy" / "model.pt").write_bytes(b"weights")
        (d / "state.json").write_text(json.dumps({"step": step}))
        (d / "COMPLETE").write_text(json.dumps({"groups": ["policy"], "files": checkpoint._manifest(d)}))
    (bad / "policy" / "model.pt").write_bytes(b"weightz")  # same size, other bytes
    assert "corrupt" in checkpoint.problem(bad)
    assert checkpoint.latest(tmp_path)[0] == good


def test_truncate_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in [1, 2, 3, 4]))
    checkpoint.truncate_metrics(path, 2)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]
