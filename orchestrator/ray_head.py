"""Where ``launch.sh`` sends jobs: the Ray Jobs API address (checked within seconds), and the local
Ray head node it starts and stops (dashboard / Jobs API on 127.0.0.1 and token authentication by
default; ``head stop`` ends only that head's processes). See ``orchestrator/launch.py``.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REACH_TIMEOUT_S = 5.0


class LaunchError(Exception):
    """A problem reported as one ``launch.sh: error:`` line (exit 2)."""


def note(message: str) -> None:
    print(f"launch.sh: {message}", file=sys.stderr, flush=True)


@dataclass
class Head:
    """The local head node (``Head.from_env()``: from the ``TETHER_*`` environment variables)."""

    dir: str
    host: str = "127.0.0.1"
    port: int = 8265
    gcs_port: int = 6379
    client_port: int = 10001
    num_cpus: str = ""
    agent_port: int = 0  # dashboard agent HTTP port; 0: a free one picked at start
    agent_grpc_port: int = 0  # dashboard agent gRPC port; 0: a free one picked at start
    ray_args: tuple[str, ...] = ()  # more `ray start` options (`head start -- ARGS`)

    @classmethod
    def from_env(cls) -> "Head":
        e = os.environ

        def port(name: str, default: str) -> int:
            value = e.get(name, default)
            if not value.isdigit() or int(value) > 65535:
                raise LaunchError(f"{name}={value} is not a port number")
            return int(value)

        return cls(e.get("TETHER_HEAD_DIR", f"/tmp/tether-ray-{os.getuid()}"), e.get("TETHER_DASHBOARD_HOST", "127.0.0.1"),
                   port("TETHER_DASHBOARD_PORT", "8265"), port("TETHER_GCS_PORT", "6379"),
                   port("TETHER_CLIENT_PORT", "10001"), e.get("TETHER_HEAD_NUM_CPUS", ""),
                   port("TETHER_DASHBOARD_AGENT_PORT", "0"), port("TETHER_DASHBOARD_AGENT_GRPC_PORT", "0"))

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "localhost") else self.host
        return f"http://{host}:{self.port}"


# ---- addresses ---------------------------------------------------------------------------------
def reachable(url: str, seconds: float = 2.0) -> bool:
    """Whether a TCP connection to the URL's host:port opens in time."""
    hostport = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
        return True
    except (OSError, ValueError):
        return False


def probe_jobs_api(url: str) -> None:
    """LaunchError unless ``url`` answers like a Ray Jobs API (``GET /api/version``: 200, or 401/403
    from a head with token authentication) within ``REACH_TIMEOUT_S``."""
    try:
        urllib.request.urlopen(url + "/api/version", timeout=REACH_TIMEOUT_S).close()
    except urllib.error.HTTPError as exc:
        if exc.code not in (401, 403):
            raise LaunchError(f"{url} answers, but not as a Ray Jobs API (HTTP {exc.code} for /api/version) "
                              "(check --address / RAY_ADDRESS and that the cluster is up)") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, (TimeoutError, socket.timeout)):
            reason = f"no answer within {REACH_TIMEOUT_S:g}s"
        raise LaunchError(f"cannot reach the Ray Jobs API at {url} ({reason}) "
                          "(check --address / RAY_ADDRESS and that the cluster is up)") from None


def check_address(address: str) -> str:
    """The Jobs API URL of ``address`` (``http(s)://HOST:PORT`` or ``HOST:PORT``), probed."""
    if address.startswith("ray://"):
        raise LaunchError(f"address {address} is a Ray Client address; the Jobs API needs the dashboard address, "
                          "e.g. http://HOST:8265")
    if address.startswith(("http://", "https://")):
        url = address.rstrip("/")
    elif re.fullmatch(r"[^/\s]+:\d+/?", address):
        url = "http://" + address.rstrip("/")
    else:
        raise LaunchError(f"address {address}: expected http://HOST:PORT (the Ray dashboard / Jobs API address)")
    probe_jobs_api(url)
    return url


def use_token_auth() -> None:
    """A head started with a token (``~/.ray/auth_token``) requires it: use it when one is available."""
    token_file = os.environ.get("RAY_AUTH_TOKEN_PATH", os.path.expanduser("~/.ray/auth_token"))
    if not os.environ.get("RAY_AUTH_MODE") and (os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(token_file)):
        os.environ["RAY_AUTH_MODE"] = "token"


def resolve_address(address: str | None, head: Head, start: bool = False) -> tuple[str, bool]:
    """``(Jobs API URL, whether it is the local head)`` from ``--address``, ``$RAY_API_SERVER_ADDRESS``,
    ``$RAY_ADDRESS`` or the local head (started when ``start``)."""
    use_token_auth()
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if address:
        url, local = check_address(address), False
    else:
        url, local = head.url, True
        if not reachable(url):
            if not start:
                raise LaunchError(f"no Ray head answers at {url}; start one with ./launch.sh head start, or pass --address")
            head_start(head)
    os.environ["RAY_API_SERVER_ADDRESS"] = url  # the ray CLI and SDK read it before --address
    os.environ.pop("RAY_ADDRESS", None)
    return url, local


# ---- local head ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "0.0.0.0") -> bool:
    """Whether something on this machine already holds ``port`` (a listener on any address)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT leftover is no clash
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def head_ports(head: Head) -> list[tuple[int, str, str]]:
    """``(port, what, setting to change)`` for each fixed port of the head, free ports picked for
    the dashboard agent when not set. Ray itself would start with a busy agent port and only fail
    later, on every job submission ("No available agent")."""
    if not head.agent_port:
        head.agent_port = free_port()
    if not head.agent_grpc_port:
        head.agent_grpc_port = free_port()
    ports = [(head.gcs_port, "GCS", "TETHER_GCS_PORT"), (head.port, "dashboard / Jobs API", "TETHER_DASHBOARD_PORT"),
             (head.client_port, "Ray Client server", "TETHER_CLIENT_PORT"),
             (head.agent_port, "dashboard agent", "TETHER_DASHBOARD_AGENT_PORT"),
             (head.agent_grpc_port, "dashboard agent gRPC", "TETHER_DASHBOARD_AGENT_GRPC_PORT")]
    args = list(head.ray_args)  # e.g. --object-manager-port=8076 (or ... 8076) given after `head start --`
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if not eq and i + 1 < len(args):
            value = args[i + 1]
        if flag.endswith("-port") and value.isdigit() and flag not in ("--min-worker-port", "--max-worker-port"):
            ports.append((int(value), flag.lstrip("-"), flag))
    return ports


def check_ports(head: Head) -> None:
    """LaunchError naming the first fixed port that is taken, and the setting that moves it."""
    for port, what, setting in head_ports(head):
        if port_in_use(port):
            raise LaunchError(f"port {port} ({what}) is already in use on this machine; "
                              f"set {setting} to a free port (or stop what holds it)")


def connection_lines(head: Head) -> str:
    """Shell lines that let plain ``ray`` commands (``ray status``, ``ray list actors``, ``ray job
    submit``) reach this head: without ``RAY_AUTH_MODE=token`` they fail with an auth error."""
    token = "$RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")
    gcs = _gcs_address(head) or f"127.0.0.1:{head.gcs_port}"
    return (f"plain ray commands in another shell on this machine need (token from {token}):\n"
            f"  export RAY_AUTH_MODE=token RAY_ADDRESS={gcs} RAY_API_SERVER_ADDRESS={head.url}")


def head_start(head: Head) -> None:
    """``ray start --head`` with the dashboard on ``head.host``, token authentication on, and every
    fixed port checked first (a taken one is one error line naming its setting)."""
    if reachable(head.url):
        note(f"a Ray head already answers at {head.url}")
        return
    check_ports(head)
    head.dir = os.path.abspath(head.dir)
    os.makedirs(head.dir, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    if not os.environ.get("RAY_AUTH_MODE"):  # token auth on by default; the token stays in ~/.ray
        os.environ["RAY_AUTH_MODE"] = env["RAY_AUTH_MODE"] = "token"
        if subprocess.run(["ray", "get-auth-token", "--generate"], env=env, capture_output=True).returncode:
            raise LaunchError("could not create a Ray auth token (ray get-auth-token --generate)")
    if head.host != "127.0.0.1":
        note(f"warning: the dashboard / Jobs API will listen on {head.host}")
    args = ["ray", "start", "--head", "--temp-dir", head.dir, "--port", str(head.gcs_port), "--include-dashboard", "true",
            "--dashboard-host", head.host, "--dashboard-port", str(head.port), "--ray-client-server-port",
            str(head.client_port), "--dashboard-agent-listen-port", str(head.agent_port), "--dashboard-agent-grpc-port",
            str(head.agent_grpc_port), "--disable-usage-stats"]
    if head.num_cpus:
        args += ["--num-cpus", head.num_cpus]
    args += list(head.ray_args)
    note(f"starting a local Ray head (temp dir {head.dir}) ...")
    log_path = os.path.join(head.dir, "head-start.log")
    for attempt in (1, 2):  # Ray gives its raylet 30 s to register: a busy machine can miss that once
        with open(log_path, "w") as log:
            if subprocess.run(args, env=env, stdout=log, stderr=subprocess.STDOUT).returncode == 0:
                break
        head_stop(head, quiet=True)
        if attempt == 2:
            tail = Path(log_path).read_text(errors="replace").splitlines()[-15:]
            print("\n".join(tail), file=sys.stderr)
            raise LaunchError(f"ray start failed (full log: {log_path})")
        note("ray start failed; retrying once")
    for _ in range(30):
        if reachable(head.url):
            break
        time.sleep(1)
    else:
        raise LaunchError(f"the head started but its dashboard does not answer at {head.url} (log: {log_path})")
    note(f"local Ray head up: dashboard {head.url}, GCS {_gcs_address(head) or '?'}, "
         f"dashboard agent {head.agent_port} (gRPC {head.agent_grpc_port})")
    print(connection_lines(head), flush=True)


def _gcs_address(head: Head) -> str | None:
    path = os.path.join(os.path.abspath(head.dir), "ray_current_cluster")
    return Path(path).read_text().strip() if os.path.exists(path) else None


def head_stop(head: Head, quiet: bool = False) -> None:
    """Stop only the Ray processes of the head in ``head.dir`` (never other Ray instances)."""
    import contextlib

    import psutil

    temp, gcs = os.path.abspath(head.dir), _gcs_address(head)
    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    ray_cmd = re.compile(r"(/ray/|-m ray\.|^ray::)")

    def of_this_head(args: list[str]) -> bool:
        if not args or not ray_cmd.search(" ".join(args[:3])):
            return False
        return any(temp + "/" in a or a.endswith("=" + temp) or (gcs and a == "--address=" + gcs) for a in args)

    procs = {}
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if p.pid not in me and of_this_head(p.info["cmdline"]):
                procs[p.pid] = p
                procs.update({c.pid: c for c in p.children(recursive=True) if c.pid not in me})
    for p in procs.values():
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(list(procs.values()), timeout=5)  # gcs_server can linger on SIGTERM
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(temp, "ray_current_cluster"))
    if not quiet:
        print(f"launch.sh: stopped the local Ray head in {temp} ({len(procs)} processes)" if procs
              else f"launch.sh: no local Ray head running in {temp}")
