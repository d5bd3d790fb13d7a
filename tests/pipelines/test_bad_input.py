"""Bad input gets one clear error line and a non-zero exit, and leaves no output folder behind."""

from __future__ import annotations

import pytest

from tests.conftest import error_line, run_cli


@pytest.mark.parametrize("override,expected", [
    ("pipeline=nope", ["pipeline='nope'", "rlhf"]),
    ("rollout.backend=sglang", ["rollout.backend='sglang'", "vllm", "hf"]),
    ("algorithm.estimator=ppo2", ["algorithm.estimator='ppo2'", "gae", "grpo", "reinforce_pp", "rloo"]),
    ("algorithm.kl_estimator=k9", ["algorithm.kl_estimator='k9'", "k1", "k2", "k3"]),
    ("trainer.zero_stage=4", ["trainer.zero_stage=4", "0, 1, 2, 3"]),
    ("data.path=/nonexistent/prompts.jsonl", ["no such file", "/nonexistent/prompts.jsonl"]),
    ("reward.function=/nonexistent/r.py:score", ["reward.function", "no such file"]),
    ("model.path=/nonexistent/model", ["model.path", "config.json"]),
])
def test_config_errors_fail_before_any_actor(tmp_path, override, expected):
    out = tmp_path / "out"
    proc = run_cli(override, f"output_dir={out}", timeout=120)
    assert proc.returncode == 2
    line = error_line(proc)
    for text in expected:
        assert text in line, line
    assert not out.exists()


def test_malformed_row_names_file_and_line(tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "fine"}\n{"prompt": "also fine"}\n{"prompt": 3}\n')
    proc = run_cli(f"data.path={data}", f"output_dir={tmp_path / 'out'}", timeout=120)
    assert proc.returncode == 2
    assert f"{data}:3" in error_line(proc)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "fine"}\n{"prompt": "cut off\n')
    proc = run_cli(f"data.path={broken}", f"output_dir={tmp_path / 'out'}", timeout=120)
    assert proc.returncode == 2
    assert f"{broken}:2" in error_line(proc)
    assert not (tmp_path / "out").exists()


def test_more_cpus_than_the_cluster_has_fails_fast(tmp_path):
    proc = run_cli("trainer.num_cpus=8", "cluster.num_cpus=2", f"output_dir={tmp_path / 'out'}", timeout=180)
    assert proc.returncode == 2
    line = error_line(proc)
    assert "CPU" in line and "policy" in line and "cluster has 2" in line
    assert not (tmp_path / "out").exists()


def test_more_gpus_than_the_cluster_has_fails_fast(tmp_path):
    proc = run_cli("rollout.num_gpus=1", f"output_dir={tmp_path / 'out'}", timeout=180)
    assert proc.returncode == 2
    line = error_line(proc)
    assert "GPU" in line and "rollout" in line


@pytest.mark.slow
@pytest.mark.parametrize("body,expected", [
    ("def score(prompts, responses):\n    raise ValueError('boom')\n", "raised ValueError: boom"),
    ("def score(prompts, responses):\n    return [1.0]\n", "returned 1 scores for"),
    ("def score(prompts, responses):\n    return [float('nan')] * len(responses)\n", "non-finite"),
])
def test_bad_reward_function(tmp_path, body, expected):
    fn = tmp_path / "reward_fn.py"
    fn.write_text(body)
    out = tmp_path / "out"
    proc = run_cli(f"reward.function={fn}:score", "rollout=hf", "algorithm=grpo", "trainer.max_steps=2",
                   f"output_dir={out}", "logger.wandb=false", timeout=300)
    assert proc.returncode == 2
    line = error_line(proc)
    assert expected in line and "reward function" in line
    assert not out.exists()
