"""The cluster files parse and hold what their tools need: the `ray up` config passes Ray's own
config preparation and schema check, the KubeRay RayJob has the fields the operator reads and an
entrypoint whose Hydra overrides compose with this project's config."""

from __future__ import annotations

import copy
import shlex

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.conftest import ROOT, compose_config

CLUSTER = ROOT / "cluster"


def _ray_up() -> dict:
    return yaml.safe_load((CLUSTER / "ray-up-gpu.yaml").read_text())


def _rayjob_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / "kuberay-rayjob.yaml").read_text()) if d]


def test_ray_up_config_passes_ray_validation():
    """`ray up` would accept it: defaults filled in by Ray, then Ray's JSON schema and checks."""
    config = _ray_up()
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert config["head_node_type"] in config["available_node_types"]
    assert ray.__version__ in config["docker"]["image"]
    assert config["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p"))
    assert config["file_mounts"]["/home/ray/tether"] == "."
    assert any("tether[gpu]" in cmd for cmd in config["setup_commands"])
    for excluded in (".venv", ".git", "outputs"):
        assert excluded in config["rsync_exclude"]


def test_ray_up_validation_rejects_a_broken_copy():
    """The check above is real: a head type that is not defined, or a missing provider, fails."""
    broken = _ray_up()
    broken["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(broken))
    no_provider = _ray_up()
    del no_provider["provider"]
    with pytest.raises(Exception):
        validate_config(prepare_config(no_provider))


def test_ray_up_head_keeps_dashboard_local_and_uses_token_auth():
    """The head's dashboard / Jobs API binds to 127.0.0.1; every node starts with token auth."""
    config = _ray_up()
    head = " ".join(config["head_start_ray_commands"])
    worker = " ".join(config["worker_start_ray_commands"])
    assert "--head" in head and "--dashboard-host=127.0.0.1" in head and "--dashboard-port=8265" in head
    assert "--address=$RAY_HEAD_IP:6379" in worker
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in worker
    assert "/home/ray/.ray/auth_token" in config["file_mounts"]


def test_kuberay_rayjob_has_required_fields():
    """apiVersion/kind/metadata, an entrypoint, a head group and GPU worker groups with images,
    volume mounts that name defined volumes, and the PVC they claim."""
    docs = _rayjob_docs()
    job = next(d for d in docs if d["kind"] == "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    assert job["metadata"]["name"]
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python -m orchestrator")
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    pods = [head["template"]["spec"]]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        container = group["template"]["spec"]["containers"][0]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        pods.append(group["template"]["spec"])
    claims = set()
    for pod in pods:
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            assert container["name"] and container["image"]
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, mount
                assert mount["mountPath"].startswith("/")
        claims |= {v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v}
    pvcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert claims and claims <= set(pvcs)
    assert all("ReadWriteMany" in pvcs[c]["spec"]["accessModes"] for c in claims)


def test_kuberay_entrypoint_overrides_compose():
    """The RayJob's Hydra overrides are valid for this project, and its output_dir is on the
    shared volume every pod mounts."""
    job = next(d for d in _rayjob_docs() if d["kind"] == "RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "orchestrator"]
    cfg = compose_config(*argv[3:])
    assert cfg.device == "cuda"
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    shared = [m["mountPath"] for m in worker["volumeMounts"] if m["name"] == "shared"]
    assert shared and cfg.output_dir.startswith(shared[0] + "/")
