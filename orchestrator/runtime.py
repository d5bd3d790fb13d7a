"""Ray session set-up and bounded remote waits.

``start_ray`` connects to ``cluster.address`` (or ``$RAY_ADDRESS``) or starts a local Ray bound to
127.0.0.1; a local Ray is watched by a small process that ends what is left of it (Ray's agents
outlive a driver killed with SIGKILL) once the driver is gone. ``wait`` is the one place the
driver blocks on actors: every wait has a timeout and an error naming what it waited for, and a
user-facing error raised inside an actor comes back as the same one-line error.

Secrets (the reward server's token, ``WANDB_API_KEY``) never go into ``runtime_env`` env vars:
Ray writes those in plain text to its session logs. Only the driver logs to wandb; an actor that
needs a secret gets it as a ``Secret`` constructor argument.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading

import ray

from orchestrator import quiet
from orchestrator.errors import ResourceError, TetherError, WorkerDied, WorkerError
from orchestrator.models import default_cache_dir

# Every actor's environment: offline, plus (``quiet.actor_env()``, see actor_env) the variables that
# hide the libraries' notices unless ``logger.verbose``.
QUIET_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_CONFIGURE_LOGGING": "1",
}


class Secret:
    """A string that is not shown by ``repr``/``str`` (so not in a log or an error by accident);
    ``reveal()`` returns it. Passed to an actor as a constructor argument, it travels in Ray's
    task spec, which Ray does not write to its logs, unlike ``runtime_env`` env vars."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        """The secret itself."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret(****)"

    __str__ = __repr__


def actor_env() -> dict:
    """Environment variables every actor of a run gets (through Ray's ``runtime_env`` on a cluster, which
    Ray logs: nothing secret goes here, in particular not ``WANDB_API_KEY``: actors do not log to wandb;
    a local Ray's processes inherit them from the driver's environment)."""
    cache = default_cache_dir()
    env = {**QUIET_ENV, **quiet.actor_env()}
    env.setdefault("TETHER_CACHE", str(cache))
    env["TORCH_EXTENSIONS_DIR"] = os.environ.get("TORCH_EXTENSIONS_DIR", str(cache / "torch_extensions"))
    env["VLLM_CACHE_ROOT"] = os.environ.get("VLLM_CACHE_ROOT", str(cache / "vllm"))
    if "WANDB_MODE" in os.environ:
        env["WANDB_MODE"] = os.environ["WANDB_MODE"]
    return env


# Run by ``sys.executable -c`` with the driver's pid, the Ray session name, node id and Ray's package
# folder: waits until the driver is gone (this process is re-parented), then ends every Ray process
# (``ray::*``, or run from Ray's package folder; never a user's ``tail -f`` of a log) of that
# session: those whose command line names the session, that hold a file of the session folder open
# (its logs), or whose environment holds its node id. Ray's agents rename themselves
# (``ray::DashboardAgent``), which also overwrites what /proc shows of their environment: their
# open log files find them. SIGTERM, then SIGKILL after 5 s.
WATCHDOG = r"""# tether: the watchdog of a local Ray (orchestrator/runtime.py)
import os, signal, sys, time
driver, session, node, ray_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode(), sys.argv[4].encode()
while os.getppid() == driver:
    time.sleep(0.5)
def of_session(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
        if not (cmd.startswith(b"ray::") or ray_dir in cmd):
            return False
        if session and session.encode() in cmd:
            return True
        with open(f"/proc/{pid}/environ", "rb") as f:
            if node and b"\0RAY_NODE_ID=" + node + b"\0" in b"\0" + f.read() + b"\0":
                return True
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if session and session in os.readlink(f"/proc/{pid}/fd/{fd}"):
                return True
    except OSError:
        pass
    return False
start = time.monotonic()
while time.monotonic() - start < 30:
    pids = [int(d) for d in os.listdir("/proc") if d.isdigit() and int(d) != os.getpid() and of_session(d)]
    if not pids:
        break
    sig = signal.SIGKILL if time.monotonic() - start > 5 else signal.SIGTERM
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    time.sleep(0.5)
"""


def watch_local_ray() -> subprocess.Popen | None:
    """Start the watchdog (``WATCHDOG``) of the local Ray this process started; None where there is
    no ``/proc`` to find the session's processes in."""
    if not os.path.isdir("/proc"):
        return None
    node = getattr(ray._private.worker, "_global_node", None)  # the local node this driver started
    session = getattr(node, "session_name", "") or ""
    node_id = ray.get_runtime_context().get_node_id() or ""
    ray_dir = os.path.dirname(os.path.abspath(ray.__file__))
    proc = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), session, node_id, ray_dir],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # out of the driver's process group: Ctrl-C spares it
    _WATCHDOGS.append(proc)  # kept: it outlives this process on purpose
    return proc


_WATCHDOGS: list[subprocess.Popen] = []


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
        # A local Ray's processes inherit this process's environment: the actors' variables go there instead
        # of a runtime_env, which would keep the actors off the worker processes Ray starts in advance (a
        # fresh process per actor: seconds of a 2-core machine's start-up).
        os.environ.update(kwargs.pop("runtime_env")["env_vars"])
        try:
            context = ray.init(address="local", num_cpus=cluster_cfg.num_cpus, include_dashboard=cluster_cfg.dashboard,
                               dashboard_host="127.0.0.1", **kwargs)
        except Exception as exc:  # raylet / GCS not up: a full disk, a file-size limit, an unwritable temp folder
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ResourceError(f"the local Ray did not start: {detail} (Ray's temp folder is $RAY_TMPDIR or /tmp: "
                                "is it writable, with free space and no file-size limit, ulimit -f?)") from exc
        watch_local_ray()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_on_sigterm)  # replaces Ray's handler, which aborts with a stack dump
    return getattr(context, "dashboard_url", None) or None


def ray_is_up() -> bool:
    """Whether this process is connected to Ray already."""
    return ray.is_initialized()


def stop_ray(was_up: bool) -> None:
    """Disconnect (and stop a local Ray) unless Ray was up before ``start_ray`` (a sweep trial's, say):
    an input error found while Ray was starting leaves no Ray behind."""
    if not was_up and ray.is_initialized():
        ray.shutdown()


def _stop_on_sigterm(signum, frame) -> None:
    """SIGTERM (``kill``, a scheduler's preemption): stop like Ctrl-C, the run's cleanup and Ray's shutdown
    included, with one line and status 143."""
    print("tether: stopped by SIGTERM; the checkpoints written so far are intact (resume=auto continues)",
          file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


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
