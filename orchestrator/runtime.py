"""Ray session set-up and bounded remote waits.

``start_ray`` connects to ``cluster.address`` (or ``$RAY_ADDRESS``) or starts a local Ray bound to
127.0.0.1. ``wait`` is the one place the driver blocks on actors: every wait has a timeout and
an error naming what it waited for, and a user-facing error raised inside an actor comes back
as the same one-line error.
"""

from __future__ import annotations

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
    kwargs = {"runtime_env": {"env_vars": actor_env()}, "log_to_driver": True,
              "logging_level": "WARNING"}
    if address:
        check_reachable(address)
        try:
            context = ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError) as exc:
            raise ResourceError(f"cluster.address={address!r}: cannot connect to Ray: {exc}".splitlines()[0]) from exc
    else:
        context = ray.init(num_cpus=cluster_cfg.num_cpus, include_dashboard=cluster_cfg.dashboard,
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
    except ray.exceptions.RayTaskError as exc:
        inner = unwrap(exc)
        if isinstance(inner, TetherError):
            raise type(inner)(str(inner).splitlines()[0]) from None
        detail = (str(inner).strip().splitlines() or [""])[-1][:300]
        raise WorkerError(f"{what} failed: {type(inner).__name__}: {detail}") from exc
    except ray.exceptions.RayActorError as exc:
        inner = unwrap(exc)
        if isinstance(inner, TetherError):
            raise type(inner)(str(inner).splitlines()[0]) from None
        detail = (str(exc).strip().splitlines() or [""])[-1][:300]
        raise WorkerDied(f"{what}: the actor died ({type(exc).__name__}: {detail})") from exc


def wait(refs, what, timeout_s: float):
    """Results of ``refs`` (one ref or a list), failing as soon as any call fails.

    ``what`` names the call (for example ``reward.score``), or is a list naming each ref (for
    example ``["policy rank 0", "policy rank 1"]``) so an error says which actor it was. Nothing
    waits longer than ``timeout_s``.
    """
    import time

    single = not isinstance(refs, list)
    refs = [refs] if single else refs
    names = what if isinstance(what, list) else [what] * len(refs)
    results, pending, deadline = {}, list(refs), time.monotonic() + timeout_s
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=max(deadline - time.monotonic(), 0))
        if not done:
            late = sorted({names[refs.index(r)] for r in pending})
            raise WorkerError(f"{', '.join(late)} did not finish within {timeout_s:g}s (cluster.call_timeout_s)")
        i = refs.index(done[0])
        results[i] = _get_one(done[0], names[i])
    out = [results[i] for i in range(len(refs))]
    return out[0] if single else out


def wait_timed(named_refs: dict[str, list], timeout_s: float,
               labels: dict[str, list[str]] | None = None) -> tuple[dict[str, list], dict[str, float]]:
    """Wait for several concurrent calls; returns results and each one's seconds since launch.

    ``labels`` can name each ref of a call for errors (for example the ranks of a trainer group).
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
            names = sorted({owner[r] for r in pending})
            raise WorkerError(f"{', '.join(names)} did not finish within {timeout_s:g}s (cluster.call_timeout_s)")
        name = owner[done[0]]
        results[name][done[0]] = _get_one(done[0], label[done[0]])
        left[name] -= 1
        if left[name] == 0:
            seconds[name] = time.perf_counter() - start
    return {name: [results[name][r] for r in refs] for name, refs in named_refs.items()}, seconds
