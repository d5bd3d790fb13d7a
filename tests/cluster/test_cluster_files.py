"""The cluster files hold what their tools check, offline: the `ray up` config passes Ray's own
config preparation and schema check; the KubeRay RayJob passes KubeRay's CRD schema (vendored in
tests/cluster/data from KubeRay 1.7.0) with unknown fields rejected, as `kubectl apply` does by
default; both name the image that cluster/README.md's build command makes, from a build context
that .dockerignore keeps free of virtual environments and outputs; the nodes share storage; token
auth is on; the GPU pins agree with each other; the GPU check scripts parse."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.conftest import ROOT, compose_config

CLUSTER = ROOT / "cluster"
CRD_SCHEMA = ROOT / "tests" / "cluster" / "data" / "kuberay-v1.7.0-rayjob-openapi.json"
PLACEHOLDER_ORG = "YOUR_ORG"


def _ray_up() -> dict:
    return yaml.safe_load((CLUSTER / "ray-up-gpu.yaml").read_text())


def _k8s_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / "kuberay-rayjob.yaml").read_text()) if d]


def _rayjob() -> dict:
    return next(d for d in _k8s_docs() if d["kind"] == "RayJob")


def _ray_validate(config: dict) -> None:
    validate_config(prepare_config(copy.deepcopy(config)))


# ---- ray up ----------------------------------------------------------------------------------------
def test_ray_up_config_passes_ray_validation():
    """`ray up` would accept it: defaults filled in by Ray, then Ray's JSON schema and checks."""
    config = _ray_up()
    _ray_validate(config)
    assert config["head_node_type"] in config["available_node_types"]
    assert config["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p"))
    assert config["file_mounts"]["/home/ray/tether"] == "."
    for excluded in (".venv", ".git", "outputs"):
        assert excluded in config["rsync_exclude"]


@pytest.mark.parametrize("mutation", ["misspelled top-level key", "misspelled docker key", "misspelled node key",
                                      "unknown head type", "commands not a list"])
def test_ray_up_validation_rejects_a_broken_copy(mutation):
    """The check above is real: a misspelled field or a wrong type anywhere is refused."""
    broken = _ray_up()
    if mutation == "misspelled top-level key":
        broken["max_worker"] = broken.pop("max_workers")
    elif mutation == "misspelled docker key":
        broken["docker"]["run_option"] = broken["docker"].pop("run_options")
    elif mutation == "misspelled node key":
        node = broken["available_node_types"]["gpu_worker"]
        node["node_confg"] = node.pop("node_config")
    elif mutation == "unknown head type":
        broken["head_node_type"] = "no_such_type"
    else:
        broken["initialization_commands"] = "sudo mount /mnt/shared"
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        _ray_validate(broken)


def test_ray_up_nodes_share_storage():
    """Every node (head and workers) mounts the same NFS file system at /mnt/shared on the host,
    the container sees it at the same path, and the output_dir in the usage lines is on it: the
    driver (head) and the trainer ranks (GPU nodes) must see one output_dir."""
    config = _ray_up()
    text = (CLUSTER / "ray-up-gpu.yaml").read_text()
    init = " ".join(config["initialization_commands"])
    assert re.search(r"mount -t nfs4 .*:/ /mnt/shared\b", init), init
    assert "-v /mnt/shared:/mnt/shared" in config["docker"]["run_options"]
    outputs = re.findall(r"output_dir=(\S+)", text)
    assert outputs and all(o.startswith("/mnt/shared/") for o in outputs)
    assert "enough while one node trains" not in text


def test_ray_up_token_auth_local_dashboard_and_fixed_agent_ports():
    """Head: dashboard on 127.0.0.1; every node: token auth and the same fixed agent ports, which
    cluster/README.md lists in its port table."""
    config = _ray_up()
    head = " ".join(config["head_start_ray_commands"])
    worker = " ".join(config["worker_start_ray_commands"])
    assert "--head" in head and "--dashboard-host=127.0.0.1" in head and "--dashboard-port=8265" in head
    assert "--address=$RAY_HEAD_IP:6379" in worker
    for cmd in (head, worker):
        assert "RAY_AUTH_MODE=token" in cmd
        assert "--dashboard-agent-listen-port=52365" in cmd and "--dashboard-agent-grpc-port=52366" in cmd
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert "/home/ray/.ray/auth_token" in config["file_mounts"]
    readme = (CLUSTER / "README.md").read_text()
    for port in ("52365", "52366", "8076", "8077", "6379", "8265"):
        assert re.search(rf"^\| [^|]*\b{port}\b", readme, re.M), port


# ---- KubeRay ---------------------------------------------------------------------------------------
def _strict(schema):
    """The CRD schema with unknown fields refused wherever the CRD lists the fields, as the API server
    does under `kubectl apply`'s default strict field validation (a CRD schema says nothing itself)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def crd_validator():
    schema = json.loads(CRD_SCHEMA.read_text())
    assert "ray-project/kuberay" in schema["$comment"] and "v1.7.0" in schema["$comment"]
    return jsonschema.Draft7Validator(_strict(schema))


def test_rayjob_passes_kuberay_crd_schema(crd_validator):
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in crd_validator.iter_errors(_rayjob())]
    assert not errors, errors


@pytest.mark.parametrize("mutation", ["misspelled field", "bad auth mode", "wrong type", "misspelled pod field"])
def test_rayjob_schema_check_rejects_a_broken_copy(crd_validator, mutation):
    job = _rayjob()
    cluster = job["spec"]["rayClusterSpec"]
    if mutation == "misspelled field":
        cluster["headGroupSpec"]["rayStartParam"] = cluster["headGroupSpec"].pop("rayStartParams")
    elif mutation == "bad auth mode":
        cluster["authOptions"]["mode"] = "tokens"
    elif mutation == "wrong type":
        cluster["workerGroupSpecs"][0]["replicas"] = "1"
    else:
        cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["volumeMount"] = []
    assert list(crd_validator.iter_errors(job))


def test_rayjob_token_auth_and_rwx_storage_class():
    """Token auth on (KubeRay's head dashboard listens on the pod network), a Ray version that supports it,
    and the ReadWriteMany claim names a storage class that is defined here (or a known RWX class)."""
    docs = _k8s_docs()
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["rayVersion"] == ray.__version__
    assert tuple(int(x) for x in cluster["rayVersion"].split(".")[:2]) >= (2, 52)  # KubeRay's minimum for token
    pvcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    classes = {d["metadata"]["name"]: d for d in docs if d["kind"] == "StorageClass"}
    for pvc in pvcs.values():
        spec = pvc["spec"]
        assert spec["accessModes"] == ["ReadWriteMany"]
        name = spec.get("storageClassName")
        assert name in classes or name in ("standard-rwx", "enterprise-rwx", "azurefile-csi"), name
        if name in classes:
            assert classes[name]["provisioner"] in ("efs.csi.aws.com", "filestore.csi.storage.gke.io", "file.csi.azure.com")


def test_rayjob_pods_mount_the_claim():
    """Head and GPU worker pods mount the claimed volume at the same path; images everywhere."""
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]]
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        pods.append(group["template"]["spec"])
    claimed = {d["metadata"]["name"] for d in _k8s_docs() if d["kind"] == "PersistentVolumeClaim"}
    for pod in pods:
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = {m["name"]: m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert set(mounts) <= set(volumes)
        shared = [n for n, v in volumes.items() if v.get("persistentVolumeClaim", {}).get("claimName") in claimed]
        assert shared and mounts[shared[0]] == "/mnt/shared"


def test_kuberay_entrypoint_overrides_compose():
    """The RayJob's Hydra overrides are valid for this project, and its output_dir is on the
    shared volume every pod mounts."""
    argv = shlex.split(_rayjob()["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "orchestrator"]
    cfg = compose_config(*argv[3:])
    assert cfg.device == "cuda"
    assert cfg.output_dir.startswith("/mnt/shared/")


# ---- image -----------------------------------------------------------------------------------------
def _readme_image() -> str:
    builds = re.findall(r"docker build -f cluster/Dockerfile -t (\S+) \.", (CLUSTER / "README.md").read_text())
    assert builds, "cluster/README.md has no `docker build -f cluster/Dockerfile -t IMAGE .` line"
    assert len(set(builds)) == 1, builds
    return builds[0]


def test_yaml_images_are_the_one_the_readme_builds():
    """Both YAML files run the image README's build command makes (and pushes); its name is a
    placeholder the user replaces, tagged with the project version; no image nobody can pull."""
    image = _readme_image()
    readme = (CLUSTER / "README.md").read_text()
    assert f"docker push {image}" in readme
    assert PLACEHOLDER_ORG in image and image.endswith(":" + _project_version())
    assert f"-t {image} ." in (CLUSTER / "Dockerfile").read_text()
    assert _ray_up()["docker"]["image"] == image
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    assert {c["image"] for p in pods for c in p["containers"]} == {image}


def _project_version() -> str:
    return re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of cluster/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (CLUSTER / "Dockerfile").read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as Docker matches it (moby/patternmatcher): relative to the context
    root, `*` and `?` within one path element, `**` across any number of them."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
            if pattern.startswith("/", i):
                out, i = out[:-2] + "(.*/)?", i + 1
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _ignore_rules() -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keep = line.startswith("!")
            rules.append((keep, _pattern_regex(os.path.normpath(line.lstrip("!")).lstrip("/"))))
    return rules


def _ignored(path: str, rules) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for keep, regex in rules:
        if any(regex.match(p) for p in prefixes):
            result = not keep
    return result


def _build_context() -> dict[str, int]:
    """Path -> size of every file `docker build` would send from the project root."""
    rules = _ignore_rules()
    kept_dirs = [r.pattern for keep, r in rules if keep]
    files = {}
    for folder, dirs, names in os.walk(ROOT):
        rel = os.path.relpath(folder, ROOT)
        rel = "" if rel == "." else rel + "/"
        # a folder can be skipped when it is ignored and no `!` exception could reach inside it
        dirs[:] = [d for d in dirs if not (_ignored(rel + d, rules) and not any(p.startswith(re.escape(rel + d))
                                                                                 for p in kept_dirs))]
        for name in names:
            if not _ignored(rel + name, rules) and os.path.isfile(os.path.join(folder, name)):
                files[rel + name] = os.path.getsize(os.path.join(folder, name))
    return files


def test_dockerignore_matcher_follows_docker_rules():
    rules = [(False, _pattern_regex("**/__pycache__")), (False, _pattern_regex("bench")),
             (True, _pattern_regex("bench/gpu")), (False, _pattern_regex(".venv"))]
    assert _ignored("orchestrator/__pycache__/x.pyc", rules) and _ignored("__pycache__/y.pyc", rules)
    assert _ignored("bench/peers/run.py", rules) and not _ignored("bench/gpu/check.sh", rules)
    assert _ignored(".venv/bin/python", rules) and not _ignored("tools/.venv.md", rules)


def test_build_context_has_what_the_dockerfile_copies_and_nothing_heavy():
    """What the Dockerfile COPYs and installs is in the context; virtual environments, outputs,
    sweeps, wandb folders, caches and .git are not, and the context is small."""
    context = _build_context()
    copies = [shlex.split(args) for op, args in _dockerfile() if op == "COPY"]
    assert copies
    for args in copies:
        sources = [a for a in args[:-1] if not a.startswith("--")]
        for src in sources:
            assert any(f == src or f.startswith(src.rstrip("/") + "/") for f in context), f"COPY {src}: not in context"
    for needed in ("pyproject.toml", "README.md", "cluster/requirements-gpu.txt", "orchestrator/__main__.py",
                   "conf/config.yaml", "launch.sh", "bench/gpu/check.sh"):
        assert needed in context, needed
    heavy = [f for f in context if re.match(r"(\.venv|\.git|outputs|multirun|bench/peers/\.venv-trl)/", f)
             or re.search(r"(^|/)(__pycache__|wandb|\.venv)/", f)]
    assert not heavy, heavy[:10]
    assert sum(context.values()) < 5 * 2**20, sum(context.values())
    installs = " ".join(args for op, args in _dockerfile() if op == "RUN")
    assert "-c cluster/requirements-gpu.txt -e '.[gpu]'" in installs


def test_dockerfile_base_image_and_install():
    """The base is Ray's CUDA image of the Ray version this project pins, Python 3.11."""
    args = dict(re.match(r"(\w+)=(\S+)", a).groups() for op, a in _dockerfile() if op == "ARG" and "=" in a)
    base = args["RAY_IMAGE"]
    assert base == f"rayproject/ray:{ray.__version__}-py311-gpu", base
    assert ("FROM", "${RAY_IMAGE}") in _dockerfile()


# ---- GPU pins and the GPU check ---------------------------------------------------------------------
def _lock() -> dict[str, str]:
    pins = {}
    for line in (CLUSTER / "requirements-gpu.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name.lower())] = version.split(";")[0].strip()
    return pins


def test_gpu_extra_pins_agree_with_the_resolved_set():
    """Every `==` pin of pyproject.toml (dependencies and the gpu extra) is the version in
    cluster/requirements-gpu.txt, which also holds everything those pull in."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gpu = project["optional-dependencies"]["gpu"]
    assert gpu and all("==" in r for r in gpu), gpu
    lock = _lock()
    for req in project["dependencies"] + gpu:
        m = re.match(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?==([^;,\s]+)$", req.split("#")[0].strip())
        if m:
            assert lock.get(re.sub(r"[-_.]+", "-", m.group(1).lower())) == m.group(3), req
    assert lock["ray"] == ray.__version__ and "vllm" in lock and "deepspeed" in lock and "nvidia-nccl-cu13" in lock


def test_gpu_check_scripts_parse():
    """bench/gpu cannot run without a GPU; here its shell script and Python files must parse."""
    assert subprocess.run(["bash", "-n", str(ROOT / "bench/gpu/check.sh")]).returncode == 0
    scripts = sorted((ROOT / "bench/gpu").glob("*.py"))
    assert {s.name for s in scripts} >= {"trainer_check.py", "sync_check.py"}
    for script in scripts:
        compile(script.read_text(), str(script), "exec")  # a SyntaxError fails the test


@pytest.mark.slow
def test_trainer_check_logic_on_cpu(tmp_path):
    """The GPU trainer check's own logic (batches, objectives, checks, report) in its CPU smoke mode:
    a 2-layer model, DeepSpeed on gloo, ZeRO-2 and ZeRO-3; every check passes, exit 0; and it never
    imports Ray or vLLM (a bare GPU machine has neither)."""
    report = tmp_path / "report.md"
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['trainer_check.py', '--device', 'cpu', '--tiny', '--steps', '2', '--report', {str(report)!r}]\n"
        "try:\n"
        f"    runpy.run_path({str(ROOT / 'bench/gpu/trainer_check.py')!r}, run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print('IMPORTED', sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'vllm'}))\n"
        "sys.exit(code)\n")
    python = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else "python"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MASTER_PORT": ""}
    proc = subprocess.run([python, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "IMPORTED []" in proc.stdout, proc.stdout[-500:]
    rows = [line for line in report.read_text().splitlines() if re.match(r"\| [23] \| (ppo|dpo) \|", line)]
    assert len(rows) == 4 and all(row.endswith("| all passed |") for row in rows), rows
