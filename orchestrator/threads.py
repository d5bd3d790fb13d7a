"""Intra-op threads of CPU actors with ``cluster.torch_threads`` null (auto).

The phases of a synchronous step run one after another, so a phase that runs alone (generation,
the policy update, DPO's reference pass) can have its whole node: every actor starts with the CPUs
of its node as Ray counts them (``workers/common.setup_process``) and the ranks of one trainer group
on a node split them (``TrainerRank._share_node_cpus``). Where several actors compute on one node at
the same time (RLHF's reference, old-log-prob and value passes), :meth:`ThreadShares.together` gives
each an equal share of its node for that phase and hands the node back after. The thread changes
are ordinary actor calls sent just before and after the phase's own calls, so Ray runs them in
order with no wait. A number in ``cluster.torch_threads`` fixes every actor's threads instead.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

from orchestrator.runtime import wait


def shares(nodes: list[tuple[str, int]]) -> list[int]:
    """Threads for each of several actors computing together, given each one's ``(node id, node CPUs)``:
    its node's CPUs split evenly between the actors on that node, at least 1."""
    on_node = Counter(node for node, _ in nodes)
    return [max(1, cpus // on_node[node]) for node, cpus in nodes]


class ThreadShares:
    """The driver's side of auto threads (a no-op with a fixed ``cluster.torch_threads`` or on GPU)."""

    def __init__(self, cfg):
        self.auto = cfg.cluster.torch_threads is None and cfg.device == "cpu"
        self.timeout_s = cfg.cluster.call_timeout_s
        self._nodes: dict[str, tuple[str, int]] = {}  # actor id -> (node id, node CPUs)

    def _where(self, actors: list) -> list[tuple[str, int]]:
        new = [a for a in actors if a._actor_id.hex() not in self._nodes]
        if new:
            found = wait([a.node_cpus.remote() for a in new], [f"actor {a._actor_id.hex()[:8]} (node)" for a in new],
                         self.timeout_s)
            self._nodes.update({a._actor_id.hex(): tuple(f) for a, f in zip(new, found)})
        return [self._nodes[a._actor_id.hex()] for a in actors]

    @contextmanager
    def together(self, actors: list):
        """While the block runs, ``actors`` (which compute at the same time) share their nodes' CPUs."""
        if not self.auto or len(actors) < 2:
            yield
            return
        for actor, n in zip(actors, shares(self._where(actors))):
            actor.use_threads.remote(n)
        try:
            yield
        finally:
            for actor in actors:
                actor.use_threads.remote(None)
