"""Placement: bundles per role, colocation, fail-fast checks (real local Ray)."""

from __future__ import annotations

import pytest
import ray

from orchestrator.errors import ResourceError
from orchestrator.placement import Placement, RoleSpec, check_fits


def test_check_fits_names_roles_and_totals():
    roles = [RoleSpec("rollout", 2, 1.0, 0), RoleSpec("policy", 2, 0.5, 1)]
    check_fits(roles, {"CPU": 3.0, "GPU": 2.0})
    with pytest.raises(ResourceError, match=r"needs 3 CPU \(rollout 2, policy 1\) but the cluster has 2"):
        check_fits(roles, {"CPU": 2.0, "GPU": 2.0})
    with pytest.raises(ResourceError, match=r"needs 2 GPU \(policy 2\) but the cluster has 0"):
        check_fits(roles, {"CPU": 8.0})


def test_colocated_roles_share_bundles(ray_local):
    roles = [RoleSpec("reference", 1, 0.25, 0), RoleSpec("reward", 1, 0.25, 0),
             RoleSpec("policy", 2, 0.25, 0), RoleSpec("critic", 2, 0.25, 0), RoleSpec("rollout", 1, 0.5, 0)]
    placement = Placement(roles, "PACK", 30, colocate=[["reference", "reward"], ["policy", "critic"]])
    bundles = ray.util.placement_group_table(placement.pg)["bundles"]
    assert [b["CPU"] for b in bundles.values()] == [0.5, 0.5, 0.5, 0.5]
    assert placement.index[("reference", 0)] == placement.index[("reward", 0)]
    assert placement.index[("policy", 1)] == placement.index[("critic", 1)] != placement.index[("policy", 0)]

    @ray.remote
    class Probe:
        def where(self):
            return ray.get_runtime_context().get_placement_group_id()

    a = Probe.options(**placement.options("reference")).remote()
    b = Probe.options(**placement.options("reward")).remote()
    assert ray.get(a.where.remote()) == ray.get(b.where.remote()) == placement.pg.id.hex()
    placement.remove()


def test_unsatisfiable_layout_fails_fast(ray_local):
    # fits the CPU total, but STRICT_SPREAD needs 2 nodes and there is one
    roles = [RoleSpec("rollout", 1, 0.5, 0), RoleSpec("policy", 1, 0.5, 0)]
    with pytest.raises(ResourceError, match="not ready after 2s.*rollout"):
        Placement(roles, "STRICT_SPREAD", 2)
