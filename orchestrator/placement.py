"""Config -> Ray placement group and per-actor options.

Each actor gets its own bundle ``{"CPU": num_cpus, "GPU": num_gpus}`` (fractional CPUs are fine,
so every role fits on one 2-core machine). Before asking Ray, the request is checked against
what the cluster has, and a placement group that does not become ready within
``cluster.placement_timeout_s`` is removed with an error naming the roles it was for: a run never
waits forever for resources that will not come.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from orchestrator.errors import ResourceError


@dataclass
class RoleSpec:
    """``count`` actors of one role, each asking for ``num_cpus`` / ``num_gpus``."""

    name: str
    count: int
    num_cpus: float
    num_gpus: float

    def bundle(self) -> dict:
        """The resources of one actor of this role."""
        b = {"CPU": float(self.num_cpus)}
        if self.num_gpus:
            b["GPU"] = float(self.num_gpus)
        return b


def rlhf_roles(cfg) -> list[RoleSpec]:
    """The roles an RLHF run needs, from config."""
    roles = [
        RoleSpec("rollout", cfg.rollout.num_workers, cfg.rollout.num_cpus, cfg.rollout.num_gpus),
        RoleSpec("reward", 1, cfg.reward.num_cpus, cfg.reward.num_gpus),
        RoleSpec("reference", 1, cfg.reference.num_cpus, cfg.reference.num_gpus),
        RoleSpec("policy", cfg.trainer.num_ranks, cfg.trainer.num_cpus, cfg.trainer.num_gpus),
    ]
    if cfg.algorithm.estimator == "gae":
        roles.append(RoleSpec("critic", cfg.trainer.num_ranks, cfg.trainer.num_cpus, cfg.trainer.num_gpus))
    return roles


def check_fits(roles: list[RoleSpec], available: dict) -> None:
    """Raise ResourceError if the roles together ask for more than the cluster has."""
    for resource in ("CPU", "GPU"):
        need = {r.name: r.count * r.bundle().get(resource, 0.0) for r in roles}
        total = sum(need.values())
        have = float(available.get(resource, 0.0))
        if total > have + 1e-9:
            parts = ", ".join(f"{k} {v:g}" for k, v in need.items() if v)
            raise ResourceError(f"the run needs {total:g} {resource} ({parts}) but the cluster has {have:g}; "
                                f"lower the per-role num_{resource.lower()}s or add nodes")


def _groups(roles: list[RoleSpec], colocate) -> list[list[RoleSpec]]:
    """Roles grouped by ``cluster.colocate`` (each role not named there is its own group)."""
    by_name = {r.name: r for r in roles}
    groups, seen = [], set()
    for names in colocate or []:
        group = [by_name[n] for n in names if n in by_name and n not in seen]
        seen.update(r.name for r in group)
        if group:
            groups.append(group)
    return groups + [[r] for r in roles if r.name not in seen]


class Placement:
    """One placement group; ``options(role, i)`` places actor ``i`` of ``role`` in its bundle.

    Each actor has a bundle of its own, except for roles colocated by ``cluster.colocate``
    (for example ``[[reference, reward]]`` or ``[[policy, critic]]``): actor ``i`` of every role
    in such a group shares bundle ``i``, which holds the sum of their resources.
    """

    def __init__(self, roles: list[RoleSpec], strategy: str, timeout_s: float, colocate=None):
        check_fits(roles, ray.cluster_resources())
        self.roles = roles
        self.index: dict[tuple[str, int], int] = {}
        bundles: list[dict] = []
        for group in _groups(roles, colocate):
            for i in range(max(r.count for r in group)):
                bundle: dict = {}
                for role in group:
                    if i < role.count:
                        self.index[(role.name, i)] = len(bundles)
                        for k, v in role.bundle().items():
                            bundle[k] = bundle.get(k, 0.0) + v
                bundles.append(bundle)
        self.pg = placement_group(bundles, strategy=strategy)
        try:
            ray.get(self.pg.ready(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(self.pg)
            wanted = "; ".join(f"{r.name}: {r.count} x {r.bundle()}" for r in roles)
            raise ResourceError(f"placement ({strategy}) not ready after {timeout_s:g}s: no node layout fits "
                                f"[{wanted}]; cluster has {ray.available_resources()}") from None

    def options(self, role: str, index: int = 0) -> dict:
        """Actor options putting actor ``index`` of ``role`` in its bundle."""
        spec = next(r for r in self.roles if r.name == role)
        return {
            "num_cpus": spec.num_cpus,
            "num_gpus": spec.num_gpus,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.pg, placement_group_bundle_index=self.index[(role, index)]),
        }

    def remove(self) -> None:
        """Release the placement group."""
        remove_placement_group(self.pg)
