"""Ray session set-up and bounded remote waits.

``start_ray`` connects to ``cluster.address`` (or ``$RAY_ADDRESS``) or starts a local Ray bound to
127.0.0.1. ``wait`` is the one place the driver blocks on actors: every wait has a timeout and
an error naming what it waited for, and a user-facing error raised inside an actor comes back
as the same one-line error.
"""

from __future__ import annotations

import json
import os
import socket

import ray

from orchestrator.errors import ResourceError, TetherError, WorkerDied, WorkerError
from orchestrator.models import default_cache_dir

QUIET_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "VLLM_CONFIGURE_LOGGING": "1",
    "PYTHONWARNINGS": "ignore",
}


def actor_env() -> dict:
    """Environment variables every actor of a run gets."""
    cache = default_cache_dir()
    env = dict(QUIET_ENV)
    env.setdefault("TETHER_CACHE", str(cache))
    env["TORCH_EXTENSIONS_DIR"] = os.environ.get("TORCH_EXTENSIONS_DIR", str(cache / "torch_extensions"))
    env["VLLM_CACHE_ROOT"] = os.environ.get("VLLM_CACHE_ROOT", str(cache / "vllm"))
    for key in ("WANDB_API_KEY", "WANDB_MODE"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """ResourceError within seconds when ``host:port`` (or ``ray://host:port``) does not answer."""
    if address == "auto" or address.startswith(("local", "anyscale://")):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ResourceError(f"cluster.address={address!r}: expected host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ResourceError(f"cluster.address={address!r}: cannot reach {host}:{port} ({exc.strerror or exc})") from None


def start_ray(cluster_cfg) -> str | None:
    """Connect to the configured cluster, or start a local one; returns the dashboard URL if any."""
    for key, value in actor_env().items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return None
    address = cluster_cfg.address or os.environ.get("RAY_ADDRESS")
    env = actor_env()
    job = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set inside a Ray job (ray job submit / launch.sh)
    if job:  # the job's own env vars win: Ray refuses to merge a key that both set
        job_env = (json.loads(job).get("runtime_env") or {}).get("env_vars") or {}
        env = {k: v for k, v in env.items() if k not in job_env}
    kwargs = {"runtime_env": {"env_vars": env}, "log_to_driver": True,
              "logging_level": "WARNING"}
    if address:
        check_reachable(address)
        try:
            context = ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError) as exc:
            raise ResourceError(f"cluster.address={address!r}: cannot connect to Ray: {exc}".splitlines()[0]) from exc
    else:
        context = ray.init(address="local", num_cpus=cluster_cfg.num_cpus, include_dashboard=cluster_cfg.dashboard,
                           dashboard_host="127.0.0.1", **kwargs)
    return getattr(context, "dashboard_url", None) or None


def unwrap(exc: BaseException) -> BaseException:
    """The user-facing error inside a Ray task error, if there is one."""
    while isinstance(getattr(exc, "cause", None), BaseException):
        exc = exc.cause
    return exc


def _get_one(ref, what: str):
    """``ray.get`` of a finished ref, turning Ray's errors into one-line user-facing ones."""
    try:
        return ray.get(ref)
    except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
        inner = unwrap(exc)
        if isinstance(inner, TetherError):
            raise type(inner)(str(inner).splitlines()[0]) from None
        died = isinstance(exc, ray.exceptions.RayActorError)
        detail = (str(exc if died else inner).strip().splitlines() or [""])[-1][:300]
        if died:
            raise WorkerDied(f"{what}: the actor died ({type(exc).__name__}: {detail})") from exc
        raise WorkerError(f"{what} failed: {type(inner).__name__}: {detail}") from exc


def wait(refs, what, timeout_s: float):
    """Results of ``refs`` (one ref or a list), failing as soon as any call fails.

    ``what`` names the call (for example ``reward.score``), or is a list naming each ref (for
    example ``["policy rank 0", "policy rank 1"]``) so an error says which actor it was. Nothing
    waits longer than ``timeout_s``.
    """
    single = not isinstance(refs, list)
    refs = [refs] if single else refs
    names = what if isinstance(what, list) else [what] * len(refs)
    results, _ = wait_timed({"call": refs}, timeout_s, {"call": names})
    return results["call"][0] if single else results["call"]


def wait_timed(named_refs: dict[str, list], timeout_s: float,
               labels: dict[str, list[str]] | None = None) -> tuple[dict[str, list], dict[str, float]]:
    """Wait for several concurrent calls, failing as soon as any fails; returns the results and
    each call's seconds from launch to completion.

    ``labels`` can name each ref of a call for errors (for example the ranks of a trainer group);
    by default the call's name is used.
    """
    import time

    start = time.perf_counter()
    labels = labels or {}
    owner = {ref: name for name, refs in named_refs.items() for ref in refs}
    label = {ref: labels.get(name, [name] * len(refs))[i] for name, refs in named_refs.items() for i, ref in enumerate(refs)}
    left = {name: len(refs) for name, refs in named_refs.items()}
    results: dict[str, dict] = {name: {} for name in named_refs}
    pending, seconds = list(owner), {}
    while pending:
        remaining = timeout_s - (time.perf_counter() - start)
        done, pending = ray.wait(pending, num_returns=1, timeout=max(remaining, 0))
        if not done:
            late = sorted({label[r] for r in pending})
            raise WorkerError(f"{', '.join(late)} did not finish within {timeout_s:g}s (cluster.call_timeout_s)")
        name = owner[done[0]]
        results[name][done[0]] = _get_one(done[0], label[done[0]])
        left[name] -= 1
        if left[name] == 0:
            seconds[name] = time.perf_counter() - start
    return {name: [results[name][r] for r in refs] for name, refs in named_refs.items()}, seconds
