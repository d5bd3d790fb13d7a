"""Packing weights into flat buffers for a push (orchestrator/weight_sync.py): exact round trip, few
buffers, one cast, tied weights once, and zero-copy reads through the Ray object store."""

from __future__ import annotations

import pickle

import pytest
import torch

from orchestrator.weight_sync import ALIGN_BYTES, WeightBuckets, pack_weights, unpack_weights

MIB = 2**20


def _mixed() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 10, generator=g)
    return {
        "embed.weight": torch.randn(300, 7, generator=g),
        "norm.weight": torch.rand(7, generator=g).to(torch.bfloat16),
        "proj.weight": base.t(),  # not contiguous
        "scale": torch.tensor(3.5),  # 0-d
        "empty": torch.zeros(0, 4),
        "position_ids": torch.arange(11),  # int64: never cast
        "half.weight": torch.randn(5, 3, generator=g).half(),
    }


def test_round_trip_is_exact_and_in_order():
    state = _mixed()
    packed = pack_weights(state)
    got = unpack_weights(packed)
    assert [n for n, _ in got] == list(state)
    for (name, tensor), want in zip(got, state.values()):
        assert tensor.dtype == want.dtype and tensor.shape == want.shape, name
        assert torch.equal(tensor, want), name
    assert len(packed.buffers) == 1
    assert all(offset % ALIGN_BYTES == 0 for _, _, offset, _, _ in packed.index)
    assert dict(packed).keys() == state.keys()  # iterable as (name, tensor) pairs


def test_views_share_the_buffers():
    packed = pack_weights({"a": torch.ones(4), "b": torch.full((2, 2), 2.0)})
    (_, a), (_, b) = unpack_weights(packed)
    packed.buffers[0][:] = 0  # a write into the buffer shows in every view: nothing was copied
    assert a.sum() == 0 and b.sum() == 0


def test_few_buffers_of_the_bucket_size():
    state = {f"layer{i}.weight": torch.full((MIB // 4,), float(i)) for i in range(6)}  # 1 MiB each
    packed = pack_weights(state, bucket_mib=2.5)
    assert len(packed.buffers) == 3
    assert all(b.nbytes <= 2.5 * MIB for b in packed.buffers)
    big = pack_weights({"small": torch.ones(3), "huge": torch.ones(MIB), "after": torch.ones(3)}, bucket_mib=1)
    assert [b for _, b, _, _, _ in big.index] == [0, 1, 2]  # the 4 MiB tensor alone in its own buffer
    for name, tensor in unpack_weights(packed):
        assert torch.equal(tensor, state[name])


def test_cast_once_to_the_engine_dtype():
    state = _mixed()
    packed = pack_weights(state, dtype=torch.bfloat16)
    for name, tensor in unpack_weights(packed):
        want = state[name] if not state[name].is_floating_point() else state[name].to(torch.bfloat16)
        assert tensor.dtype == want.dtype and torch.equal(tensor, want), name
    assert packed.nbytes < pack_weights(state).nbytes


def test_tied_weights_are_stored_once():
    model = torch.nn.Module()
    model.embed = torch.nn.Embedding(1000, 64)
    model.head = torch.nn.Linear(64, 1000, bias=False)
    model.head.weight = model.embed.weight
    state = model.state_dict()
    assert set(state) == {"embed.weight", "head.weight"}
    packed = pack_weights(state)
    assert packed.nbytes == 1000 * 64 * 4
    got = dict(unpack_weights(packed))
    assert torch.equal(got["embed.weight"], model.embed.weight) and torch.equal(got["head.weight"], model.embed.weight)
    # the same bytes seen as another shape are not the same tensor
    flat = torch.arange(12.0)
    views = dict(unpack_weights(pack_weights({"flat": flat, "square": flat.view(3, 4)})))
    assert views["square"].shape == (3, 4) and torch.equal(views["square"].flatten(), flat)


def test_pickle_round_trip_of_a_real_model(tiny_model_path):
    from transformers import AutoModelForCausalLM

    source = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.01 * torch.randn_like(p))
    packed = pickle.loads(pickle.dumps(pack_weights(source.state_dict()), protocol=5))
    target = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    target.load_state_dict(dict(packed), strict=True)
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name


@pytest.mark.slow
def test_object_store_readers_get_views_not_copies(ray_local):
    ray = ray_local
    state = {"w": torch.randn(256, 1024), "b": torch.randn(1024).to(torch.bfloat16)}
    ref = ray.put(pack_weights(state, bucket_mib=0.5))

    @ray.remote(num_cpus=0)
    def read(buckets: WeightBuckets):
        # read-only numpy buffers are Ray's shared-memory objects, mapped into this process
        return [b.flags.writeable for b in buckets.buffers], {n: t.clone() for n, t in buckets}

    writeable, got = ray.get(read.remote(ref))
    assert writeable == [False, False]
    for name, tensor in state.items():
        assert torch.equal(got[name], tensor), name


class Broadcasts:
    """A communicator double for the NCCL path (no GPU here): with ``incoming`` None it records rank 0's
    broadcasts; given them, a receiver's broadcasts take them in order."""

    def __init__(self, incoming: list | None = None):
        self.device, self.incoming, self.sent = torch.device("cpu"), incoming, []

    def broadcast(self, tensor, src, stream=None):
        if self.incoming is None:
            self.sent.append(tensor.clone())
        else:
            tensor.copy_(self.incoming.pop(0))


def test_nccl_path_sends_buckets_not_tensors():
    from workers import nccl_weight_sender as sender
    from workers.vllm_weight_ext import WeightSyncExtension

    named = [(f"layer{i}.weight", torch.randn(64, 64)) for i in range(10)]
    named += [("norm.weight", torch.rand(64).to(torch.bfloat16)), ("lm_head.weight", torch.randn(3, 64).t())]
    specs, bucket = sender.weight_specs(named), 4 * 64 * 64 * 4
    assert sender.bucket_plan(specs, bucket) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [10], [11]]
    assert sender.bucket_plan(specs, 0) == [[i] for i in range(12)]  # one tensor a broadcast

    trainer_side = Broadcasts()
    assert sender.broadcast_weights(trainer_side, named, bucket_bytes=bucket) == 12
    assert len(trainer_side.sent) == 5

    class Worker(WeightSyncExtension):
        rank, loaded = 0, []

        def reload_weights(self, weights_iterator=None, is_checkpoint_format=True):
            self.loaded = [(n, t.clone()) for n, t in weights_iterator]

    worker = Worker()
    worker._tether_weight_comm = Broadcasts(incoming=list(trainer_side.sent))
    worker.tether_receive_weights(specs, bucket_bytes=bucket)
    assert not worker._tether_weight_comm.incoming  # every broadcast was matched
    assert [n for n, _ in worker.loaded] == [n for n, _ in named]
    for (_, got), (_, want) in zip(worker.loaded, named):
        assert got.dtype == want.dtype and torch.equal(got, want)
