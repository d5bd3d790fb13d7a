"""Placement: bundles per role, colocation, trainer groups packed, fail-fast checks.

The layout checks run on node resource lists (what ``ray.nodes()`` reports); the rest on a real
local Ray. Multi-node behaviour on a simulated cluster is in ``test_multinode.py``.
"""

from __future__ import annotations

import pytest
import ray

from orchestrator.validation import validate
from orchestrator.errors import ConfigError, ResourceError
from orchestrator.placement import Placement, RoleSpec, check_fits, check_layout, plan_groups, rlhf_roles
from tests.conftest import compose_config

NODES = [{"CPU": 4.0, "GPU": 1.0, "trainer_node": 1.0}, {"CPU": 4.0, "GPU": 1.0}, {"CPU": 2.0, "fast_disk": 1.0}]


def test_check_fits_names_roles_and_totals():
    roles = [RoleSpec("rollout", 2, 1.0, 0), RoleSpec("policy", 2, 0.5, 1)]
    check_fits(roles, {"CPU": 3.0, "GPU": 2.0})
    with pytest.raises(ResourceError, match=r"needs 3 CPU \(rollout 2, policy 1\) but the cluster has 2"):
        check_fits(roles, {"CPU": 2.0, "GPU": 2.0})
    with pytest.raises(ResourceError, match=r"needs 2 GPU \(policy 2\) but the cluster has 0.*trainer.num_gpus"):
        check_fits(roles, {"CPU": 8.0})
    pinned = [RoleSpec("policy", 2, 0.5, 0, {"trainer_node": 1})]
    with pytest.raises(ResourceError, match=r"needs 2 trainer_node .* has 1; lower cluster.role_resources.policy"):
        check_fits(pinned, {"CPU": 8.0, "trainer_node": 1.0})


def test_trainer_groups_are_packed_and_the_rest_follow_the_strategy():
    roles = [RoleSpec("rollout", 2, 1, 0), RoleSpec("reward", 1, 0.5, 0), RoleSpec("reference", 1, 0.5, 0),
             RoleSpec("policy", 2, 1, 0), RoleSpec("critic", 3, 2, 0)]
    plans = plan_groups(roles, "SPREAD", [["reference", "reward"]], NODES)
    # one group per trainer role first: 2 x 1 CPU fit one node, 3 x 2 CPUs do not
    assert [(p.roles, p.strategy) for p in plans] == [
        (["policy"], "STRICT_PACK"), (["critic"], "PACK"), (["reference", "reward", "rollout"], "SPREAD")]
    assert plans[2].bundles == [{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0}]
    assert plans[2].members[("reference", 0)] == plans[2].members[("reward", 0)] == 0
    # a colocated group holding a trainer role is placed like a trainer group
    plans = plan_groups(roles[:2] + roles[3:], "STRICT_SPREAD", [["policy", "critic"]], NODES)
    assert [(p.roles, p.strategy, len(p.bundles)) for p in plans] == [
        (["policy", "critic"], "PACK", 3), (["rollout", "reward"], "STRICT_SPREAD", 3)]
    assert plans[0].bundles[:2] == [{"CPU": 3.0}, {"CPU": 3.0}] and plans[0].labels[0] == "policy+critic rank"
    check_layout(plans, NODES)


@pytest.mark.parametrize("roles,strategy,expected", [
    ([RoleSpec("policy", 1, 1, 0, {"trainer_node": 2})], "PACK",
     "placement: policy rank bundle {CPU: 1, trainer_node: 2} fits no node (the most trainer_node on one node "
     "is 1; set by cluster.role_resources.policy)"),
    ([RoleSpec("policy", 1, 1, 0, {"big_node": 1})], "PACK",
     "placement: policy rank bundle {CPU: 1, big_node: 1} fits no node (no node has resource 'big_node'; "
     "set by cluster.role_resources.policy)"),
    ([RoleSpec("policy", 2, 1, 2)], "PACK",
     "placement: policy rank bundle {CPU: 1, GPU: 2} fits no node (the most GPU on one node is 1; "
     "set by trainer.num_gpus)"),
    ([RoleSpec("rollout", 1, 1, 1, {"fast_disk": 1})], "PACK",
     "placement: rollout bundle {CPU: 1, GPU: 1, fast_disk: 1} fits no node (no single node has all of them)"),
    ([RoleSpec("reference", 1, 3, 0), RoleSpec("reward", 1, 2, 0)], "PACK",
     "placement: reference+reward bundle {CPU: 5} fits no node (the most CPU on one node is 4; "
     "set by reference.num_cpus / reward.num_cpus)"),
    ([RoleSpec("rollout", 3, 0.5, 0), RoleSpec("reward", 1, 0.5, 0)], "STRICT_SPREAD",
     "STRICT_SPREAD needs a node per bundle: 4 bundles (reward 1, rollout 3) but the cluster has 3 alive node(s)"),
    ([RoleSpec("rollout", 3, 2, 0)], "STRICT_PACK",
     "STRICT_PACK puts rollout on one node, needing {CPU: 6}, but the most CPU on one node is 4"),
])
def test_impossible_layout_names_role_and_what_is_missing(roles, strategy, expected):
    colocate = [["reference", "reward"]]
    with pytest.raises(ResourceError) as err:
        check_layout(plan_groups(roles, strategy, colocate, NODES), NODES)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_role_resources_from_config():
    cfg = compose_config("+cluster.role_resources.policy={trainer_node: 1}", "+cluster.role_resources.rollout.gen=0.5")
    validate(cfg)
    roles = {r.name: r for r in rlhf_roles(cfg)}
    assert roles["policy"].bundle() == {"CPU": 0.25, "trainer_node": 1.0} and roles["policy"].together
    assert roles["critic"].bundle() == {"CPU": 0.25} and roles["critic"].together
    assert roles["rollout"].resources == {"gen": 0.5} and not roles["rollout"].together
    for bad, words in [("{GPU: 1}", "num_gpus"), ("{node_a: 1.5}", "whole number"), ("{node_a: 0}", "> 0")]:
        with pytest.raises(ConfigError, match=f"cluster.role_resources.reward.*{words}"):
            validate(compose_config(f"+cluster.role_resources.reward={bad}"))


def test_colocated_roles_share_bundles(ray_local):
    roles = [RoleSpec("reference", 1, 0.25, 0), RoleSpec("reward", 1, 0.25, 0),
             RoleSpec("policy", 2, 0.25, 0), RoleSpec("critic", 2, 0.25, 0), RoleSpec("rollout", 1, 0.5, 0)]
    placement = Placement(roles, "PACK", 30, colocate=[["reference", "reward"], ["policy", "critic"]])
    tables = [ray.util.placement_group_table(pg) for pg in placement.pgs]
    assert [t["strategy"] for t in tables] == ["STRICT_PACK", "PACK"]
    assert [[b["CPU"] for b in t["bundles"].values()] for t in tables] == [[0.5, 0.5], [0.5, 0.5]]
    assert placement.index[("reference", 0)] == placement.index[("reward", 0)]
    assert placement.index[("policy", 1)] == placement.index[("critic", 1)] != placement.index[("policy", 0)]

    @ray.remote
    class Probe:
        def where(self):
            return ray.get_runtime_context().get_placement_group_id()

    a = Probe.options(**placement.options("reference")).remote()
    b = Probe.options(**placement.options("reward")).remote()
    assert ray.get(a.where.remote()) == ray.get(b.where.remote()) == placement.pgs[1].id.hex()
    node = ray.get_runtime_context().get_node_id()
    assert placement.node_ids("policy") == [node, node]
    placement.remove()


def test_strategy_the_nodes_cannot_meet_fails_before_asking_ray(ray_local):
    # fits the CPU total, but STRICT_SPREAD needs 2 nodes and there is one
    before = len(ray.util.placement_group_table())
    roles = [RoleSpec("rollout", 1, 0.5, 0), RoleSpec("reward", 1, 0.5, 0)]
    with pytest.raises(ResourceError, match="STRICT_SPREAD needs a node per bundle: 2 bundles .* 1 alive node"):
        Placement(roles, "STRICT_SPREAD", 600)
    assert len(ray.util.placement_group_table()) == before  # no placement group was asked for


def test_placement_not_ready_in_time_names_the_roles(ray_local):
    # every check passes on the node's totals, but another actor holds the CPUs now
    @ray.remote(num_cpus=1.75)
    class Holder:
        def ready(self):
            return True

    holder = Holder.remote()
    ray.get(holder.ready.remote())
    roles = [RoleSpec("rollout", 1, 0.5, 0), RoleSpec("policy", 1, 0.5, 0)]
    with pytest.raises(ResourceError, match=r"not ready after 2s.*rollout: 1 x \{CPU: 0.5\}"):
        Placement(roles, "PACK", 2)
    ray.kill(holder)
