"""Config -> Ray placement groups and per-actor options.

Each actor gets a bundle ``{"CPU": num_cpus, "GPU": num_gpus, **custom}``, where ``custom`` is the
role's ``cluster.role_resources`` entry (Ray resources a node advertises, for example
``ray start --resources='{"trainer_node": 8}'``; asking for one pins the role to such nodes).
Fractional CPUs are fine, so every role fits on one 2-core machine.

Layout:

- The ranks of each trainer group (``policy``, ``critic`` for PPO; any role in ``TRAINER_ROLES``
  or marked ``together``) get a placement group of their own, ``STRICT_PACK`` when one node's resources can hold all of its ranks, else ``PACK``
  (as few nodes as the ranks need). Ranks that all-reduce every step stay on one node whatever
  ``cluster.placement_strategy`` says.
- Every other role (rollout, reward, reference) goes into one placement group with
  ``cluster.placement_strategy`` (PACK | SPREAD | STRICT_PACK | STRICT_SPREAD).
- Roles named together in ``cluster.colocate`` share bundles: actor ``i`` of each role of the
  group sits in bundle ``i``, which holds the sum of their resources. A colocated group with a
  trainer role in it is placed like a trainer group.

Before asking Ray, the request is checked against the alive nodes (``ray.nodes()``), in this
order: a resource no node has at all; the totals of each resource; each bundle against every node
(a bundle no single node can hold fails at once, naming the role and the resource at fault); and
the strategy (STRICT_SPREAD needs a node per bundle, STRICT_PACK one node holding them all).
These checks use the nodes' total resources, not what is free right now: a
placement group that is still not ready after ``cluster.placement_timeout_s`` (resources held by
other jobs, or bundles that fit one by one but not all together) is removed with an error naming
the roles it was for, so a run never waits forever for resources that will not come.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import ray
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from orchestrator.errors import ResourceError

EPS = 1e-9
# where each role's num_cpus / num_gpus live in the config (for hints in error messages)
CONFIG_SECTION = {"rollout": "rollout", "reward": "reward", "reference": "reference", "policy": "trainer",
                  "critic": "trainer", "reward_model": "trainer", "feedback": "cai.feedback"}
TRAINER_ROLES = ("policy", "critic", "reward_model")  # roles whose ranks are kept together by default


@dataclass
class RoleSpec:
    """``count`` actors of one role, each asking for ``num_cpus`` / ``num_gpus`` and the custom
    Ray ``resources``; ``together`` marks trainer ranks, placed as one packed group (default: the
    role is one of ``TRAINER_ROLES``)."""

    name: str
    count: int
    num_cpus: float
    num_gpus: float
    resources: dict = field(default_factory=dict)
    together: bool | None = None

    def __post_init__(self):
        if self.together is None:
            self.together = self.name in TRAINER_ROLES

    def bundle(self) -> dict:
        """The resources of one actor of this role."""
        b = {"CPU": float(self.num_cpus)}
        if self.num_gpus:
            b["GPU"] = float(self.num_gpus)
        b.update({k: float(v) for k, v in self.resources.items()})
        return b


def role_specs(cfg, names: list[str]) -> list[RoleSpec]:
    """The placement of the named roles, from config: each role's count (``rollout.num_workers``,
    ``trainer.num_ranks`` for trainer roles, else one), CPUs / GPUs (its section in ``CONFIG_SECTION``)
    and custom resources (``cluster.role_resources.<role>``)."""
    from omegaconf import OmegaConf

    extra = cfg.cluster.get("role_resources") or {}
    specs = []
    for name in names:
        section = OmegaConf.select(cfg, CONFIG_SECTION[name])
        count = cfg.rollout.num_workers if name == "rollout" else cfg.trainer.num_ranks if name in TRAINER_ROLES else 1
        specs.append(RoleSpec(name, count, section.num_cpus, section.num_gpus, dict(extra.get(name) or {})))
    return specs


def rlhf_roles(cfg) -> list[RoleSpec]:
    """The roles an RLHF run needs: rollout, reward, reference (when a KL term reads it), policy (+ critic
    for PPO)."""
    from orchestrator.algorithms.passes import uses_reference

    a = cfg.algorithm
    return role_specs(cfg, ["rollout", "reward"] + (["reference"] if uses_reference(a) else []) + ["policy"]
                      + (["critic"] if a.estimator == "gae" else []))


def _hint(resource: str, roles: list[str]) -> str:
    """The config field(s) that ask for ``resource`` in these roles."""
    if resource in ("CPU", "GPU"):
        return " / ".join(dict.fromkeys(f"{CONFIG_SECTION.get(r, r)}.num_{resource.lower()}s" for r in roles))
    return " / ".join(f"cluster.role_resources.{r}" for r in roles)


def check_fits(roles: list[RoleSpec], available: dict) -> None:
    """Raise ResourceError if the roles together ask for more of a resource than the cluster has."""
    names = dict.fromkeys(k for r in roles for k in r.bundle())
    for resource in names:
        need = {r.name: r.count * r.bundle().get(resource, 0.0) for r in roles}
        total = sum(need.values())
        have = float(available.get(resource, 0.0))
        if total > have + EPS:
            parts = ", ".join(f"{k} {v:g}" for k, v in need.items() if v)
            raise ResourceError(f"the run needs {total:g} {resource} ({parts}) but the cluster has {have:g}; "
                                f"lower {_hint(resource, [k for k, v in need.items() if v])} or add nodes")


def _colocated(roles: list[RoleSpec], colocate) -> list[list[RoleSpec]]:
    """Roles grouped by ``cluster.colocate`` (each role not named there is its own group)."""
    by_name = {r.name: r for r in roles}
    groups, seen = [], set()
    for names in colocate or []:
        group = [by_name[n] for n in names if n in by_name and n not in seen]
        seen.update(r.name for r in group)
        if group:
            groups.append(group)
    return groups + [[r] for r in roles if r.name not in seen]


@dataclass
class GroupPlan:
    """One placement group to create: its strategy, bundles, and which actors sit in which bundle."""

    roles: list[str]
    strategy: str
    bundles: list[dict] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # per bundle, e.g. "policy rank" or "reference+reward"
    members: dict = field(default_factory=dict)  # (role, index) -> bundle index
    asks: dict = field(default_factory=dict)  # role -> the resources one of its actors asks for

    def add(self, group: list[RoleSpec]) -> None:
        """Bundles of a colocated role group (actor ``i`` of each role shares bundle ``i``)."""
        label = "+".join(r.name for r in group) + (" rank" if any(r.together for r in group) else "")
        self.asks.update({r.name: r.bundle() for r in group})
        for i in range(max(r.count for r in group)):
            bundle: dict = {}
            for role in group:
                if i < role.count:
                    self.members[(role.name, i)] = len(self.bundles)
                    for k, v in role.bundle().items():
                        bundle[k] = bundle.get(k, 0.0) + v
            self.bundles.append(bundle)
            self.labels.append(label)
        self.roles += [r.name for r in group]

    def total(self) -> dict:
        """All bundles summed."""
        return sum_resources(self.bundles)


def sum_resources(dicts: list[dict]) -> dict:
    """Resource dicts added up key by key."""
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _fits(need: dict, node: dict) -> bool:
    return all(node.get(k, 0.0) + EPS >= v for k, v in need.items())


def fmt(resources: dict) -> str:
    """``{CPU: 1, trainer_node: 1}``."""
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in resources.items()) + "}"


def _fault(need: dict, nodes: list[dict]) -> tuple[str | None, str]:
    """Why no node in ``nodes`` holds ``need``: (the resource at fault or None, the reason)."""
    for k in need:
        if not any(k in n for n in nodes):
            return k, f"no node has resource {k!r}"
    for k, v in need.items():
        most = max((n.get(k, 0.0) for n in nodes), default=0.0)
        if most + EPS < v:
            return k, f"the most {k} on one node is {most:g}"
    return None, "no single node has all of them"


def plan_groups(roles: list[RoleSpec], strategy: str, colocate, nodes: list[dict]) -> list[GroupPlan]:
    """The placement groups for ``roles``: one per trainer group (packed), one for the rest."""
    plans, rest = [], GroupPlan([], strategy)
    for group in _colocated(roles, colocate):
        if any(r.together for r in group):
            plan = GroupPlan([], "PACK")
            plan.add(group)
            if any(_fits(plan.total(), n) for n in nodes):
                plan.strategy = "STRICT_PACK"
            plans.append(plan)
        else:
            rest.add(group)
    return plans + ([rest] if rest.bundles else [])


def check_resources_exist(plans: list[GroupPlan], nodes: list[dict]) -> None:
    """ResourceError for a bundle asking for a resource that no node has at all."""
    for plan in plans:
        for bundle, label in zip(plan.bundles, plan.labels):
            fault, why = _fault(bundle, nodes)
            if fault is not None and not any(fault in n for n in nodes):
                _raise_no_node(plan, bundle, label, fault, why)


def _raise_no_node(plan: GroupPlan, bundle: dict, label: str, fault: str | None, why: str) -> None:
    if fault is not None:
        why += f"; set by {_hint(fault, [r for r in label.split()[0].split('+') if plan.asks[r].get(fault)])}"
    raise ResourceError(f"placement: {label} bundle {fmt(bundle)} fits no node ({why})")


def check_layout(plans: list[GroupPlan], nodes: list[dict]) -> None:
    """ResourceError at once for a bundle no node can hold, or a strategy the nodes cannot meet."""
    for plan in plans:
        for bundle, label in zip(plan.bundles, plan.labels):
            if not any(_fits(bundle, n) for n in nodes):
                _raise_no_node(plan, bundle, label, *_fault(bundle, nodes))
        if plan.strategy == "STRICT_SPREAD" and len(plan.bundles) > len(nodes):
            counts = ", ".join(f"{r} {plan.labels.count(r)}" for r in dict.fromkeys(plan.labels))
            raise ResourceError(f"placement: cluster.placement_strategy=STRICT_SPREAD needs a node per bundle: "
                                f"{len(plan.bundles)} bundles ({counts}) but the cluster has {len(nodes)} alive "
                                f"node(s); use SPREAD, colocate roles (cluster.colocate) or add nodes")
        if plan.strategy == "STRICT_PACK" and not any(_fits(plan.total(), n) for n in nodes):
            raise ResourceError(f"placement: cluster.placement_strategy=STRICT_PACK puts {', '.join(plan.roles)} on "
                                f"one node, needing {fmt(plan.total())}, but {_fault(plan.total(), nodes)[1]}; "
                                f"use PACK or lower the roles' resources")


def alive_nodes() -> list[dict]:
    """Total resources of each alive node of the connected cluster."""
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


class Placement:
    """Placement groups for a run's roles; ``options(role, i)`` places actor ``i`` of ``role``.

    ``plans[k]`` / ``pgs[k]`` are the k-th group's layout and Ray placement group. Trainer groups
    are created first, so Ray usually reserves their node before the rest; the groups are still
    separate requests, so a packed trainer group can take a node that a STRICT_SPREAD rest then
    lacks (that surfaces as the timeout error). The checks and layout are in the module docstring.
    """

    def __init__(self, roles: list[RoleSpec], strategy: str, timeout_s: float, colocate=None):
        nodes = alive_nodes()
        totals = sum_resources(nodes)
        self.roles = roles
        self.plans = plan_groups(roles, strategy, colocate, nodes)
        check_resources_exist(self.plans, nodes)
        check_fits(roles, totals)
        check_layout(self.plans, nodes)
        self.index: dict[tuple[str, int], tuple[int, int]] = {
            key: (k, b) for k, plan in enumerate(self.plans) for key, b in plan.members.items()}
        self.pgs = [placement_group(plan.bundles, strategy=plan.strategy) for plan in self.plans]
        ready = [pg.ready() for pg in self.pgs]
        done, _ = ray.wait(ready, num_returns=len(ready), timeout=timeout_s) if ready else ([], [])
        if len(done) < len(ready):
            late = [plan for plan, ref in zip(self.plans, ready) if ref not in done]
            self.remove()
            wanted = "; ".join(f"{r.name}: {r.count} x {fmt(r.bundle())}" for r in roles
                               if any(r.name in p.roles for p in late))
            strategies = ", ".join(f"{'+'.join(p.roles)} {p.strategy}" for p in late)
            free = ray.available_resources()
            free = {k: free.get(k, 0.0) for r in roles for k in r.bundle()}
            raise ResourceError(f"placement ({strategies}) not ready after {timeout_s:g}s: no node layout fits "
                                f"[{wanted}] with what is free now (cluster.placement_timeout_s); free in the "
                                f"cluster: {fmt(free)}")
        ray.get(ready)

    def options(self, role: str, index: int = 0) -> dict:
        """Actor options putting actor ``index`` of ``role`` in its bundle."""
        spec = next(r for r in self.roles if r.name == role)
        k, bundle = self.index[(role, index)]
        opts = {
            "num_cpus": spec.num_cpus,
            "num_gpus": spec.num_gpus,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.pgs[k], placement_group_bundle_index=bundle),
        }
        if spec.resources:
            opts["resources"] = dict(spec.resources)
        return opts

    def node_ids(self, role: str) -> list[str]:
        """The node id of each actor of ``role`` (where its bundle was placed)."""
        spec = next(r for r in self.roles if r.name == role)
        out = []
        for i in range(spec.count):
            k, bundle = self.index[(role, i)]
            out.append(placement_group_table(self.pgs[k])["bundles_to_node_id"][bundle])
        return out

    def describe(self) -> str:
        """One line: each role's nodes (short ids) and its group's strategy."""
        parts = []
        for plan in self.plans:
            for name in dict.fromkeys(plan.roles):
                nodes = ",".join(n[:8] for n in self.node_ids(name))
                parts.append(f"{name} [{plan.strategy}] on {nodes}")
        return "; ".join(parts)

    def remove(self) -> None:
        """Release the placement groups."""
        for pg in self.pgs:
            remove_placement_group(pg)
