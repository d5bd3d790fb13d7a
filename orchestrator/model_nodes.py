"""Models on every node: the driver builds or converts on its own node, and the actors are told the
path in its cache (every actor gets the driver's ``TETHER_CACHE``, ``orchestrator/runtime.py``).
:func:`place_on_nodes` then checks that path on every other alive Ray node (a zero-CPU task pinned to
the node compares each file's size and SHA-256) and, where it is missing or differs, writes it there
from the Ray object store (to a temporary folder beside it, checked, then renamed). The object store,
rather than a build on each node, because the driver's build is then the one copy every actor loads
(no drift between nodes' library versions) and no node needs the GGUF file or storage access; rather
than storage, because ``storage`` may be null on a shared file system and a model is read-only input.
Nodes that join after the run started do not get it (the actors of a run are placed at its start).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from orchestrator.models import default_cache_dir
from orchestrator.runtime import wait
from orchestrator.storage import manifest, sha256

log = logging.getLogger("tether")


def _differs(folder: str, files: dict) -> bool:
    """Whether ``folder`` on this node lacks one of ``files`` (``{rel: [size, sha256]}``) or holds another."""
    base = Path(folder)
    return any(not (base / rel).is_file() or (base / rel).stat().st_size != size or sha256(base / rel) != digest
               for rel, (size, digest) in files.items())


def write_model_folder(folder: str, files: dict, data: dict) -> bool:
    """Write a model folder on this node from ``data`` (``{rel: bytes}``): into a temporary folder
    beside ``folder``, checked against ``files``, then renamed into place. Returns whether it wrote."""
    if not _differs(folder, files):
        return False
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
    try:
        for rel, blob in data.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(blob)
        if _differs(str(tmp), files):
            raise OSError(f"{folder}: the copy written on this node does not match the driver's files")
        if target.exists():  # an incomplete or other copy: replaced
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def place_on_nodes(path: str, timeout_s: float) -> list[str]:
    """Make a model folder that this driver built or converted (under ``<cache>/models``) present at the
    same path on every other alive Ray node; returns the ids of the nodes it was copied to."""
    folder = Path(path).resolve()
    if (default_cache_dir() / "models").resolve() not in folder.parents:
        return []  # a user's folder (model.path): it must be on every node already, as its documentation says
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = None if ray.util.client.ray.is_connected() else ray.get_runtime_context().get_node_id()  # ray://: none
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != here]
    if not nodes:
        return []
    files = manifest(folder)
    pin = [{"scheduling_strategy": NodeAffinitySchedulingStrategy(n, soft=False)} for n in nodes]
    check = ray.remote(num_cpus=0)(_differs)
    differs = wait([check.options(**p).remote(str(folder), files) for p in pin],
                   [f"model check on node {n[:8]}" for n in nodes], timeout_s)
    need = [(n, p) for n, p, d in zip(nodes, pin, differs) if d]
    if need:
        data = ray.put({rel: (folder / rel).read_bytes() for rel in files})
        write = ray.remote(num_cpus=0)(write_model_folder)
        wait([write.options(**p).remote(str(folder), files, data) for _, p in need],
             [f"model copy to node {n[:8]}" for n, _ in need], timeout_s)
    log.info("model %s: on %d other node(s), copied to %d", folder.name, len(nodes), len(need))
    return [n for n, _ in need]
