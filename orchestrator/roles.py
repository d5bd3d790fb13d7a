"""Create the actors of a run (one class per role) in their placement bundles.

``TrainerGroup`` is the driver's handle on the ranks of the policy or critic: it shards a batch
over the ranks, calls them together and gathers the results.
"""

from __future__ import annotations

import uuid

import ray
import torch
from omegaconf import OmegaConf

from orchestrator.batching import shard
from orchestrator.placement import Placement
from orchestrator.runtime import wait
from workers.reference import ReferenceWorker
from workers.reward import RewardWorker
from workers.rollout import RolloutWorker
from workers.trainer import TrainerRank


def _common(cfg) -> dict:
    return {"seed": cfg.seed, "device": cfg.device, "dtype": cfg.model.dtype,
            "trust_remote_code": cfg.model.trust_remote_code, "torch_threads": cfg.cluster.torch_threads}


class TrainerGroup:
    """``num_ranks`` TrainerRank actors forming one DeepSpeed world (policy or critic)."""

    def __init__(self, role: str, model_path: str, cfg, placement: Placement, timeout_s: float):
        self.role, self.timeout_s = role, timeout_s
        rank_cfg = {**_common(cfg), **OmegaConf.to_container(cfg.trainer),
                    "algorithm": OmegaConf.to_container(cfg.algorithm)}
        n = cfg.trainer.num_ranks
        tag = uuid.uuid4().hex[:6]
        self.ranks = [
            ray.remote(TrainerRank).options(name=f"{role}-rank{rank}-{tag}", **placement.options(role, rank))
            .remote(role, model_path, rank_cfg, rank, n)
            for rank in range(n)
        ]
        addr, port = wait(self.ranks[0].rendezvous_address.remote(), f"{role} rank 0 start-up", timeout_s)
        wait([r.setup.remote(addr, port) for r in self.ranks], f"{role} trainer set-up", timeout_s)

    def submit(self, method: str, batch: dict, **kwargs) -> list:
        """Start ``method`` on every rank with its shard of ``batch``; returns the refs in rank order."""
        return [getattr(r, method).remote(s, **kwargs) for r, s in zip(self.ranks, shard(batch, len(self.ranks)))]

    def _each(self, method: str, batch: dict, what: str, **kwargs) -> list:
        return wait(self.submit(method, batch, **kwargs), f"{self.role}.{what}", self.timeout_s)

    def logprobs(self, batch: dict) -> torch.Tensor:
        """Current-policy log-probs ``[B, T]``."""
        return torch.cat(self._each("logprobs", batch, "logprobs"))

    def values(self, batch: dict) -> torch.Tensor:
        """Critic values ``[B, T]``."""
        return torch.cat(self._each("values", batch, "values"))

    def train(self, batch: dict, epochs: int, seed: int) -> dict[str, float]:
        """One round of updates on every rank; metrics averaged over ranks."""
        results = self._each("train", batch, "train", epochs=epochs, seed=seed)
        return {k: sum(r[k] for r in results) / len(results) for k in results[0]}

    def state_dict_ref(self):
        """Object ref of rank 0's full weights (all ranks take part in the gather)."""
        refs = [r.state_dict_for_sync.remote() for r in self.ranks]
        wait(refs[1:], f"{self.role}.gather_weights", self.timeout_s)
        return refs[0]

    def save_pretrained(self, path: str, tokenizer_path: str) -> None:
        """Write HF-format weights (rank 0) plus the tokenizer."""
        wait([r.save_pretrained.remote(path, tokenizer_path) for r in self.ranks], f"{self.role}.save", self.timeout_s)


class RLHFRoles:
    """Every actor of an RLHF run."""

    def __init__(self, cfg, model_path: str, placement: Placement):
        t = cfg.cluster.call_timeout_s
        common = _common(cfg)
        tag = uuid.uuid4().hex[:6]
        rollout_cfg = {**common, **OmegaConf.to_container(cfg.rollout)}
        self.rollout = [
            ray.remote(RolloutWorker).options(name=f"rollout-{i}-{tag}", **placement.options("rollout", i))
            .remote(model_path, rollout_cfg)
            for i in range(cfg.rollout.num_workers)
        ]
        reward_cfg = {**common, **OmegaConf.to_container(cfg.reward), "max_length": cfg.rollout.max_model_len}
        self.reward = ray.remote(RewardWorker).options(name=f"reward-{tag}", **placement.options("reward")).remote(reward_cfg)
        ref_cfg = {**common, **OmegaConf.to_container(cfg.reference)}
        self.reference = (ray.remote(ReferenceWorker).options(name=f"reference-{tag}", **placement.options("reference"))
                          .remote(model_path, ref_cfg))
        self.policy = TrainerGroup("policy", model_path, cfg, placement, t)
        self.critic = TrainerGroup("critic", model_path, cfg, placement, t) if cfg.algorithm.estimator == "gae" else None
        self.timeout_s = t
        wait([w.ready.remote() for w in self.rollout], "rollout engine start-up", t)
        wait(self.reward.ready.remote(), "reward start-up", t)

    def generate(self, prompt_ids: list[list[int]], n: int, seed: int, greedy: bool = False) -> list[dict]:
        """Split the prompts between the rollout actors; samples come back in prompt order."""
        k = len(self.rollout)
        size = -(-len(prompt_ids) // k)
        parts = [(i, prompt_ids[i * size : (i + 1) * size]) for i in range(k)]
        refs = [w.generate.remote(p, n, seed + i * size, greedy) for w, (i, p) in zip(self.rollout, parts) if p]
        return [s for part in wait(refs, "rollout.generate", self.timeout_s) for s in part]

    def score(self, samples: list[dict], decode) -> dict[str, list[float]]:
        """Rewards (and their parts) of decoded samples."""
        prompts = [decode(s["prompt_ids"]) for s in samples]
        responses = [decode(s["response_ids"]) for s in samples]
        return wait(self.reward.score.remote(prompts, responses), "reward.score", self.timeout_s)
