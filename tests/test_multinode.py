"""Multi-node placement on a simulated Ray cluster: ``ray.cluster_utils.Cluster`` runs a head and
two worker nodes on this machine (1 CPU each), told apart by the custom resources ``head``,
``node_a`` and ``node_b``. Roles land where config says, impossible requests fail before Ray is
asked, and an RLHF run (CLI, ``cluster.address``) completes with its roles on different nodes."""

from __future__ import annotations

import json
import threading
import time

import pytest
import ray
from ray._private.state import actors  # the GCS actor table (the state API needs the dashboard)

from orchestrator.errors import ResourceError
from orchestrator.placement import Placement, RoleSpec
from orchestrator.runtime import actor_env
from tests.conftest import run_cli

pytestmark = pytest.mark.slow
NODES = ("head", "node_a", "node_b")


@pytest.fixture(scope="module")
def cluster():
    """The simulated cluster, this process connected as a driver; yields (address, {name: node id})."""
    from ray.cluster_utils import Cluster

    sim = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head": 1},
                                                         "include_dashboard": False})
    for name in NODES[1:]:
        sim.add_node(num_cpus=1, resources={name: 1})
    sim.wait_for_nodes()
    ray.init(address=sim.address, runtime_env={"env_vars": actor_env()}, logging_level="WARNING")
    ids = {name: n["NodeID"] for n in ray.nodes() for name in NODES if name in n["Resources"]}
    assert len(ids) == 3
    yield sim.address, ids
    ray.shutdown()
    sim.shutdown()


@ray.remote
class Probe:
    """A light actor standing in for a role's actor; says which node it runs on."""

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()


def _probe_nodes(placement: Placement, role: str, count: int) -> list[str]:
    probes = [Probe.options(**placement.options(role, i)).remote() for i in range(count)]
    return ray.get([p.node.remote() for p in probes])


def _release(placement: Placement) -> None:
    """Remove the placement and wait until its resources are free again (removal is asynchronous),
    so the next layout sees an idle cluster."""
    placement.remove()
    for _ in range(120):
        if ray.available_resources().get("CPU", 0) >= ray.cluster_resources()["CPU"]:
            return
        time.sleep(0.25)
    raise AssertionError(f"resources not released: {ray.available_resources()}")


def test_roles_land_where_config_says(cluster):
    _, ids = cluster
    # pinned by custom resources; the rest spread; the 2 policy ranks fit one node -> STRICT_PACK
    roles = [RoleSpec("rollout", 2, 0.25, 0, {"node_b": 0.25}), RoleSpec("reference", 1, 0.25, 0, {"head": 0.5}),
             RoleSpec("reward", 1, 0.25, 0), RoleSpec("policy", 2, 0.25, 0, {"node_a": 0.5})]
    placement = Placement(roles, "SPREAD", 30)
    assert [(p.roles, p.strategy) for p in placement.plans] == [
        (["policy"], "STRICT_PACK"), (["rollout", "reference", "reward"], "SPREAD")]
    # actors started with the placement's options run on the nodes its bundles are on
    assert _probe_nodes(placement, "rollout", 2) == placement.node_ids("rollout") == [ids["node_b"]] * 2
    assert _probe_nodes(placement, "policy", 2) == placement.node_ids("policy") == [ids["node_a"]] * 2
    assert placement.node_ids("reference") == [ids["head"]]
    _release(placement)

    # SPREAD puts 3 rollout actors on 3 nodes, PACK on one
    for strategy, n_nodes in (("SPREAD", 3), ("PACK", 1)):
        placement = Placement([RoleSpec("rollout", 3, 0.25, 0)], strategy, 30)
        assert len(set(placement.node_ids("rollout"))) == n_nodes, strategy
        _release(placement)

    # trainer ranks stay together while the rest is STRICT_SPREAD; 3 ranks of 0.5 CPU need 2 nodes (PACK)
    placement = Placement([RoleSpec("rollout", 3, 0.25, 0), RoleSpec("policy", 2, 0.25, 0)], "STRICT_SPREAD", 30)
    assert len(set(placement.node_ids("rollout"))) == 3 and len(set(placement.node_ids("policy"))) == 1
    _release(placement)
    placement = Placement([RoleSpec("critic", 3, 0.5, 0)], "STRICT_SPREAD", 30)
    assert placement.plans[0].strategy == "PACK" and len(set(placement.node_ids("critic"))) == 2
    _release(placement)


def test_impossible_requests_fail_before_asking_ray(cluster):
    before = len(ray.util.placement_group_table())
    cases = [
        ([RoleSpec("policy", 1, 1, 0, {"trainer_node": 1})], "PACK",
         "placement: policy rank bundle {CPU: 1, trainer_node: 1} fits no node (no node has resource "
         "'trainer_node'; set by cluster.role_resources.policy)"),
        ([RoleSpec("policy", 1, 2, 0)], "PACK",  # 2 CPUs in all fit the 3 the cluster has, but no node has 2
         "placement: policy rank bundle {CPU: 2} fits no node (the most CPU on one node is 1; set by trainer.num_cpus)"),
        ([RoleSpec("rollout", 2, 0.25, 0, {"node_a": 0.5}), RoleSpec("reward", 1, 0.25, 0, {"node_a": 0.5})], "PACK",
         "the run needs 1.5 node_a (rollout 1, reward 0.5) but the cluster has 1"),
        ([RoleSpec("rollout", 3, 0.25, 0), RoleSpec("reward", 1, 0.25, 0)], "STRICT_SPREAD",
         "STRICT_SPREAD needs a node per bundle: 4 bundles (rollout 3, reward 1) but the cluster has 3 alive node(s)"),
    ]
    for roles, strategy, expected in cases:
        with pytest.raises(ResourceError) as err:
            Placement(roles, strategy, 5)
        assert expected in str(err.value) and "\n" not in str(err.value)
    assert len(ray.util.placement_group_table()) == before  # no placement group was asked for

    # each bundle fits a node and the total fits the cluster, but 4 x 0.6 CPU do not fit 3 x 1 CPU:
    # only Ray can tell, and the wait is bounded
    with pytest.raises(ResourceError, match=r"placement \(rollout PACK\) not ready after 3s.*rollout: 4 x \{CPU: 0.6\}"):
        Placement([RoleSpec("rollout", 4, 0.6, 0)], "PACK", 3)


def test_rlhf_run_across_simulated_nodes(cluster, tmp_path):
    address, ids = cluster
    out = tmp_path / "run"
    overrides = [f"cluster.address={address}", "rollout=hf", "algorithm=grpo", "trainer.max_steps=2",
                 "+cluster.role_resources.policy={node_a: 1}", "+cluster.role_resources.rollout={node_b: 1}",
                 "cluster.placement_strategy=SPREAD", f"output_dir={out}", "logger.wandb=false",
                 "logger.progress_bar=false"]
    done: dict = {}
    run = threading.Thread(target=lambda: done.update(proc=run_cli(*overrides)))
    run.start()
    ran: dict[str, str] = {}  # role actor -> node it was seen alive on (the GCS actor table, polled)
    while run.is_alive():
        for a in actors(actor_state_name="ALIVE").values():
            if a["Name"].startswith(("rollout-", "reward-", "reference-", "policy-rank")):
                ran[a["Name"].rsplit("-", 1)[0]] = a["Address"]["NodeID"]
        run.join(0.5)
    proc = done["proc"]
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert f"policy [STRICT_PACK] on {ids['node_a'][:8]}" in proc.stdout
    assert set(ran) == {"rollout-0", "reward", "reference", "policy-rank0"}
    assert ran["policy-rank0"] == ids["node_a"] and ran["rollout-0"] == ids["node_b"]
    assert len(set(ran.values())) > 1
