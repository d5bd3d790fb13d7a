"""Each worker role gets a typed spec built from the config in one place (orchestrator/specs.py)."""

from __future__ import annotations

import pickle

from orchestrator.specs import ForwardSpec, ProcessSpec, RewardSpec, RolloutSpec, TrainerSpec
from tests.conftest import compose_config


def test_specs_carry_the_config_fields_under_their_names():
    cfg = compose_config("seed=7", "model.dtype=bfloat16", "cluster.torch_threads=2", "trainer.lr=0.01",
                         "trainer.critic_lr=0.02", "rollout.top_p=0.9", "reward.batch_size=5", "reference.batch_size=3",
                         "cai.feedback.batch_size=4", "data.max_length=300", "rollout.max_model_len=256")
    process = ProcessSpec.of(cfg)
    assert (process.seed, process.dtype, process.torch_threads) == (7, "bfloat16", 2)
    policy, critic = TrainerSpec.of(cfg, "ppo"), TrainerSpec.of(cfg, "value")
    assert (policy.lr, critic.lr) == (0.01, 0.02)
    assert policy.algorithm["estimator"] == "gae" and policy.process == process
    assert RolloutSpec.of(cfg).top_p == 0.9
    reward = RewardSpec.of(cfg)
    assert (reward.batch_size, reward.max_length) == (5, 256)  # texts cut to the engine's context
    assert ForwardSpec.reference(cfg).batch_size == 3
    assert (ForwardSpec.feedback(cfg).batch_size, ForwardSpec.feedback(cfg).max_length) == (4, 300)
    assert TrainerSpec.of(compose_config("pipeline=sft"), "sft").algorithm == {}
    assert pickle.loads(pickle.dumps(policy)) == policy  # plain data for Ray
