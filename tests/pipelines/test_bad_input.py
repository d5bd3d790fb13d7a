"""Malformed input of every kind gets one clear error line (``tether: error: ...``), exit status 2,
and leaves no output folder behind. Config, data and file problems are caught before any actor
starts; reward-function results are caught on the first step."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import error_line, run_cli

CONFIG_CASES = [
    ("pipeline=rlhf algorithm=dpo", ["pipeline=rlhf takes algorithm=ppo|grpo|rloo|reinforce_pp", "got algorithm=dpo"]),
    ("pipeline=dpo algorithm=grpo", ["pipeline=dpo takes algorithm=dpo|ipo|cdpo|simpo|orpo", "got algorithm=grpo"]),
    ("pipeline=sft algorithm=dpo", ["pipeline=sft takes no algorithm", "got algorithm=dpo"]),
    ("algorithm.kl_mode=loss algorithm.kl_estimator=k1", ["kl_estimator=k1 anchors nothing", "k2", "k3"]),
    ("algorithm.clip_eps=-1", ["algorithm.clip_eps=-1.0", "must be > 0"]),
    ("rollout.backend=sglang", ["rollout.backend='sglang'", "vllm", "hf"]),
    ("algorithm.estimator=ppo2", ["algorithm.estimator='ppo2'", "gae", "grpo", "reinforce_pp", "rloo"]),
    ("algorithm.kl_estimator=k9", ["algorithm.kl_estimator='k9'", "k1", "k2", "k3"]),
    ("algorithm.kl_mode=both", ["algorithm.kl_mode='both'", "reward", "loss"]),
    ("trainer.zero_stage=4", ["trainer.zero_stage=4", "0, 1, 2, 3"]),
    ("model.dtype=float64", ["model.dtype='float64'", "bfloat16"]),
    ("device=tpu", ["device='tpu'", "cpu", "cuda"]),
    ("cluster.placement_strategy=RANDOM", ["cluster.placement_strategy='RANDOM'", "STRICT_SPREAD"]),
    ("trainer.max_steps=0", ["trainer.max_steps=0", ">= 1"]),
    ("trainer.mini_batch_size=48", ["trainer.mini_batch_size=48", "must divide"]),
    ("trainer.micro_batch_size=3", ["trainer.micro_batch_size=3", "per-rank mini-batch"]),
    ("algorithm=grpo algorithm.n_samples=1", ["algorithm.n_samples=1", ">= 2"]),
    ("cluster.colocate=[[policy,judge]]", ["cluster.colocate", "'judge'"]),
    ("reward.function=null", ["reward.function", "reward.model_path"]),
    ("reward.function=orchestrator/rewards/examples.py", ["reward.function", "file.py:function_name"]),
    ("reward.function=orchestrator/rewards/examples.py:missing", ["has no function named 'missing'"]),
    ("reward.function=/nonexistent/r.py:score", ["reward.function", "no such file"]),
    ("reward.model_path=/nonexistent/rm", ["reward.model_path", "config.json"]),
    ("model.path=/nonexistent/model", ["model.path", "config.json"]),
    ("data.path=/nonexistent/prompts.jsonl", ["no such file", "/nonexistent/prompts.jsonl"]),
    ("trainer.rollout_batch_size=128 trainer.mini_batch_size=128", ["batch size 128", "64 prompt rows"]),
    ("resume=/nonexistent/checkpoint", ["resume=", "not a usable checkpoint"]),
    ("reward.remote_url=http://127.0.0.1:9/score reward.remote_token_env=TETHER_NO_SUCH_TOKEN", ["remote_token_env", "requires a token"]),
    ("reward.remote_url=ftp://127.0.0.1/score", ["reward.remote_url", "http://"]),
]


@pytest.mark.parametrize("overrides,expected", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_errors_fail_before_any_actor(tmp_path, overrides, expected):
    out = tmp_path / "out"
    proc = run_cli(*overrides.split(), f"output_dir={out}", timeout=180)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = error_line(proc)
    for text in expected:
        assert text in line, line
    assert not out.exists()


def test_unknown_pipeline_lists_the_pipelines(tmp_path):
    """``pipeline`` is a config group: Hydra refuses an unknown one and lists the pipelines."""
    proc = run_cli("pipeline=nope", f"output_dir={tmp_path / 'out'}", timeout=180)
    assert proc.returncode != 0
    assert "pipeline/nope" in proc.stderr and all(name in proc.stderr for name in ("rlhf", "dpo", "rm", "sft", "cai"))
    assert not (tmp_path / "out").exists()


def _jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


DATA_CASES = [
    ("wrong type", ['{"prompt": "fine"}', '{"prompt": "also fine"}', '{"prompt": 3}'], 3, "prompt"),
    ("cut-off JSON", ['{"prompt": "fine"}', '{"prompt": "cut off'], 2, "JSON"),
    ("missing key", ['{"prompt": "fine"}', '{"question": "where?"}'], 2, "question"),
    ("empty prompt", ['{"prompt": ""}'], 1, "empty"),
    ("not an object", ['{"prompt": "fine"}', '["a", "list"]'], 2, "object"),
    ("bad chat message", ['{"prompt": [{"role": "user"}]}'], 1, "content"),
    ("over-long row", ['{"prompt": "fine"}', '{"prompt": "' + "x" * 2**21 + '"}'], 2, "data.max_row_bytes=1048576"),
]


@pytest.mark.parametrize("name,lines,line_no,word", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_malformed_row_names_file_and_line(tmp_path, name, lines, line_no, word):
    data = _jsonl(tmp_path / "prompts.jsonl", lines)
    proc = run_cli(f"data.path={data}", f"output_dir={tmp_path / 'out'}", timeout=180)
    assert proc.returncode == 2
    line = error_line(proc)
    assert f"{data}:{line_no}" in line and word in line, line
    assert not (tmp_path / "out").exists()


def test_parquet_without_prompt_column(tmp_path):
    data = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"text": ["a", "b"]}), data)
    proc = run_cli(f"data.path={data}", f"output_dir={tmp_path / 'out'}", timeout=180)
    assert proc.returncode == 2
    line = error_line(proc)
    assert str(data) in line and "text" in line


def test_checkpoint_folders(tmp_path):
    half = tmp_path / "half" / "step_000002"
    half.mkdir(parents=True)
    (half / "state.json").write_text(json.dumps({"step": 2}))
    proc = run_cli(f"resume={half}", f"output_dir={tmp_path / 'out'}", timeout=180)
    assert proc.returncode == 2 and "half-written" in error_line(proc)
    corrupt = tmp_path / "corrupt" / "step_000002"
    (corrupt / "policy").mkdir(parents=True)
    (corrupt / "state.json").write_text(json.dumps({"step": 2}))
    (corrupt / "policy" / "weights.bin").write_bytes(b"tampered")
    (corrupt / "COMPLETE").write_text(json.dumps({"groups": ["policy"], "files": {
        "state.json": [len(json.dumps({"step": 2})), "0" * 64], "policy/weights.bin": [8, "0" * 64]}}))
    proc = run_cli(f"resume={corrupt}", f"output_dir={tmp_path / 'out'}", timeout=180)
    assert proc.returncode == 2 and "corrupt" in error_line(proc)
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


REWARD_CASES = [
    ("def score(prompts, responses):\n    raise ValueError('boom')\n", "raised ValueError: boom"),
    ("def score(prompts, responses):\n    return [1.0]\n", "returned 1 scores for"),
    ("def score(prompts, responses):\n    return [float('nan')] * len(responses)\n", "non-finite"),
    ("def score(prompts, responses):\n    return ['high'] * len(responses)\n", "list of numbers"),
    ("def score(prompts, responses):\n    return 1.0\n", "list of numbers"),
]


@pytest.mark.parametrize("body,expected", REWARD_CASES, ids=[c[1] for c in REWARD_CASES])
def test_bad_reward_function_results_are_one_line_errors(tmp_path, body, expected):
    """Every kind of bad result, checked where the reward actor checks it."""
    from orchestrator.errors import RewardError
    from orchestrator.rewards.loader import call_reward_function, load_reward_function

    fn = tmp_path / "reward_fn.py"
    fn.write_text(body)
    spec = f"{fn}:score"
    with pytest.raises(RewardError) as info:
        call_reward_function(load_reward_function(spec), spec, ["p1", "p2"], ["r1", "r2"])
    assert expected in str(info.value) and spec in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("body,expected", REWARD_CASES[:2], ids=[c[1] for c in REWARD_CASES[:2]])
def test_bad_reward_function_results_end_the_run(tmp_path, body, expected):
    """Through the CLI (the same path serves every kind above): the reward actor's error ends the
    run on its first step with one line and exit status 2, leaving no output folder."""
    fn = tmp_path / "reward_fn.py"
    fn.write_text(body)
    out = tmp_path / "out"
    proc = run_cli(f"reward.function={fn}:score", "rollout=hf", "algorithm=grpo", "trainer.max_steps=2",
                   f"output_dir={out}", "logger.wandb=false", timeout=300)
    assert proc.returncode == 2
    line = error_line(proc)
    assert expected in line and "reward function" in line
    assert not out.exists()


def test_reward_file_that_does_not_import(tmp_path):
    fn = tmp_path / "broken.py"
    fn.write_text("def score(prompts, responses)\n    return []\n")
    proc = run_cli(f"reward.function={fn}:score", f"output_dir={tmp_path / 'out'}", timeout=180)
    assert proc.returncode == 2 and "SyntaxError" in error_line(proc)
