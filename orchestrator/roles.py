"""Create the actors of a run (one class per role) in their placement bundles.

``TrainerGroup`` is the driver's handle on the ranks of the policy or critic: it shards a batch
over the ranks, calls them together and gathers the results.
"""

from __future__ import annotations

import importlib
import logging
import os
import uuid

import ray
import torch

from orchestrator.algorithms.passes import needs_old_logprobs, uses_reference
from orchestrator.batching import shard
from orchestrator.errors import WorkerError
from orchestrator.placement import Placement
from orchestrator.runtime import Secret, wait, wait_timed
from orchestrator.specs import ForwardSpec, RewardSpec, RolloutSpec, TrainerSpec
from orchestrator.threads import ThreadShares

log = logging.getLogger("tether")
WORKER_MODULES = {"TrainerRank": "workers.trainer", "RolloutWorker": "workers.rollout", "RewardWorker": "workers.reward",
                  "ReferenceWorker": "workers.reference", "FeedbackWorker": "workers.feedback"}


def remote_class(name: str):
    """``ray.remote`` of the worker class ``name``, imported when the first actor is created: the
    driver's input checks run before, without the workers' imports (transformers, vLLM, DeepSpeed)."""
    return ray.remote(getattr(importlib.import_module(WORKER_MODULES[name]), name))


def restarted_by_ray(cfg) -> dict:
    """Actor options of a stateless role: Ray restarts its process (up to ``cluster.max_restarts``)
    and retries the call that was in flight."""
    return {"max_restarts": cfg.cluster.max_restarts, "max_task_retries": cfg.cluster.max_restarts}


class TrainerGroup:
    """``num_ranks`` TrainerRank actors forming one DeepSpeed world, training ``role`` (the placement
    role: policy, critic, reward_model) with ``objective`` (see ``workers/objectives.py``).

    Creating the group does not wait: the ranks load their model and join the world while the
    driver starts the other roles. ``wait_ready`` (called by every method, once) waits for that.
    """

    def __init__(self, role: str, model_path: str, cfg, placement: Placement, timeout_s: float, objective: str):
        self.role, self.timeout_s = role, timeout_s
        spec = TrainerSpec.of(cfg, objective)
        n = cfg.trainer.num_ranks
        tag = uuid.uuid4().hex[:6]
        self.ranks = [
            remote_class("TrainerRank").options(name=f"{role}-rank{rank}-{tag}", **placement.options(role, rank))
            .remote(role, model_path, spec, rank, n)
            for rank in range(n)
        ]
        address = self.ranks[0].rendezvous_address.remote()  # rank 0's (ip, port), passed on unresolved
        self._setup = [r.setup.remote(address) for r in self.ranks]

    def wait_ready(self) -> None:
        """Wait until every rank has built its DeepSpeed engine (a no-op once it has)."""
        if self._setup:
            wait(self._setup, self.names("set-up"), self.timeout_s)
            self._setup = []

    def submit(self, method: str, batch: dict, **kwargs) -> list:
        """Start ``method`` on every rank with its shard of ``batch``; returns the refs in rank order."""
        self.wait_ready()
        return [getattr(r, method).remote(s, **kwargs) for r, s in zip(self.ranks, shard(batch, len(self.ranks)))]

    def _all(self, method: str, *args) -> list:
        """Start ``method(*args)`` on every rank; returns the refs in rank order."""
        self.wait_ready()
        return [getattr(r, method).remote(*args) for r in self.ranks]

    def names(self, what: str) -> list[str]:
        """One label per rank for errors, e.g. ``policy rank 1 (train)``."""
        return [f"{self.role} rank {i} ({what})" for i in range(len(self.ranks))]

    def _each(self, method: str, batch: dict, what: str, **kwargs) -> list:
        return wait(self.submit(method, batch, **kwargs), self.names(what), self.timeout_s)

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

    def evaluate(self, batch: dict) -> dict[str, float]:
        """The objective's metrics on ``batch`` without training, averaged over its rows (tokens for
        sft). Every rank gets an equal shard, so rows past a multiple of ``num_ranks`` are left out."""
        n = batch["input_ids"].shape[0] - batch["input_ids"].shape[0] % len(self.ranks)
        batch = {k: (v[:n] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        results = self._each("evaluate", batch, "evaluate")
        weight = sum(r["weight"] for r in results)
        return {k: sum(r["sums"][k] for r in results) / weight for k in results[0]["sums"]}

    def state_dict_ref(self):
        """Object ref of rank 0's full weights (all ranks take part in the gather)."""
        refs = self._all("state_dict_for_sync")
        wait(refs[1:], self.names("gather weights")[1:], self.timeout_s)
        return refs[0]

    def save_checkpoint(self, path: str) -> None:
        """DeepSpeed checkpoint of every rank under ``path``."""
        wait(self._all("save_checkpoint", path), self.names("save checkpoint"), self.timeout_s)

    def load_checkpoint(self, path: str) -> None:
        """Restore every rank from ``path``."""
        wait(self._all("load_checkpoint", path), self.names("load checkpoint"), self.timeout_s)

    def save_pretrained(self, path: str, tokenizer_path: str) -> None:
        """Write HF-format weights (rank 0) plus the tokenizer."""
        wait(self._all("save_pretrained", path, tokenizer_path), self.names("save"), self.timeout_s)


def reference_actor(cfg, model_path: str, placement: Placement):
    """The frozen reference model's actor (role ``reference``)."""
    return (remote_class("ReferenceWorker").options(name=f"reference-{uuid.uuid4().hex[:6]}", **placement.options("reference"))
            .remote(model_path, ForwardSpec.reference(cfg)))


class RolloutPool:
    """The rollout engines of a run (``rollout.num_workers`` actors).

    Engines are restarted by Ray when their process dies (up to ``cluster.max_restarts``; an
    in-flight call is retried on the new process). Each reply carries the process's incarnation id,
    so a restart is noticed: the restarted engine is given the current policy weights
    (``weights()``, an object ref; None while the engines still hold the initial weights) and the
    generation is done again.
    """

    def __init__(self, cfg, model_path: str, placement: Placement, tag: str):
        self.timeout_s, self.max_restarts = cfg.cluster.call_timeout_s, cfg.cluster.max_restarts
        restart = restarted_by_ray(cfg)
        self.actors = [
            remote_class("RolloutWorker").options(name=f"rollout-{i}-{tag}", **restart, **placement.options("rollout", i))
            .remote(model_path, RolloutSpec.of(cfg))
            for i in range(cfg.rollout.num_workers)
        ]
        self.weights = None
        self.restarts = 0  # restarts seen (WeightSync leaves NCCL after one)
        self.incarnations: list[str] = []

    def wait_ready(self) -> None:
        """Wait until every engine is built (actors start concurrently with the other roles)."""
        self.incarnations = wait([w.ready.remote() for w in self.actors], self._names("start-up"), self.timeout_s)

    def _names(self, what: str) -> list[str]:
        return [f"rollout-{i} ({what})" for i in range(len(self.actors))]

    def generate(self, prompt_ids: list[list[int]], n: int, seed: int, greedy: bool = False) -> list[dict]:
        """Split the prompts between the engines; samples come back in prompt order."""
        return self.collect(self.submit(prompt_ids, n, seed, greedy))

    def submit(self, prompt_ids: list[list[int]], n: int, seed: int, greedy: bool = False) -> dict:
        """Start a generation without waiting (the engines run it before any later call, e.g. a weight
        push); ``collect`` returns its samples."""
        size = -(-len(prompt_ids) // len(self.actors))
        parts = [(i, prompt_ids[i * size : (i + 1) * size]) for i in range(len(self.actors))]
        parts = [(i, p) for i, p in parts if p]
        # prompt j's samples use seeds seed + j*n .. seed + j*n + n-1, whichever engine serves it
        refs = [self.actors[i].generate_tagged.remote(p, n, seed + i * size * n, greedy) for i, p in parts]
        return {"parts": parts, "refs": refs, "args": (prompt_ids, n, seed, greedy)}

    def settle(self, generation: dict | None) -> None:
        """Wait (at most ``cluster.call_timeout_s``) until a ``submit``ted generation has finished, without
        fetching it (e.g. before a weight push, so that the push's time is its own); errors surface in
        ``collect``."""
        if generation is not None:
            ray.wait(generation["refs"], num_returns=len(generation["refs"]), timeout=self.timeout_s, fetch_local=False)

    def collect(self, generation: dict) -> list[dict]:
        """The samples of a ``submit``ted generation, in prompt order; an engine restarted by Ray is given
        the current weights and the generation is done again."""
        for _ in range(self.max_restarts + 1):
            parts = generation["parts"]
            replies = wait(generation["refs"], [self._names("generate")[i] for i, _ in parts], self.timeout_s)
            restarted = [i for (i, _), r in zip(parts, replies) if r["incarnation"] != self.incarnations[i]]
            if not restarted:
                return [s for r in replies for s in r["samples"]]
            log.warning("rollout-%s was restarted by Ray; re-sending the current weights and redoing the generation",
                        ",".join(map(str, restarted)))
            self.resend_weights(restarted)
            self.restarts += 1
            generation = self.submit(*generation["args"])
        raise WorkerError(f"rollout engines kept restarting ({self.max_restarts} times, cluster.max_restarts)")

    def resend_weights(self, indices: list[int]) -> None:
        """Give restarted engines the current policy weights (through the object store)."""
        if self.weights is not None:
            ref = self.weights()
            wait([self.actors[i].load_weights.remote(ref) for i in indices],
                 [self._names("reload weights")[i] for i in indices], self.timeout_s)
        for i in indices:
            self.incarnations[i] = wait(self.actors[i].ready.remote(), f"rollout-{i} (restart)", self.timeout_s)


def feedback_actor(cfg, model_path: str, placement: Placement):
    """The feedback model's actor (role ``feedback``, pipeline=cai). It holds no state, so like the
    reward actor it is restarted by Ray when its process dies and the call is retried."""
    return (remote_class("FeedbackWorker").options(name=f"feedback-{uuid.uuid4().hex[:6]}", **restarted_by_ray(cfg),
                                               **placement.options("feedback"))
            .remote(model_path, ForwardSpec.feedback(cfg)))


def reward_actor(cfg, placement: Placement, tag: str):
    """The reward actor (role ``reward``): restarted by Ray when its process dies, the call retried.
    The reward server's token is a constructor argument, never a runtime_env env var (Ray logs those)."""
    token = Secret(os.environ.get(cfg.reward.remote_token_env, "")) if cfg.reward.remote_url else None
    return (remote_class("RewardWorker").options(name=f"reward-{tag}", **restarted_by_ray(cfg), **placement.options("reward"))
            .remote(RewardSpec.of(cfg), token))


class RLHFRoles:
    """Every actor of an RLHF run.

    Rollout engines are a ``RolloutPool`` (restarted by Ray, then given the current weights; the
    generation is redone). The reward actor is restarted by Ray too (up to
    ``cluster.max_restarts``); its retried call is used as is (it holds no state). Trainer ranks
    are not restarted: a dead rank ends the run with an error naming it.
    """

    def __init__(self, cfg, model_path: str, placement: Placement):
        t = self.timeout_s = cfg.cluster.call_timeout_s
        tag = uuid.uuid4().hex[:6]
        self.rollouts = RolloutPool(cfg, model_path, placement, tag)
        self.reward = reward_actor(cfg, placement, tag)
        self.reward_model = cfg.reward.model_path is not None  # the reward actor runs a model (torch work)
        self.threads = ThreadShares(cfg)
        self.reference = reference_actor(cfg, model_path, placement) if uses_reference(cfg.algorithm) else None
        samples = cfg.trainer.rollout_batch_size * cfg.algorithm.n_samples
        self.old_logprobs_pass = (needs_old_logprobs(cfg.algorithm, samples, cfg.trainer.mini_batch_size)
                                  and not cfg.rollout.asynchronous)  # then the engines' own log-probs are the old ones
        self.policy = TrainerGroup("policy", model_path, cfg, placement, t, "ppo")
        self.critic = (TrainerGroup("critic", model_path, cfg, placement, t, "value")
                       if cfg.algorithm.estimator == "gae" else None)
        self.rollouts.weights = self.policy.state_dict_ref
        for group in self.trainer_groups().values():
            group.wait_ready()
        self.rollouts.wait_ready()
        self.reward_incarnation = wait(self.reward.ready.remote(), "reward (start-up)", t)

    def trainer_groups(self) -> dict:
        """The trainer groups by name (what a checkpoint holds)."""
        return {k: g for k, g in (("policy", self.policy), ("critic", self.critic)) if g is not None}

    def generate(self, prompt_ids: list[list[int]], n: int, seed: int, greedy: bool = False) -> list[dict]:
        """``n`` samples per prompt from the rollout engines (see ``RolloutPool.generate``)."""
        return self.rollouts.generate(prompt_ids, n, seed, greedy)

    def score_async(self, prompts: list[str], responses: list[str]):
        """Start scoring; pass the reply to ``scores``."""
        return self.reward.score_tagged.remote(prompts, responses)

    def scores(self, reply: dict) -> dict[str, list[float]]:
        """The rewards in a ``score_async`` reply (noting a restart of the reward actor)."""
        if reply["incarnation"] != self.reward_incarnation:
            log.warning("the reward actor was restarted by Ray; its call was retried on the new process")
            self.reward_incarnation = reply["incarnation"]
        return reply["scores"]

    def score_and_logprobs(self, batch: dict, prompts: list[str], responses: list[str]):
        """Rewards, and the reference log-probs, old-policy log-probs and (PPO) values of a batch that
        the algorithm reads (None for a pass it does not need: ``orchestrator/algorithms/passes.py``),
        computed concurrently; returns them with each call's seconds from launch to completion."""
        computing = (([self.reference] if self.reference is not None else [])  # actors doing torch work now
                     + (self.policy.ranks if self.old_logprobs_pass else [])
                     + (self.critic.ranks if self.critic is not None else []) + ([self.reward] if self.reward_model else []))
        with self.threads.together(computing):
            calls = {"reward": [self.score_async(prompts, responses)]}
            labels = {"reward": ["reward (score)"]}
            if self.reference is not None:
                calls["reference"], labels["reference"] = [self.reference.logprobs.remote(batch)], ["reference (logprobs)"]
            if self.old_logprobs_pass:
                calls["old_logprobs"], labels["old_logprobs"] = self.policy.submit("logprobs", batch), self.policy.names("old logprobs")
            if self.critic is not None:
                calls["values"], labels["values"] = self.critic.submit("values", batch), self.critic.names("values")
            results, seconds = wait_timed(calls, self.timeout_s, labels)
        joined = {k: torch.cat(v) if k != "reward" else None for k, v in results.items()}
        return (self.scores(results["reward"][0]), joined.get("reference"), joined.get("old_logprobs"),
                joined.get("values"), seconds)

    def score(self, prompts: list[str], responses: list[str]) -> dict[str, list[float]]:
        """Rewards (and their parts) of responses to prompts."""
        return self.scores(wait(self.score_async(prompts, responses), "reward (score)", self.timeout_s))
