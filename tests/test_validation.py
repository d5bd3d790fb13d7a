"""Config ranges and per-pipeline rules (orchestrator/validation.py): each bad value fails with one
line naming the field and the allowed range, before anything starts."""

from __future__ import annotations

import pytest

from orchestrator.errors import ConfigError
from orchestrator.validation import describe_range, in_range, validate
from tests.conftest import compose_config

RANGE_CASES = [  # issue 13's list: each was accepted (or crashed later) before
    ("algorithm.clip_eps=-1", "algorithm.clip_eps=-1.0 is out of range: it must be > 0"),
    ("algorithm.gamma=5", "algorithm.gamma=5.0 is out of range: it must be in [0, 1]"),
    ("algorithm.lam=-3", "algorithm.lam=-3.0 is out of range: it must be in [0, 1]"),
    ("trainer.lr=0", "trainer.lr=0.0 is out of range: it must be > 0"),
    ("trainer.lr=-1", "trainer.lr=-1.0 is out of range: it must be > 0"),
    ("trainer.save_steps=-1", "trainer.save_steps=-1 is out of range: it must be >= 0"),
    ("rollout.top_p=5", "rollout.top_p=5.0 is out of range: it must be in (0, 1]"),
    ("cluster.call_timeout_s=0", "cluster.call_timeout_s=0.0 is out of range: it must be > 0"),
    ("trainer.keep_checkpoints=0", "trainer.keep_checkpoints=0 is out of range: it must be >= 1"),
    ("data.max_prompt_tokens=0", "data.max_prompt_tokens=0 is out of range: it must be >= 1"),
    ("data.max_prompt_tokens=-5", "data.max_prompt_tokens=-5 is out of range: it must be >= 1"),
    ("algorithm.kl_coef=-1", "algorithm.kl_coef=-1.0 is out of range: it must be >= 0"),
    ("rollout.temperature=1e-8", "rollout.temperature=1e-08 is out of range: it must be >= 0.01"),
    ("algorithm.kl_target=0", "algorithm.kl_target=0.0 is out of range: it must be > 0"),
    ("model.tiny.num_layers=0", "model.tiny.num_layers=0 is out of range: it must be >= 1"),
]


@pytest.mark.parametrize("override,message", RANGE_CASES, ids=[c[0] for c in RANGE_CASES])
def test_out_of_range_values_are_refused(override, message):
    with pytest.raises(ConfigError) as err:
        validate(compose_config(override))
    assert str(err.value) == message


def test_preference_ranges_and_pipeline_rules():
    with pytest.raises(ConfigError, match=r"algorithm.beta=0.0 is out of range: it must be > 0"):
        validate(compose_config("pipeline=dpo", "algorithm.beta=0"))
    with pytest.raises(ConfigError, match=r"label_smoothing=0.5 is out of range: it must be in \[0, 0.5\)"):
        validate(compose_config("pipeline=dpo", "algorithm.label_smoothing=0.5"))
    with pytest.raises(ConfigError, match="rollout.max_new_tokens = 628 must be <= rollout.max_model_len=512"):
        validate(compose_config("rollout.max_new_tokens=500"))
    with pytest.raises(ConfigError, match="rollout.asynchronous=true needs rollout.backend=vllm"):
        validate(compose_config("rollout=hf", "rollout.asynchronous=true"))


@pytest.mark.parametrize("pipeline,default", [("rlhf", "ppo"), ("dpo", "dpo"), ("rm", None), ("sft", None), ("cai", None)])
def test_each_pipeline_gets_its_algorithm_section(pipeline, default):
    """``pipeline=X`` picks conf/pipeline/X.yaml: its default algorithm preset (none for rm / sft / cai),
    and the algorithm fields of the other kind do not exist there."""
    cfg = compose_config(f"pipeline={pipeline}")
    validate(cfg)
    assert (cfg.algorithm.name if cfg.algorithm is not None else None) == default
    if pipeline == "rlhf":
        assert "beta" not in cfg.algorithm and cfg.algorithm.kl_estimator == "k1"
    if pipeline == "dpo":
        assert "kl_coef" not in cfg.algorithm and cfg.algorithm.preference_loss == "sigmoid"


def test_range_helpers():
    assert describe_range({"ge": 0, "lt": 0.5}) == "in [0, 0.5)" and describe_range({"gt": 0}) == "> 0"
    assert describe_range({"le": 1}) == "<= 1"
    assert in_range(None, {"gt": 0}) and in_range(0.5, {"gt": 0, "le": 1}) and not in_range(0, {"gt": 0})
