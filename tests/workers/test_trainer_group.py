"""A 2-rank trainer group trains under ZeRO-2 and ZeRO-3 inside Ray actors (gloo on CPU):
the loss goes down, both ranks hold the same weights, and a checkpoint restores weights and optimizer."""

from __future__ import annotations

import pytest
import torch

from orchestrator.batching import pack_samples, with_fields
from orchestrator.placement import Placement, RoleSpec
from orchestrator.roles import TrainerGroup
from tests.conftest import compose_config

pytestmark = pytest.mark.slow


def _batch(n: int = 8):
    g = torch.Generator().manual_seed(0)
    samples = [{"prompt_ids": torch.randint(5, 400, (3 + i % 3,), generator=g).tolist(),
                "response_ids": torch.randint(5, 400, (6 + i % 4,), generator=g).tolist()} for i in range(n)]
    batch = pack_samples(samples, 0)
    returns = torch.linspace(-1, 1, n)[:, None] * batch["response_mask"]
    return with_fields(batch, returns=returns, old_values=torch.zeros_like(returns))


@pytest.mark.parametrize("stage", [2, 3])
def test_two_rank_critic_regression(ray_local, tiny_model_path, stage, tmp_path):
    cfg = compose_config("trainer.num_ranks=2", f"trainer.zero_stage={stage}", "trainer.critic_lr=1e-3",
                         "trainer.mini_batch_size=8", "trainer.micro_batch_size=2", "algorithm.value_clip_eps=100")
    placement = Placement([RoleSpec("critic", 2, 0.5, 0)], "PACK", 60)
    critic = TrainerGroup("critic", tiny_model_path, cfg, placement, 600, "value")
    batch = _batch()
    losses = [critic.train(batch, epochs=1, seed=i)["loss"] for i in range(10)]
    assert max(losses[-2:]) < 0.5 * losses[0], losses
    sums = ray_local.get([r.weights_checksum.remote() for r in critic.ranks])
    assert sums[0] == pytest.approx(sums[1], rel=1e-6)
    # auto threads: the two ranks on this 2-CPU node split it (orchestrator/threads.py)
    assert ray_local.get([r.use_threads.remote(None) for r in critic.ranks]) == [1, 1]
    values = critic.values(batch)
    assert values.shape == batch["response_mask"].shape
    # full weights come out of the group (gathered under ZeRO-3) and as an HF folder
    from transformers import AutoModelForTokenClassification

    synced = dict(ray_local.get(critic.state_dict_ref()))
    critic.save_pretrained(str(tmp_path / "saved"), tiny_model_path)
    saved = AutoModelForTokenClassification.from_pretrained(tmp_path / "saved").state_dict()
    assert set(synced) == set(saved)
    for name, tensor in saved.items():
        assert torch.equal(synced[name], tensor), name
    # checkpoint round trip (ZeRO partitions + optimizer moments, read back with weights_only=True):
    # the update after a restore equals the update right after the save
    checksums = lambda: ray_local.get([r.weights_checksum.remote() for r in critic.ranks])  # noqa: E731
    critic.save_checkpoint(str(tmp_path / "ckpt"))
    critic.train(batch, epochs=1, seed=99)
    after_save = checksums()
    critic.train(batch, epochs=1, seed=100)
    critic.load_checkpoint(str(tmp_path / "ckpt"))
    assert checksums() == pytest.approx(sums, rel=1e-12)
    critic.train(batch, epochs=1, seed=99)
    assert checksums() == pytest.approx(after_save, rel=1e-12)
    placement.remove()


def test_lr_warmup_starts_learning_at_step_one(ray_local, tiny_model_path, tmp_path):
    """trainer.lr_warmup_steps=3: optimizer steps 1..5 use lr x [1/3, 2/3, 1, 1, 1] (step 1 already
    learns), each reported as ``lr``; the schedule's position is part of a checkpoint."""
    cfg = compose_config("trainer.lr_warmup_steps=3", "trainer.critic_lr=0.003", "trainer.mini_batch_size=8",
                         "trainer.micro_batch_size=8")
    placement = Placement([RoleSpec("critic", 1, 0.5, 0)], "PACK", 60)
    critic = TrainerGroup("critic", tiny_model_path, cfg, placement, 600, "value")
    batch = _batch()
    lrs = []
    for i in range(5):
        lrs.append(critic.train(batch, epochs=1, seed=i)["lr"])
        if i == 1:
            critic.save_checkpoint(str(tmp_path / "ckpt"))
    assert lrs == pytest.approx([0.001, 0.002, 0.003, 0.003, 0.003], rel=1e-6)
    critic.load_checkpoint(str(tmp_path / "ckpt"))
    assert critic.train(batch, epochs=1, seed=9)["lr"] == pytest.approx(0.003, rel=1e-6)
    placement.remove()
