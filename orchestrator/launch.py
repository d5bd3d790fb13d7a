"""``launch.sh``: Tether pipelines as Ray jobs (Ray's ``JobSubmissionClient``), a local Ray head node
(``orchestrator/ray_head.py``) and TensorBoard. ``./launch.sh`` is a thin entry that runs
``python -m orchestrator.launch`` with the project's venv; ``./launch.sh --help`` lists the commands.

A user-facing problem is one line, ``launch.sh: error: ...``, and exit status 2. ``submit`` waits for
the job and exits 0 when it SUCCEEDED, else 1.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from orchestrator.ray_head import Head, LaunchError, head_start, head_stop, note, reachable, resolve_address

ROOT = Path(__file__).resolve().parents[1]
EXCLUDES = [".venv", ".git", "outputs", "multirun", "wandb", "__pycache__", "*.egg-info", ".pytest_cache", ".cache"]

USAGE = """Usage: ./launch.sh COMMAND [ARGS]
Jobs, through the Ray Jobs API at --address URL, else $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS,
else the local head at {url} (`submit` starts it when it is not running):
  submit [--address URL] [--follow | --no-wait] [--submission-id ID] [--] [HYDRA_OVERRIDES...]
      runs `python -m orchestrator HYDRA_OVERRIDES` with this folder as working dir; prints the job
      id, dashboard URL and output_dir (default {outputs}/<time>; with -m the
      hydra.sweep.dir, default {root}/multirun/<time>; relative ones are made absolute); waits
      and exits 0 if the job SUCCEEDED, else 1 (--follow: with its logs; --no-wait: return at once)
  status JOB_ID | logs JOB_ID [--follow] | stop JOB_ID | list | actors JOB_ID    [--address URL]
      actors: the job's actors by role name (rollout-0-..., policy-rank0-..., reward-...)
Local head node (dashboard / Jobs API on {host}:{port}, temp dir {dir}):
  head start [--num-cpus N] [-- RAY_START_OPTIONS...] | head stop | head status
      start checks every fixed port first (a taken one: one error line naming the setting to change)
      and prints the exports plain `ray status` / `ray list actors` / `ray job submit` need
TensorBoard:
  tensorboard [DIR] [--port N] [--host H]    serve DIR (default {outputs}) on 127.0.0.1:6006
Environment: TETHER_HEAD_DIR, TETHER_DASHBOARD_HOST, TETHER_DASHBOARD_PORT, TETHER_GCS_PORT,
TETHER_CLIENT_PORT, TETHER_DASHBOARD_AGENT_PORT, TETHER_DASHBOARD_AGENT_GRPC_PORT (free ones when
unset), TETHER_HEAD_NUM_CPUS, TETHER_OUTPUT_ROOT. Jobs get HF_HUB_OFFLINE (default 1),
WANDB_MODE (offline unless WANDB_API_KEY is set) and TETHER_CACHE when set. Secrets are never sent
with a job (Ray writes a job's env vars to its logs): a job logs to wandb online when the Ray node
running it has WANDB_API_KEY in its environment; `head start` passes on the one set here, and
a remote cluster's nodes must be started with it (e.g. from a Kubernetes Secret or a file)."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are ``launch.sh: error:`` lines."""

    def error(self, message: str):
        raise LaunchError(f"{self.prog}: {message}")


def output_root() -> Path:
    return Path(os.environ.get("TETHER_OUTPUT_ROOT", ROOT / "outputs"))


def client(url: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(url)
    except Exception as exc:  # auth failure, not a Ray dashboard: one line, not a traceback
        raise LaunchError(f"{url}: {str(exc).strip().splitlines()[0][:300]}") from None


def job_info(url: str, job: str):
    try:
        return client(url).get_job_info(job)
    except LaunchError:
        raise
    except Exception as exc:  # an unknown job id
        raise LaunchError(f"job {job} at {url}: {str(exc).strip().splitlines()[0][:300]}") from None


# ---- submit --------------------------------------------------------------------------------------
def absolute_output(overrides: list[str], stamp: str) -> tuple[list[str], str, str]:
    """The overrides with ``output_dir`` (``hydra.sweep.dir`` for ``-m``) made absolute, or added under
    the default root: a job's working dir is a temporary upload. Returns (overrides, key, folder)."""
    multirun = "-m" in overrides or "--multirun" in overrides
    key, default = ("hydra.sweep.dir", ROOT / "multirun") if multirun else ("output_dir", output_root())
    out, folder = list(overrides), ""
    for i, item in enumerate(out):
        name, eq, value = item.partition("=")
        if eq and name.lstrip("+") == key:
            if not (value.startswith(("/", "~")) or "${" in value):
                value = os.path.join(os.getcwd(), value)
            out[i], folder = f"{name}={value}", value
    if not folder:
        folder = str(default / stamp)
        out.append(f"{key}={folder}")
    return out, key, folder


def submit(args, head: Head) -> int:
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S") + f"_{os.getpid() & 0xFFFF:04x}"
    overrides, key, folder = absolute_output(args.overrides, stamp)
    submission_id = args.submission_id or f"tether-{stamp}"
    url, local = resolve_address(args.address, head, start=True)
    e = os.environ
    if e.get("WANDB_API_KEY"):
        note("WANDB_API_KEY is not sent with the job (secrets never go in runtime_env); the job logs to wandb online "
             "only if the Ray node running it has WANDB_API_KEY set")
    env = {"HF_HUB_OFFLINE": e.get("HF_HUB_OFFLINE", "1"),
           "WANDB_MODE": e.get("WANDB_MODE") or ("online" if e.get("WANDB_API_KEY") else "offline"),
           **{k: e[k] for k in ("TETHER_CACHE",) if e.get(k)}}  # no secrets: Ray logs runtime_env env vars
    jobs = client(url)
    try:
        jobs.submit_job(entrypoint="python -m orchestrator " + shlex.join(overrides), submission_id=submission_id,
                        runtime_env={"working_dir": str(ROOT), "excludes": EXCLUDES, "env_vars": env},
                        metadata={"project": "tether", "output_dir": folder})
    except Exception as exc:
        raise LaunchError(f"submitting to {url} failed: {str(exc).strip().splitlines()[-1][:300]}") from None
    at = "" if local else f" --address {url}"
    print(f"job id: {submission_id}\ndashboard: {url}\n{'output_dir' if key == 'output_dir' else 'sweep_dir'}: {folder}")
    print(f"follow: ./launch.sh logs {submission_id} --follow{at} | status: ./launch.sh status {submission_id}{at} | "
          f"stop: ./launch.sh stop {submission_id}{at}", flush=True)
    if args.no_wait:
        return 0
    if args.follow:
        follow_logs(jobs, submission_id)
    if wait_for(jobs, submission_id):
        return 0
    if not args.follow:
        print("\n".join(jobs.get_job_logs(submission_id).splitlines()[-40:]), file=sys.stderr)
    return 1


def follow_logs(jobs, job: str) -> None:
    """Print the job's log as it grows, until the job ends."""
    import asyncio

    async def tail():
        async for lines in jobs.tail_job_logs(job):
            print(lines, end="", flush=True)

    asyncio.run(tail())


def wait_for(jobs, job: str) -> bool:
    """Wait for the job to end, printing each status it passes; True when it SUCCEEDED."""
    from ray.job_submission import JobStatus

    last = None
    try:
        while True:
            status = jobs.get_job_status(job)
            if status != last:
                print(f"launch.sh: job {job}: {status.value}", flush=True)
                last = status
            if status.is_terminal():
                return status == JobStatus.SUCCEEDED
            time.sleep(2)
    except KeyboardInterrupt:
        note(f"stopped waiting; the job keeps running (./launch.sh stop {job})")
        sys.exit(130)


# ---- other job commands --------------------------------------------------------------------------
def status(url: str, job: str) -> int:
    info = job_info(url, job)
    print(f"job {job}: {info.status.value}")
    if info.message:
        print(f"message: {info.message.strip().splitlines()[-1][:300]}")
    print(f"output_dir: {(info.metadata or {}).get('output_dir', '?')}\ndashboard: {url}")
    return 0


def logs(url: str, job: str, follow: bool) -> int:
    job_info(url, job)
    jobs = client(url)
    if follow:
        follow_logs(jobs, job)
    else:
        print(jobs.get_job_logs(job), end="")
    return 0


def stop(url: str, job: str) -> int:
    job_info(url, job)
    stopped = client(url).stop_job(job)
    print(f"job {job}: {'stop requested' if stopped else 'already ended'}")
    return 0


def list_jobs(url: str) -> int:
    for j in sorted(client(url).list_jobs(), key=lambda j: j.start_time or 0):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time / 1000)) if j.start_time else "-"
        where = (j.metadata or {}).get("output_dir") or j.entrypoint[:60]
        print(f"{j.submission_id or j.job_id:32} {j.status.value:10} {started}  {where}")
    return 0


def actors(url: str, job: str) -> int:
    from ray.util.state import list_actors, list_jobs

    ids = [j.job_id for j in list_jobs(address=url) if j.submission_id == job and j.job_id]
    if not ids:
        raise LaunchError(f"job {job} has no driver yet")
    found = list_actors(address=url, filters=[("job_id", "=", ids[0])], limit=10000, raise_on_missing_output=False)
    for a in sorted(found, key=lambda a: a.name or ""):
        print(f"{a.name or '-':32} {a.class_name:18} {a.state}")
    return 0


# ---- entry ---------------------------------------------------------------------------------------
def head_command(argv: list[str], head: Head) -> int:
    parser = Parser(prog="head")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--num-cpus", default=head.num_cpus)
    parser.add_argument("ray_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    head.num_cpus = args.num_cpus
    head.ray_args = tuple(args.ray_args[1:] if args.ray_args[:1] == ["--"] else args.ray_args)
    if head.ray_args and args.action != "start":
        raise LaunchError(f"head {args.action} takes no ray start options")
    if args.action == "start":
        head_start(head)
    elif args.action == "stop":
        head_stop(head)
    elif not reachable(head.url):
        print(f"not running (dashboard {head.url})")
        return 1
    else:
        gcs = Path(os.path.abspath(head.dir), "ray_current_cluster")
        print(f"running: dashboard {head.url}, GCS {gcs.read_text().strip() if gcs.exists() else '?'}")
    return 0


def tensorboard(argv: list[str]) -> int:
    parser = Parser(prog="tensorboard")
    parser.add_argument("dir", nargs="?", default=str(output_root()))
    parser.add_argument("--port", type=int, default=6006)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.dir):
        raise LaunchError(f"tensorboard: no folder {args.dir} (runs write <output_dir>/tensorboard)")
    if args.host != "127.0.0.1":
        note(f"warning: TensorBoard will listen on {args.host}")
    note(f"TensorBoard for {args.dir} at http://{args.host}:{args.port}/ (Ctrl-C stops it)")
    os.execvp("tensorboard", ["tensorboard", "--logdir", args.dir, "--host", args.host, "--port", str(args.port)])


def run(argv: list[str]) -> int:
    head = Head.from_env()
    if not argv:
        print(USAGE.format(url=head.url, outputs=output_root(), root=ROOT, host=head.host, port=head.port, dir=head.dir),
              file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command in ("-h", "--help", "help"):
        print(USAGE.format(url=head.url, outputs=output_root(), root=ROOT, host=head.host, port=head.port, dir=head.dir))
        return 0
    if command == "submit":
        parser = Parser(prog="submit")
        parser.add_argument("--address")
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--follow", "-f", action="store_true")
        mode.add_argument("--no-wait", action="store_true")
        parser.add_argument("--submission-id")
        parser.add_argument("overrides", nargs=argparse.REMAINDER)
        args = parser.parse_args(rest)
        args.overrides = args.overrides[1:] if args.overrides[:1] == ["--"] else args.overrides
        return submit(args, head)
    if command in ("status", "logs", "stop", "actors", "list"):
        parser = Parser(prog=command)
        if command != "list":
            parser.add_argument("job_id")
        parser.add_argument("--address")
        parser.add_argument("--follow", "-f", action="store_true")
        args = parser.parse_args(rest)
        url, _ = resolve_address(args.address, head)
        if command == "list":
            return list_jobs(url)
        return {"status": lambda: status(url, args.job_id), "logs": lambda: logs(url, args.job_id, args.follow),
                "stop": lambda: stop(url, args.job_id), "actors": lambda: actors(url, args.job_id)}[command]()
    if command == "head":
        return head_command(rest, head)
    if command == "tensorboard":
        return tensorboard(rest)
    raise LaunchError(f"unknown command {command} (see ./launch.sh --help)")


def main() -> None:
    try:
        sys.exit(run(sys.argv[1:]))
    except LaunchError as exc:
        print(f"launch.sh: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # output piped into a reader that stopped (e.g. head)
        sys.exit(0)


if __name__ == "__main__":
    main()
