"""Auto intra-op threads (``cluster.torch_threads`` null, orchestrator/threads.py): an actor computing
alone gets its node's CPUs; actors computing together on one node split them for that phase and get
the node back after; a fixed ``cluster.torch_threads`` is left alone."""

from __future__ import annotations

import sys

import ray

from orchestrator.specs import ProcessSpec
from orchestrator.threads import ThreadShares, shares
from tests.conftest import compose_config
from workers.common import ThreadShare, setup_process


def test_shares_split_each_node_between_its_actors():
    assert shares([("a", 2)]) == [2]
    assert shares([("a", 8), ("b", 4), ("a", 8), ("b", 4), ("b", 4)]) == [4, 1, 4, 1, 1]
    assert shares([("a", 2)] * 3) == [1, 1, 1]  # never below one thread


class Computing(ThreadShare):
    """A light actor with the thread controls of every computing worker."""

    def __init__(self, threads: int | None):
        self.alone_threads = setup_process(ProcessSpec(torch_threads=threads))

    def threads(self) -> int:
        import torch

        return torch.get_num_threads()


def test_actors_alone_and_together(ray_local):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # this test module is not importable by workers
    actor = ray.remote(num_cpus=0.25)(Computing)
    a, b = actor.remote(None), actor.remote(None)
    assert ray.get([a.threads.remote(), b.threads.remote()]) == [2, 2]  # the local Ray has 2 CPUs
    plan = ThreadShares(compose_config())
    with plan.together([a, b]):
        assert ray.get([a.threads.remote(), b.threads.remote()]) == [1, 1]
    assert ray.get([a.threads.remote(), b.threads.remote()]) == [2, 2]
    fixed = ThreadShares(compose_config("cluster.torch_threads=1"))
    c, d = actor.remote(1), actor.remote(1)
    with fixed.together([c, d]):
        assert ray.get([c.threads.remote(), d.threads.remote()]) == [1, 1]
    with fixed.together([a, b]):  # fixed threads: no change
        assert ray.get([a.threads.remote(), b.threads.remote()]) == [2, 2]
