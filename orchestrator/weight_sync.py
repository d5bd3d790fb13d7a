"""Weight sync: policy trainer rank 0 -> every rollout engine, after each policy update.

``WeightSync.push()`` is the one call a pipeline makes; it picks the transport:

- ``ObjectStoreSync`` (CPU, and the ``hf`` backend anywhere): rank 0 gathers the full weights
  (ZeRO-3 included) and packs them, cast once to the engines' dtype, into a few flat byte buffers
  (``pack_weights``: buckets of at most ``bucket_mib`` MiB, a tensor larger than that alone in its
  own, tied weights stored once) plus a small index. The buffers are numpy arrays, so Ray puts them
  in the object store once and an engine on the same node reads them without a copy;
  ``unpack_weights`` turns them back into ``(name, tensor)`` views, which vLLM's worker loads with
  ``reload_weights`` (then a prefix-cache reset).
- ``NcclSync`` (GPU with vLLM): one NCCL group made of trainer rank 0 and every engine's
  workers; rank 0 broadcasts the tensors, consecutive ones of a dtype together in buckets
  (``workers.nccl_weight_sender.bucket_plan``), and the engines load them as they arrive
  (``workers.vllm_weight_ext``). A restarted engine is not in that group: after Ray restarts a
  rollout engine the sync falls back to the object store by itself.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from orchestrator.runtime import wait

if TYPE_CHECKING:
    from orchestrator.roles import TrainerGroup

log = logging.getLogger("tether")

BUCKET_MIB = 512  # default largest buffer of a push (a bigger tensor gets a buffer of its own)
ALIGN_BYTES = 64  # every tensor starts on a 64-byte boundary of its buffer


@dataclass
class WeightBuckets:
    """A model's weights as a few flat byte buffers and an index.

    ``index`` holds one ``(name, buffer number, byte offset, dtype name, shape)`` per tensor, in the
    order they were packed; names whose tensors shared memory (tied embeddings) point at the same
    bytes. Iterating yields ``(name, tensor)`` views into the buffers (``unpack_weights``).
    """

    buffers: list[np.ndarray] = field(default_factory=list)
    index: list[tuple[str, int, int, str, tuple[int, ...]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.index)

    def __iter__(self):
        return iter(unpack_weights(self))

    @property
    def nbytes(self) -> int:
        """Bytes in all buffers."""
        return sum(int(b.nbytes) for b in self.buffers)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _view(flat: torch.Tensor, offset: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """The tensor of ``dtype`` and ``shape`` stored at byte ``offset`` of the uint8 tensor ``flat``."""
    return flat[offset: offset + math.prod(shape) * dtype.itemsize].view(dtype).view(shape)


def pack_weights(named_tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
                 dtype: torch.dtype | None = None, bucket_mib: float = BUCKET_MIB) -> WeightBuckets:
    """Copy tensors (any device) into flat CPU byte buffers of at most ``bucket_mib`` MiB each, in
    order; floating-point tensors are cast to ``dtype`` on the way (None: keep their own). One copy
    per tensor, a tensor seen twice (same memory, shape and strides) once."""
    items = list(named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors)
    limit = max(1, int(bucket_mib * 2**20))
    index, sizes, sources, seen = [], [0], [], {}
    for name, tensor in items:
        out = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        shape = tuple(int(s) for s in tensor.shape)
        key = (tensor.device, tensor.data_ptr(), tensor.dtype, shape, tuple(tensor.stride()))
        if tensor.numel() and key in seen:
            index.append((name, *seen[key], _dtype_name(out), shape))
            continue
        nbytes = math.prod(shape) * out.itemsize
        if sizes[-1] and sizes[-1] + nbytes > limit:
            sizes.append(0)
        place = (len(sizes) - 1, sizes[-1])
        seen[key] = place
        index.append((name, *place, _dtype_name(out), shape))
        sources.append((place, out, shape, tensor))
        sizes[-1] += -(-nbytes // ALIGN_BYTES) * ALIGN_BYTES
    buffers = [np.empty(size, dtype=np.uint8) for size in sizes]
    flats = [torch.from_numpy(b) for b in buffers]
    with torch.no_grad():
        for (bucket, offset), out, shape, tensor in sources:
            _view(flats[bucket], offset, out, shape).copy_(tensor.detach())
    return WeightBuckets(buffers, index)


def unpack_weights(buckets: WeightBuckets) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every packed tensor, in packing order: views into the buffers, no copy
    (read-only when the buffers came from the object store: the loader copies out of them)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        flats = [torch.from_numpy(b) for b in buckets.buffers]
    return [(name, _view(flats[bucket], offset, getattr(torch, dtype), tuple(shape)))
            for name, bucket, offset, dtype, shape in buckets.index]


class ObjectStoreSync:
    """Weights through the Ray object store, packed (``pack_weights``) in the engines' ``dtype``
    (None: the trainer's own)."""

    def __init__(self, policy: TrainerGroup, engines: list, timeout_s: float, dtype: str | None = None,
                 bucket_mib: float = BUCKET_MIB):
        self.policy, self.engines, self.timeout_s = policy, engines, timeout_s
        self.dtype, self.bucket_mib = dtype, bucket_mib

    def on_restart(self) -> "ObjectStoreSync":
        """Nothing to rebuild: a restarted engine is reached through the object store as before."""
        return self

    def push(self) -> None:
        """Send the current policy weights to every engine and wait until all have them."""
        refs = [r.state_dict_for_sync.remote(self.dtype, self.bucket_mib) for r in self.policy.ranks]
        wait(refs[1:], self.policy.names("gather weights")[1:], self.timeout_s)  # ZeRO-3: every rank gathers
        names = [f"rollout-{i} (load weights)" for i in range(len(self.engines))]
        wait([e.load_weights.remote(refs[0]) for e in self.engines], names, self.timeout_s)


class NcclSync:
    """Weights broadcast over NCCL from policy rank 0 to every vLLM engine."""

    def __init__(self, policy: TrainerGroup, engines: list, tp_size: int, timeout_s: float, dtype: str | None = None):
        self.policy, self.engines, self.timeout_s, self.dtype = policy, engines, timeout_s, dtype
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
        return ObjectStoreSync(self.policy, self.engines, self.timeout_s, self.dtype)

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
    from orchestrator.specs import RolloutSpec

    timeout, dtype = cfg.cluster.call_timeout_s, RolloutSpec.of(cfg).process.dtype  # what the engines hold
    if nccl and cfg.device == "cuda" and cfg.rollout.backend == "vllm":
        return WeightSync(policy, rollouts, NcclSync(policy, rollouts.actors, cfg.rollout.tensor_parallel_size, timeout,
                                                     dtype))
    return WeightSync(policy, rollouts, ObjectStoreSync(policy, rollouts.actors, timeout, dtype))
