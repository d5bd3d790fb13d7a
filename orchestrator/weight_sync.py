"""Weight sync: policy trainer rank 0 -> every rollout engine, after each policy update.

``WeightSync.push()`` is the one call a pipeline makes; it picks the transport:

- ``ObjectStoreSync`` (CPU, and the ``hf`` backend anywhere): rank 0 gathers the full weights
  (ZeRO-3 included), puts them in the Ray object store once, and every engine loads them
  (vLLM: the worker's ``reload_weights`` then a prefix-cache reset).
- ``NcclSync`` (GPU with vLLM): one NCCL group made of trainer rank 0 and every engine's
  workers; rank 0 broadcasts each tensor and the engines load them as they arrive
  (``workers.vllm_weight_ext``). A restarted engine is not in that group: after Ray restarts a
  rollout engine the sync falls back to the object store by itself.
"""

from __future__ import annotations

import logging

from orchestrator.roles import TrainerGroup
from orchestrator.runtime import wait

log = logging.getLogger("tether")


class ObjectStoreSync:
    """Weights through the Ray object store."""

    def __init__(self, policy: TrainerGroup, engines: list, timeout_s: float):
        self.policy, self.engines, self.timeout_s = policy, engines, timeout_s

    def on_restart(self) -> "ObjectStoreSync":
        """Nothing to rebuild: a restarted engine is reached through the object store as before."""
        return self

    def push(self) -> None:
        """Send the current policy weights to every engine and wait until all have them."""
        ref = self.policy.state_dict_ref()
        names = [f"rollout-{i} (load weights)" for i in range(len(self.engines))]
        wait([e.load_weights.remote(ref) for e in self.engines], names, self.timeout_s)


class NcclSync:
    """Weights broadcast over NCCL from policy rank 0 to every vLLM engine."""

    def __init__(self, policy: TrainerGroup, engines: list, tp_size: int, timeout_s: float):
        self.policy, self.engines, self.timeout_s = policy, engines, timeout_s
        rank0 = policy.ranks[0]
        addr, port = wait(rank0.rendezvous_address.remote(), "weight_sync rendezvous", timeout_s)
        world = 1 + len(engines) * tp_size
        refs = [rank0.init_weight_sender.remote(addr, port, world)]
        refs += [e.init_weight_group.remote(addr, port, 1 + i * tp_size, world) for i, e in enumerate(engines)]
        wait(refs, "weight_sync NCCL group set-up", timeout_s)
        # names, dtypes and shapes never change: ask once (every rank takes part in the ZeRO-3 gather)
        self.specs = wait([r.weight_specs.remote() for r in policy.ranks], "weight_sync.specs", timeout_s)[0]

    def on_restart(self) -> ObjectStoreSync:
        """A restarted engine is not in the NCCL group (and a broadcast to it would never finish):
        the run goes on with object-store syncs."""
        log.warning("a rollout engine was restarted: weight sync switches from NCCL to the Ray object store")
        return ObjectStoreSync(self.policy, self.engines, self.timeout_s)

    def push(self) -> None:
        """Broadcast the current weights; every rank gathers (ZeRO-3), rank 0 sends."""
        receivers = [e.receive_weights.remote(self.specs) for e in self.engines]
        senders = [r.broadcast_weights.remote() for r in self.policy.ranks]
        wait(senders + receivers, "weight_sync.broadcast", self.timeout_s)


class WeightSync:
    """Policy weights to the rollout engines of a ``RolloutPool``, by NCCL or the object store; it
    notices engine restarts (``rollouts.restarts``) and then leaves NCCL for the object store."""

    def __init__(self, policy: TrainerGroup, rollouts, transport):
        self.rollouts, self.transport, self.restarts_seen = rollouts, transport, rollouts.restarts

    def push(self) -> None:
        """Send the current policy weights to every engine and wait until all have them."""
        if self.rollouts.restarts > self.restarts_seen:
            self.transport, self.restarts_seen = self.transport.on_restart(), self.rollouts.restarts
        self.transport.push()


def make_weight_sync(cfg, policy: TrainerGroup, rollouts, nccl: bool = True) -> WeightSync:
    """The sync that fits the config: NCCL for vLLM on GPU (unless ``nccl=False``), the object store
    otherwise."""
    timeout = cfg.cluster.call_timeout_s
    if nccl and cfg.device == "cuda" and cfg.rollout.backend == "vllm":
        return WeightSync(policy, rollouts, NcclSync(policy, rollouts.actors, cfg.rollout.tensor_parallel_size, timeout))
    return WeightSync(policy, rollouts, ObjectStoreSync(policy, rollouts.actors, timeout))
