"""No shared disk but the storage: a simulated Ray cluster (``ray.cluster_utils.Cluster``: a head and
two worker nodes, custom resources ``head``, ``node_a``, ``node_b``) whose nodes each get their own
scratch folder (``TETHER_SCRATCH``, set per node through the raylet's environment). The trainer ranks
run on node_a, the reference on node_b, the driver on the head; only ``storage`` is shared. The run
completes, its checkpoints and ``final/`` reach storage through node_a's disk, a second run resumes
from storage, and the tiny model the driver built reaches the other nodes through the object store."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import ray

from orchestrator import storage
from orchestrator.runtime import actor_env
from tests.conftest import run_cli

pytestmark = pytest.mark.slow
NODES = ("head", "node_a", "node_b")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The simulated cluster (this process connected as a driver); yields (address, {name: node id},
    {name: that node's scratch folder})."""
    from ray.cluster_utils import Cluster

    root = tmp_path_factory.mktemp("scratch")
    scratch = {name: root / name for name in NODES}
    sim = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"head": 1}, "include_dashboard": False,
        "env_vars": {storage.SCRATCH_ENV: str(scratch["head"])}})
    for name in NODES[1:]:
        sim.add_node(num_cpus=1, resources={name: 1}, env_vars={storage.SCRATCH_ENV: str(scratch[name])})
    sim.wait_for_nodes()
    ray.init(address=sim.address, runtime_env={"env_vars": actor_env()}, logging_level="WARNING")
    ids = {name: n["NodeID"] for n in ray.nodes() for name in NODES if name in n["Resources"]}
    assert len(ids) == 3
    yield sim.address, ids, scratch
    ray.shutdown()
    sim.shutdown()


def _on(node_id: str) -> dict:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False)}


def test_each_node_has_its_own_scratch_folder(cluster):
    _, ids, scratch = cluster
    where = ray.remote(num_cpus=0)(lambda: str(storage.scratch_root()))
    assert {n: ray.get(where.options(**_on(ids[n])).remote()) for n in NODES} == {n: str(scratch[n]) for n in NODES}


def test_a_model_folder_reaches_a_node_from_the_object_store(cluster, tmp_path):
    """The node-side half of ``place_on_nodes``: the folder is gone from disk, only the object store
    holds its bytes, and the task on node_a writes it back whole (checked against the driver's hashes)."""
    from orchestrator.config import TinyModelConfig
    from orchestrator.model_nodes import write_model_folder
    from orchestrator.models import build_tiny_model

    _, ids, _ = cluster
    folder = build_tiny_model(asdict(TinyModelConfig()), cache_dir=tmp_path)
    files = storage.manifest(folder)
    data = ray.put({rel: (folder / rel).read_bytes() for rel in files})
    shutil.rmtree(folder)
    write = ray.remote(num_cpus=0)(write_model_folder)
    assert ray.get(write.options(**_on(ids["node_a"])).remote(str(folder), files, data), timeout=60) is True
    assert storage.manifest(folder) == files
    assert ray.get(write.options(**_on(ids["node_b"])).remote(str(folder), files, data), timeout=60) is False  # there


def test_dpo_run_with_ranks_off_the_driver_node_and_only_storage_shared(cluster, tmp_path, monkeypatch):
    address, ids, scratch = cluster
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "tether" / "torch_extensions"))
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "driver-cache"))  # the driver builds the tiny model here
    shared, out = tmp_path / "shared", tmp_path / "driver" / "run"
    common = [f"cluster.address={address}", "pipeline=dpo", "algorithm=dpo", "trainer.num_ranks=2",
              "+cluster.role_resources.policy={node_a: 0.5}", "+cluster.role_resources.reference={node_b: 1}",
              "trainer.save_steps=2", f"storage={shared}", f"output_dir={out}", "logger.wandb=false",
              "logger.tensorboard=false", "logger.progress_bar=false"]
    proc = run_cli(*common, "trainer.max_steps=2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = proc.stdout + proc.stderr
    assert f"policy [STRICT_PACK] on {ids['node_a'][:8]}" in log
    assert "model tiny-" in log and "on 2 other node(s)" in log  # checked on node_a and node_b
    marker = json.loads((shared / "checkpoints" / "step_000002" / "COMPLETE").read_text())
    assert {"policy/ds/mp_rank_00_model_states.pt", "policy/rng_rank0.safetensors",
            "policy/rng_rank1.safetensors"} <= set(marker["files"])
    assert (shared / "final" / "model.safetensors").is_file() and (shared / "run.json").is_file()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["config.yaml", "metrics.jsonl"]
    # the ranks saved on node_a's own disk (and cleaned up); no other node's scratch was touched
    assert scratch["node_a"].is_dir() and list(scratch["node_a"].iterdir()) == []
    assert not scratch["head"].exists() and not scratch["node_b"].exists()

    proc = run_cli(*common, "trainer.max_steps=3", "resume=auto")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"resumed from {shared / 'checkpoints' / 'step_000002'} (step 2)" in proc.stdout + proc.stderr
    assert [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert not scratch["head"].exists() and not scratch["node_b"].exists()
