"""Checkpoint + resume=auto: a run stopped after step k and resumed matches an uninterrupted run
(same data order, same rewards and losses), across an epoch boundary, with no duplicate rows."""

from __future__ import annotations

import json

import pytest

from orchestrator import checkpoint
from tests.conftest import RunsCode, error_line, run_cli

COMMON = ["logger.wandb=false", "logger.progress_bar=false", "trainer.keep_checkpoints=1"]
KEYS = ["reward/mean", "kl", "loss/policy", "loss/value", "entropy", "epoch"]


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(tmp_path):
    # 64 prompts / 16 per step = 4 steps per epoch: steps 5-6 are in epoch 1
    full, parted = tmp_path / "full", tmp_path / "parted"
    proc = run_cli("trainer.max_steps=6", f"output_dir={full}", *COMMON)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli("trainer.max_steps=3", "trainer.save_steps=3", f"output_dir={parted}", *COMMON)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (parted / "checkpoints" / "step_000003" / "COMPLETE").is_file()
    # a row past the checkpoint (as if the run died after logging step 4) must not survive
    with open(parted / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 4, "reward/mean": -1.0}) + "\n")
    proc = run_cli("trainer.max_steps=6", "resume=auto", f"output_dir={parted}", *COMMON)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a, b = _rows(full), _rows(parted)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in b] == [0, 0, 0, 0, 1, 1]
    for ra, rb in zip(a, b):
        for key in KEYS:
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (ra["step"], key)


@pytest.mark.slow
def test_dpo_resume_matches_uninterrupted_run(tmp_path):
    """The offline loop (shared by dpo, rm and sft): same pairs in the same order and the same losses
    after a resume, across the epoch boundary (64 pairs / 16 per step); the wandb run is continued."""
    keys = ["loss", "rewards/margins", "logps/chosen", "logps/rejected", "epoch"]
    full, parted = tmp_path / "full", tmp_path / "parted"
    dpo = ["pipeline=dpo", "algorithm=dpo", *COMMON]
    assert run_cli(*dpo, "trainer.max_steps=6", f"output_dir={full}").returncode == 0
    with_wandb = [x for x in dpo if x != "logger.wandb=false"]  # offline (tests/conftest.py)
    proc = run_cli(*with_wandb, "trainer.max_steps=3", "trainer.save_steps=3", f"output_dir={parted}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli(*with_wandb, "trainer.max_steps=6", "resume=auto", f"output_dir={parted}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the resumed part continues the same wandb run
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
    assert proc.returncode == 2 and "resume=auto" in proc.stderr


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


@pytest.mark.slow
def test_checkpoint_file_that_would_run_code_is_refused(tmp_path):
    """A checkpoint whose DeepSpeed file was replaced by a pickle that runs code (its manifest rewritten
    to match, so the hash check passes): resume=DIR stops with one line naming the file, resume=auto
    skips it for the previous checkpoint; the code never runs."""
    import torch

    out, marker = tmp_path / "run", tmp_path / "code-ran"
    sft = ["pipeline=sft", "trainer.save_steps=1", *COMMON[:2]]
    assert run_cli(*sft, "trainer.max_steps=2", "trainer.keep_checkpoints=2", f"output_dir={out}").returncode == 0
    bad = checkpoint.root(out) / "step_000002"
    target = bad / "policy" / "ds" / "mp_rank_00_model_states.pt"
    state = torch.load(target, weights_only=False)
    torch.save({**state, "client_state": RunsCode(marker)}, target)
    (bad / "COMPLETE").write_text(json.dumps({"groups": ["policy"], "files": checkpoint._manifest(bad)}))
    assert checkpoint.problem(bad) is None

    proc = run_cli(*sft, "trainer.max_steps=3", f"resume={bad}", f"output_dir={tmp_path / 'branch'}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = error_line(proc)
    assert str(target) in line and "posix.system" in line and "weights_only=True" in line, line
    proc = run_cli(*sft, "trainer.max_steps=3", "resume=auto", f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "skipping checkpoint" in log and "posix.system" in log and "step_000001 (step 1)" in log
    assert [r["step"] for r in _rows(out)] == [1, 2, 3]
    assert not marker.exists()
