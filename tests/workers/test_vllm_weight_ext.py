"""CPU unit tests for the weight-sync glue (no engine, no GPU, no NCCL).

The real engine path is exercised elsewhere; here the vLLM worker is replaced
by small recording doubles that expose the same methods the extension relies on
(``reload_weights(weights_iterator=..., is_checkpoint_format=...)``,
``get_model()``, ``rank``, ``device``), and the NCCL communicator by a double
with ``device`` and ``broadcast(tensor, src, stream)``.
"""

from __future__ import annotations

import inspect
import socket

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")
safetensors_torch = pytest.importorskip("safetensors.torch")

from workers import nccl_weight_sender as sender  # noqa: E402
from workers.vllm_weight_ext import WeightSyncExtension  # noqa: E402


class RecordingWorker(WeightSyncExtension):
    """Stands in for vLLM's Worker: records what reload_weights received."""

    def __init__(self, consume: int | None = None):
        self.rank = 0
        self.device = torch.device("cpu")
        self.calls: list[dict] = []
        self.loaded: list[tuple[str, torch.Tensor]] = []
        self._consume = consume  # None: consume everything
        self.model = torch.nn.Linear(3, 2)

    def reload_weights(self, weights_iterator=None, weights_path=None, is_checkpoint_format=True):
        self.calls.append(
            {"weights_path": weights_path, "is_checkpoint_format": is_checkpoint_format}
        )
        for i, (name, tensor) in enumerate(weights_iterator):
            if self._consume is not None and i >= self._consume:
                break
            self.loaded.append((name, tensor.clone()))

    def get_model(self):
        return self.model


class FakeComm:
    """Stands in for PyNcclCommunicator on rank 0 (send) or a worker (recv)."""

    def __init__(self, source: list[torch.Tensor] | None = None):
        self.device = torch.device("cpu")
        self.source = list(source or [])
        self.sent: list[torch.Tensor] = []
        self.received = 0

    def broadcast(self, tensor, src, stream=None):
        assert src == 0
        assert tensor.is_contiguous()
        if self.source:  # receiving side: fill from the "trainer"
            tensor.copy_(self.source[self.received])
            self.received += 1
        else:  # sending side: record what went out
            self.sent.append(tensor.clone())

    def destroy(self):
        pass


def _named():
    base = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    return [
        ("model.w", base),
        ("model.b", torch.ones(4, dtype=torch.bfloat16)),
        ("model.t", base.t()),  # non-contiguous view
        ("model.step", torch.tensor(7, dtype=torch.int64)),  # 0-d
    ]


def test_weight_specs_and_dtype_round_trip():
    specs = sender.weight_specs(_named())
    assert specs == [
        ("model.w", "float32", (2, 3)),
        ("model.b", "bfloat16", (4,)),
        ("model.t", "float32", (3, 2)),
        ("model.step", "int64", ()),
    ]
    for _, dtype_name, _ in specs:
        assert sender.dtype_from_str(dtype_name) == getattr(torch, dtype_name)
    assert sender.dtype_from_str("torch.float16") is torch.float16
    with pytest.raises(ValueError):
        sender.dtype_from_str("Tensor")


def test_free_port_is_bindable():
    port = sender.free_port()
    assert 0 < port < 65536
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("", port))


def test_load_safetensors_goes_through_reload_weights():
    state = {
        "model.embed_tokens.weight": torch.randn(5, 3),
        "model.norm.weight": torch.rand(3, dtype=torch.float32).to(torch.bfloat16),
    }
    blob = safetensors_torch.save(state)
    worker = RecordingWorker()
    worker.tether_load_safetensors(blob)
    assert worker.calls == [{"weights_path": None, "is_checkpoint_format": True}]
    got = dict(worker.loaded)
    assert set(got) == set(state)
    for name, tensor in state.items():
        assert got[name].dtype == tensor.dtype
        assert torch.equal(got[name], tensor)


def test_broadcast_then_receive_round_trip():
    named = _named()
    specs = sender.weight_specs(named)
    send_comm = FakeComm()
    assert sender.broadcast_weights(send_comm, named) == len(named)

    worker = RecordingWorker()
    worker._tether_weight_comm = FakeComm(source=send_comm.sent)
    worker.tether_receive_weights(specs)
    assert worker.calls == [{"weights_path": None, "is_checkpoint_format": True}]
    assert [n for n, _ in worker.loaded] == [n for n, _ in named]
    for (_, want), (_, got) in zip(named, worker.loaded):
        assert got.dtype == want.dtype and tuple(got.shape) == tuple(want.shape)
        assert torch.equal(got, want)


def test_receive_drains_what_the_loader_left():
    named = _named()
    send_comm = FakeComm()
    sender.broadcast_weights(send_comm, named)
    worker = RecordingWorker(consume=1)
    recv = FakeComm(source=send_comm.sent)
    worker._tether_weight_comm = recv
    worker.tether_receive_weights(sender.weight_specs(named))
    assert len(worker.loaded) == 1
    # Every broadcast was still matched, so rank 0 would not hang.
    assert recv.received == len(named)


def test_receive_requires_group():
    with pytest.raises(RuntimeError):
        RecordingWorker().tether_receive_weights([("x", "float32", (1,))])


def test_checksum():
    worker = RecordingWorker()
    with torch.no_grad():
        worker.model.weight.fill_(0.5)
        worker.model.bias.fill_(-1.0)
    assert worker.tether_weights_checksum() == pytest.approx(6 * 0.5 - 2.0)


def test_extension_fits_installed_vllm_worker():
    """The vLLM API the glue relies on exists with the expected shape."""
    from vllm.v1.worker.cpu_worker import CPUWorker
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.gpu_worker import Worker

    params = inspect.signature(GPUModelRunner.reload_weights).parameters
    assert "weights_iterator" in params and "is_checkpoint_format" in params
    for worker_cls in (Worker, CPUWorker):
        assert callable(getattr(worker_cls, "reload_weights", None))
        assert callable(getattr(worker_cls, "get_model", None))
        # vLLM asserts that no extension attribute shadows a worker attribute.
        for attr in dir(WeightSyncExtension):
            if not attr.startswith("__"):
                assert not hasattr(worker_cls, attr), attr

    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
    from vllm.distributed.utils import StatelessProcessGroup
    from vllm.distributed.weight_transfer.nccl_common import (
        stateless_init_process_group,
    )

    assert "stream" in inspect.signature(PyNcclCommunicator.broadcast).parameters
    assert callable(StatelessProcessGroup.create)
    assert list(inspect.signature(stateless_init_process_group).parameters)[:4] == [
        "master_address",
        "master_port",
        "rank",
        "world_size",
    ]
