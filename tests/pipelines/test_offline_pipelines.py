"""DPO, reward-model and SFT runs through the real CLI (Ray, DeepSpeed, wandb offline) on the tiny model."""

from __future__ import annotations

import json
import math
import random

import pytest
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.slow

QUIET = ["logger.wandb=false", "logger.progress_bar=false"]
TRL_KEYS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
            "logps/chosen", "logps/rejected"]
WITH_E = ["eerie", "eel", "green", "tree", "sleepy", "bee", "deer", "sheep", "free", "cheese", "keen", "seen"]
WITHOUT_E = ["a", "dull", "cat", "sat", "on", "mat", "big", "dog", "ran", "far", "old", "car", "hot", "sun"]


def build_pairs(path, prompt_file: str, seed: int) -> None:
    """A preference set built here: chosen responses use words with an 'e', rejected ones none."""
    rng = random.Random(seed)
    prompts = [json.loads(line)["prompt"] for line in (ROOT / prompt_file).read_text().splitlines() if line.strip()]
    with open(path, "w") as f:
        for prompt in prompts:
            n = rng.randint(3, 8)
            f.write(json.dumps({"prompt": prompt, "chosen": " ".join(rng.choices(WITH_E, k=n)),
                                "rejected": " ".join(rng.choices(WITHOUT_E, k=n))}) + "\n")


def rows_of(out) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    return rows


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs")
    build_pairs(d / "train.jsonl", "orchestrator/assets/prompts/tiny.jsonl", 1)
    build_pairs(d / "eval.jsonl", "orchestrator/assets/prompts/tiny_eval.jsonl", 2)
    return d / "train.jsonl", d / "eval.jsonl"


def test_dpo_raises_held_out_accuracy(tmp_path, pairs):
    """DPO starts at loss log 2 (policy = reference) and ends well above chance on held-out pairs."""
    out = tmp_path / "dpo"
    proc = run_cli("pipeline=dpo", "algorithm=dpo", f"data.path={pairs[0]}", f"data.eval_path={pairs[1]}",
                   "trainer.max_steps=10", "trainer.eval_every=5", f"output_dir={out}", *QUIET)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = rows_of(out)
    assert len(rows) == 10 and all(k in r for r in rows for k in TRL_KEYS + ["time/reference", "time/train"])
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    assert [r["step"] for r in rows if "eval/rewards/accuracies" in r] == [5, 10]
    assert rows[-1]["eval/rewards/accuracies"] >= 0.9 and rows[-1]["eval/rewards/margins"] > 0
    assert rows[-1]["loss"] < 0.5 * math.log(2)
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    AutoTokenizer.from_pretrained(out / "final")
    assert model.num_parameters() > 0 and not list((out / "final").glob("*.bin"))


@pytest.mark.parametrize("variant", [
    ["algorithm=ipo", "trainer.num_ranks=2", "trainer.zero_stage=3", "algorithm.reference_mode=precompute",
     "data.max_length=64", "data.max_prompt_tokens=32", "data.overlong=drop"],
    ["algorithm=simpo", "trainer.zero_stage=1"],
], ids=["ipo-zero3-2ranks-precompute-drop", "simpo-zero1-no-reference"])
def test_dpo_variants_on_ranks_and_stages(tmp_path, variant):
    """Other losses, 2 ranks under ZeRO-3 with precomputed reference log-probs, reference-free SimPO;
    over-long pairs dropped and counted. The shipped pair set (e-rich chosen) is used."""
    out = tmp_path / "run"
    proc = run_cli("pipeline=dpo", *variant, "trainer.max_steps=6", "trainer.eval_every=6", f"output_dir={out}",
                   *QUIET)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = rows_of(out)
    assert rows[-1]["eval/rewards/accuracies"] > 0.6
    assert rows[-1]["loss"] < rows[0]["loss"]
    if "data.overlong=drop" in variant:
        assert "dropped (data.overlong=drop)" in proc.stdout + proc.stderr
        assert "time/reference" not in rows[1]  # precomputed before the first step
    if "algorithm=simpo" in variant:
        assert "reference" not in proc.stdout.split("final model")[0]  # no reference actor, no reference phase


def test_reward_model_then_rlhf_with_it(tmp_path, pairs):
    """pipeline=rm (2 ranks, ZeRO-2) learns the pairs; its final/ folder is the reward model of an RLHF run."""
    rm = tmp_path / "rm"
    proc = run_cli("pipeline=rm", f"data.path={pairs[0]}", f"data.eval_path={pairs[1]}", "trainer.max_steps=8",
                   "trainer.num_ranks=2", "trainer.zero_stage=2", f"output_dir={rm}", *QUIET)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = rows_of(rm)
    assert rows[-1]["eval/accuracy"] >= 0.9 and rows[-1]["loss"] < rows[0]["loss"]
    model = AutoModelForSequenceClassification.from_pretrained(rm / "final")
    assert model.config.num_labels == 1

    out = tmp_path / "rlhf"
    proc = run_cli("reward.function=null", f"reward.model_path={rm / 'final'}", "rollout=hf", "algorithm=grpo",
                   "trainer.max_steps=2", f"output_dir={out}", *QUIET)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rlhf_rows = rows_of(out)
    assert len(rlhf_rows) == 2 and all("reward/model/mean" in r for r in rlhf_rows)
    assert all(r["reward/mean"] == pytest.approx(r["reward/model/mean"], rel=1e-5) for r in rlhf_rows)


def test_sft_lowers_held_out_loss(tmp_path):
    """SFT on the shipped rows (prompt/response and chat messages), 2 ranks under ZeRO-3."""
    out = tmp_path / "sft"
    proc = run_cli("pipeline=sft", "trainer.max_steps=8", "trainer.eval_every=4", "trainer.num_ranks=2",
                   "trainer.zero_stage=3", f"output_dir={out}", *QUIET)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = rows_of(out)
    evals = [r["eval/loss"] for r in rows if "eval/loss" in r]
    assert len(evals) == 2 and evals[1] < evals[0]
    assert rows[-1]["loss"] < 0.85 * rows[0]["loss"] and rows[-1]["ppl"] == pytest.approx(math.exp(rows[-1]["loss"]), rel=1e-4)
    assert (out / "final" / "model.safetensors").is_file()


def test_dpo_reference_overlap_is_a_pure_speed_up(tmp_path):
    """algorithm.reference_mode=overlap (the next batch's reference pass runs while this one trains)
    trains on the same batches with the same reference log-probs as online: the same curve."""
    rows = {}
    for mode in ("online", "overlap"):
        out = tmp_path / mode
        proc = run_cli("pipeline=dpo", f"algorithm.reference_mode={mode}", "trainer.max_steps=5", "trainer.eval_every=5",
                       f"output_dir={out}", *QUIET)
        assert proc.returncode == 0, proc.stderr[-4000:]
        rows[mode] = rows_of(out)
    for key in ("loss", "rewards/margins", "logps/chosen", "epoch"):
        got, want = [r[key] for r in rows["overlap"]], [r[key] for r in rows["online"]]
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), key
    assert rows["overlap"][-1]["eval/loss"] == pytest.approx(rows["online"][-1]["eval/loss"], rel=1e-5)
    assert all("time/reference" in r for r in rows["overlap"])
