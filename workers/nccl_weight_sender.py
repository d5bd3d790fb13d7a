"""Trainer-side helpers for the GPU weight-sync path (NCCL broadcast to vLLM).

Only trainer rank 0 uses these; they need CUDA + NCCL at run time. (The pure
helpers `weight_specs`, `dtype_from_str` and `free_port` work anywhere.) The
receiving side is `workers.vllm_weight_ext.WeightSyncExtension`, loaded into
every vLLM worker via `LLM(..., worker_extension_cls=
"workers.vllm_weight_ext.WeightSyncExtension")`.

Group layout
------------
One NCCL group per run: trainer rank 0 is group rank 0; engine ``i`` (with
``tp_i`` workers, i.e. TP*PP) occupies ranks ``rank_offset_i ..
rank_offset_i + tp_i - 1`` where ``rank_offset_0 = 1`` and
``rank_offset_{i+1} = rank_offset_i + tp_i``. ``world_size = 1 + sum(tp_i)``.
Each worker joins as ``rank_offset + worker.rank``.

Driver call order (both steps deadlock if done sequentially)
------------------------------------------------------------
1. Init, once:
   a. On the trainer node: ``addr = <IP of trainer rank 0's node reachable by
      the engines>`` (e.g. ``ray.util.get_node_ip_address()`` inside the
      trainer actor), ``port = free_port()`` (also on that node).
   b. Submit WITHOUT waiting, for every engine actor::

         engine.collective_rpc.remote(
             "tether_init_weight_group", args=(addr, port, rank_offset_i, world_size))

   c. Submit the trainer-rank-0 call that runs
      ``comm = init_sender_group(addr, port, world_size, device)``.
   d. ``ray.get`` all of the above together. Group creation is a rendezvous
      (TCPStore + ncclCommInitRank): every member blocks until all have
      joined, so all calls must be in flight at the same time.

2. Each sync, after the optimizer step:
   a. ``specs = weight_specs(named_tensors)`` on trainer rank 0 (cheap; return
      it to the driver, no NCCL involved).
   b. Submit WITHOUT waiting, for every engine actor::

         engine.collective_rpc.remote("tether_receive_weights", args=(specs,))

   c. Submit the trainer-rank-0 call running
      ``broadcast_weights(comm, named_tensors)`` with the same tensors, in the
      same order, as were used for ``specs``.
   d. ``ray.get`` all together (each engine's receive and the trainer's
      broadcast meet in the same NCCL broadcasts).
   e. Then reset each engine's prefix cache (``llm.reset_prefix_cache()``),
      because cached KV blocks were computed with the old weights.

The engine must be idle (no ``generate`` in progress) during step 2: the RPC
runs inside the engine's step loop. With DeepSpeed ZeRO-3, the full tensors
come from a parameter gather that is itself a collective over all trainer
ranks: every trainer rank must run the gather, only rank 0 broadcasts.
Tensors are sent as-is (dtype included); cast them before calling
`weight_specs` if the wire dtype should differ (vLLM's loaders cast into the
parameter dtype on load). Consecutive tensors of one dtype travel together in
one broadcast of up to ``bucket_bytes`` (`bucket_plan`; sender and receivers
use the same default, ``BUCKET_BYTES``); a larger tensor goes alone.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

WeightSpec = tuple[str, str, tuple[int, ...]]

BUCKET_BYTES = 256 * 2**20  # largest broadcast that carries several tensors


def free_port() -> int:
    """Return a TCP port that is free on this host right now.

    Call it on the node that will host NCCL rank 0 (the trainer): that rank
    binds the rendezvous store on this port. Another process can grab the port
    between this call and the bind, so pick it just before initialising.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def dtype_to_str(dtype: "torch.dtype") -> str:
    """`torch.bfloat16` -> ``"bfloat16"`` (the inverse of `dtype_from_str`)."""
    return str(dtype).split(".")[-1]


def dtype_from_str(name: str) -> "torch.dtype":
    """``"bfloat16"`` or ``"torch.bfloat16"`` -> `torch.bfloat16`."""
    import torch

    attr = name.split(".")[-1]
    dtype = getattr(torch, attr, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"not a torch dtype: {name!r}")
    return dtype


def weight_specs(
    named_tensors: Iterable[tuple[str, "torch.Tensor"]],
) -> list[WeightSpec]:
    """Describe tensors for the receivers: ``[(name, dtype_str, shape), ...]``.

    The list is plain Python (picklable, small) and its order is the order in
    which `broadcast_weights` must send the same tensors.
    """
    specs: list[WeightSpec] = []
    for name, tensor in named_tensors:
        specs.append(
            (str(name), dtype_to_str(tensor.dtype), tuple(int(s) for s in tensor.shape))
        )
    return specs


def bucket_plan(specs: Sequence[WeightSpec], bucket_bytes: int = BUCKET_BYTES) -> list[list[int]]:
    """Group the indices of ``specs`` into broadcasts: consecutive tensors of one dtype share one
    flat buffer of at most ``bucket_bytes`` (a larger tensor, or any with ``bucket_bytes <= 0``, is
    sent alone). Sender and receivers must use the same plan."""
    buckets: list[list[int]] = []
    size, dtype = 0, None
    for i, (_name, dtype_name, shape) in enumerate(specs):
        nbytes = math.prod(shape) * dtype_from_str(dtype_name).itemsize
        if not buckets or dtype_name != dtype or size + nbytes > bucket_bytes:
            buckets.append([])
            size, dtype = 0, dtype_name
        buckets[-1].append(i)
        size += nbytes
    return buckets


def create_stateless_nccl_group(
    master_address: str,
    master_port: int,
    rank: int,
    world_size: int,
    device: Any,
) -> Any:
    """Join a NCCL group outside `torch.distributed`'s global state.

    Uses vLLM's `StatelessProcessGroup` (TCPStore rendezvous; rank 0 hosts the
    store on ``master_address:master_port``) plus `PyNcclCommunicator`. Both
    the trainer and the vLLM workers go through this one function so they
    create the communicator the same way (vLLM's helper also strips the NCCL
    variables vLLM pins for its own communicators, which a foreign peer would
    not share). Blocks until all ``world_size`` members have joined.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside group of size {world_size}")
    try:
        # vLLM >= 0.2x: StatelessProcessGroup.create + PyNcclCommunicator,
        # wrapped in the "unpinned NCCL env" context.
        from vllm.distributed.weight_transfer.nccl_common import (
            stateless_init_process_group,
        )
    except ImportError:  # pragma: no cover - older vLLM layouts
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        group = StatelessProcessGroup.create(
            host=master_address, port=master_port, rank=rank, world_size=world_size
        )
        comm = PyNcclCommunicator(group, device=device)
    else:
        comm = stateless_init_process_group(
            master_address, master_port, rank, world_size, device
        )
    if getattr(comm, "disabled", False):
        # PyNcclCommunicator silently turns itself into a no-op when NCCL is
        # missing (or world_size == 1); a no-op broadcast would leave stale
        # weights without any error, so refuse it here.
        raise RuntimeError(
            "PyNcclCommunicator is disabled (NCCL library not loadable, "
            "VLLM_DISABLE_PYNCCL set, or world_size == 1); GPU weight sync "
            "cannot work in this process"
        )
    return comm


def init_sender_group(
    master_address: str,
    master_port: int,
    world_size: int,
    device: Any,
) -> Any:
    """Create trainer rank 0's end of the weight-sync group.

    ``device`` is the trainer's CUDA device (``torch.device("cuda", i)`` or an
    index). Must run concurrently with every engine's
    ``tether_init_weight_group`` (see the module docstring). Returns the
    `PyNcclCommunicator`.
    """
    return create_stateless_nccl_group(
        master_address, master_port, 0, world_size, device
    )


def broadcast_weights(
    comm: Any,
    named_tensors: Sequence[tuple[str, "torch.Tensor"]] | Iterable[tuple[str, "torch.Tensor"]],
    stream: Any = None,
    bucket_bytes: int = BUCKET_BYTES,
) -> int:
    """Broadcast every tensor from rank 0, in order, bucketed as `bucket_plan` says; return how
    many tensors were sent.

    Must run while every engine is inside ``tether_receive_weights`` with the
    specs from `weight_specs` over the same tensors (same order). Tensors not
    on the communicator's device are copied there; non-contiguous ones are
    made contiguous (NCCL reads ``numel`` elements from ``data_ptr``).
    ``stream`` defaults to the current CUDA stream of ``comm.device``; work
    already queued on the current stream is waited for before sending. Returns
    after all broadcasts have completed on the device, so the caller may
    modify the parameters (next optimizer step) right away.
    """
    import torch

    device = comm.device
    on_cuda = getattr(device, "type", None) == "cuda"
    ctx: Any
    if on_cuda:
        current = torch.cuda.current_stream(device)
        if stream is None:
            stream = current
        elif stream != current:
            # Tensors may have been produced on the current stream.
            stream.wait_stream(current)
        ctx = torch.cuda.stream(stream)
    else:  # only reachable with a test double
        import contextlib

        ctx = contextlib.nullcontext()

    named = list(named_tensors)
    sent = 0
    with ctx, torch.no_grad():
        for bucket in bucket_plan(weight_specs(named), bucket_bytes):
            # Temporaries are allocated on `stream` (inside the context), so
            # the caching allocator will not hand their memory out again before
            # the broadcast that reads them has run.
            parts = [named[i][1].detach() for i in bucket]
            parts = [p if p.device == device else p.to(device, non_blocking=True) for p in parts]
            if len(parts) == 1:
                data = parts[0] if parts[0].is_contiguous() else parts[0].contiguous()
            else:
                data = torch.cat([p.reshape(-1) for p in parts])
            comm.broadcast(data, src=0, stream=stream)
            sent += len(bucket)
    if on_cuda:
        stream.synchronize()
    return sent


def destroy_group(comm: Any) -> None:
    """Tear down a communicator made by `init_sender_group`."""
    if comm is not None:
        comm.destroy()
