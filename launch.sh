#!/usr/bin/env bash
# launch.sh: run Tether pipelines as Ray jobs (Ray Jobs API), manage a local Ray head node and
# serve TensorBoard. `./launch.sh --help` lists the commands. The local head's dashboard / Jobs
# API and TensorBoard bind to 127.0.0.1 unless configured otherwise.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The project's venv (make install) provides `ray`, `tensorboard` and the `python` that jobs on a
# local head run with: a head started from here inherits this PATH.
if [[ -z "${VIRTUAL_ENV:-}" && -x "$ROOT/.venv/bin/python" ]]; then PATH="$ROOT/.venv/bin:$PATH"; fi
export PATH

HEAD_DIR="${TETHER_HEAD_DIR:-/tmp/tether-ray-$(id -u)}"
DASHBOARD_HOST="${TETHER_DASHBOARD_HOST:-127.0.0.1}"
DASHBOARD_PORT="${TETHER_DASHBOARD_PORT:-8265}"
GCS_PORT="${TETHER_GCS_PORT:-6379}"
CLIENT_PORT="${TETHER_CLIENT_PORT:-10001}"
OUTPUT_ROOT="${TETHER_OUTPUT_ROOT:-$ROOT/outputs}"
REACH_TIMEOUT_S=5
URL="" LOCAL_HEAD=""

usage() {
  cat <<EOF
Usage: ./launch.sh COMMAND [ARGS]
Jobs, through the Ray Jobs API at --address URL, else \$RAY_API_SERVER_ADDRESS, else \$RAY_ADDRESS,
else the local head at $(local_url) (\`submit\` starts it when it is not running):
  submit [--address URL] [--follow | --no-wait] [--submission-id ID] [--] [HYDRA_OVERRIDES...]
      runs \`python -m orchestrator HYDRA_OVERRIDES\` with this folder as working dir; prints the job
      id, dashboard URL and output_dir (default $OUTPUT_ROOT/<time>; with -m the
      hydra.sweep.dir, default $ROOT/multirun/<time>; relative ones are made absolute); waits
      and exits 0 if the job SUCCEEDED, else 1 (--follow: with its logs; --no-wait: return at once)
  status JOB_ID | logs JOB_ID [--follow] | stop JOB_ID | list | actors JOB_ID    [--address URL]
      actors: the job's actors by role name (rollout-0-..., policy-rank0-..., reward-...)
Local head node (dashboard / Jobs API on $DASHBOARD_HOST:$DASHBOARD_PORT, temp dir $HEAD_DIR):
  head start [--num-cpus N] | head stop | head status
TensorBoard:
  tensorboard [DIR] [--port N] [--host H]    serve DIR (default $OUTPUT_ROOT) on 127.0.0.1:6006
Environment: TETHER_HEAD_DIR, TETHER_DASHBOARD_HOST, TETHER_DASHBOARD_PORT, TETHER_GCS_PORT,
TETHER_CLIENT_PORT, TETHER_HEAD_NUM_CPUS, TETHER_OUTPUT_ROOT. Jobs get HF_HUB_OFFLINE (default 1),
WANDB_MODE (offline unless WANDB_API_KEY is set) and TETHER_CACHE when set. Secrets are never sent
with a job (Ray writes a job's env vars to its logs): a job logs to wandb online when the Ray node
running it has WANDB_API_KEY in its environment; \`head start\` passes on the one set here, and
a remote cluster's nodes must be started with it (e.g. from a Kubernetes Secret or a file).
EOF
}

die() { echo "launch.sh: error: $*" >&2; exit 2; }
note() { echo "launch.sh: $*" >&2; }

# ---- addresses -----------------------------------------------------------------------------
local_url() {
  local host="$DASHBOARD_HOST"
  case "$host" in 0.0.0.0 | :: | localhost) host=127.0.0.1 ;; esac
  echo "http://$host:$DASHBOARD_PORT"
}

# reachable URL SECONDS: true when a TCP connection to the URL's host:port opens in time.
reachable() {
  local hostport="${1#*://}"
  hostport="${hostport%%/*}"
  timeout "$2" bash -c "exec 3<>/dev/tcp/${hostport%:*}/${hostport##*:}" 2>/dev/null
}

# Sets URL from --address / environment / the local head; starts the local head if $2 is "start".
# The ray CLI lets RAY_API_SERVER_ADDRESS and RAY_ADDRESS override --address: both are set to URL.
resolve_address() {
  local addr="${1:-${RAY_API_SERVER_ADDRESS:-${RAY_ADDRESS:-}}}"
  if [[ -z "$addr" ]]; then
    URL="$(local_url)"
    if ! reachable "$URL" 2; then
      [[ "${2:-}" == start ]] || die "no Ray head answers at $URL; start one with ./launch.sh head start, or pass --address"
      head_start
    fi
    LOCAL_HEAD=1
  else
    check_address "$addr"
  fi
  export RAY_API_SERVER_ADDRESS="$URL"
  unset RAY_ADDRESS
}

check_address() {
  local addr="$1"
  case "$addr" in
    ray://*) die "address $addr is a Ray Client address; the Jobs API needs the dashboard address, e.g. http://HOST:8265" ;;
    http://* | https://*) URL="${addr%/}" ;;
    *:[0-9]*) URL="http://${addr%/}" ;;
    *) die "address $addr: expected http://HOST:PORT (the Ray dashboard / Jobs API address)" ;;
  esac
  local problem
  problem="$(probe_jobs_api "$URL")" || die "$problem (check --address / RAY_ADDRESS and that the cluster is up)"
}

# probe_jobs_api URL: prints what is wrong and fails unless URL answers like a Ray Jobs API
# (GET /api/version: 200, or 401 from a head with token authentication) within REACH_TIMEOUT_S.
probe_jobs_api() {
  local rc=0
  timeout $((REACH_TIMEOUT_S + 2)) python - "$1" "$REACH_TIMEOUT_S" <<'PY' || rc=$?
import sys, urllib.error, urllib.request

url, seconds = sys.argv[1], float(sys.argv[2])
try:
    urllib.request.urlopen(url + "/api/version", timeout=seconds).close()
except urllib.error.HTTPError as exc:
    if exc.code not in (401, 403):
        sys.exit(print(f"{url} answers, but not as a Ray Jobs API (HTTP {exc.code} for /api/version)") or 1)
except (OSError, ValueError) as exc:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, TimeoutError):
        reason = f"no answer within {seconds:g}s"
    sys.exit(print(f"cannot reach the Ray Jobs API at {url} ({reason})") or 1)
PY
  [[ $rc -ne 124 ]] || echo "cannot reach the Ray Jobs API at $1 (no answer within ${REACH_TIMEOUT_S}s)"
  return "$rc"
}

# A head started with a token (~/.ray/auth_token) requires it: use it when one is available.
use_token_auth() {
  if [[ -z "${RAY_AUTH_MODE:-}" ]] &&
    { [[ -n "${RAY_AUTH_TOKEN:-}" ]] || [[ -f "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]]; }; then
    export RAY_AUTH_MODE=token
  fi
}

# ---- local head ----------------------------------------------------------------------------
head_start() {
  local num_cpus="${TETHER_HEAD_NUM_CPUS:-}"
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --num-cpus) num_cpus="${2:?--num-cpus needs a value}"; shift 2 ;;
      --num-cpus=*) num_cpus="${1#*=}"; shift ;;
      *) die "head start: unknown argument $1" ;;
    esac
  done
  local url attempt i
  url="$(local_url)"
  reachable "$url" 2 && { note "a Ray head already answers at $url"; return 0; }
  [[ "$HEAD_DIR" == /* ]] || HEAD_DIR="$PWD/$HEAD_DIR"
  mkdir -p "$HEAD_DIR"
  if [[ -z "${RAY_AUTH_MODE:-}" ]]; then  # token auth on by default; the token stays in ~/.ray
    export RAY_AUTH_MODE=token
    ray get-auth-token --generate >/dev/null 2>&1 || die "could not create a Ray auth token (ray get-auth-token --generate)"
  fi
  [[ "$DASHBOARD_HOST" == 127.0.0.1 ]] || note "warning: the dashboard / Jobs API will listen on $DASHBOARD_HOST"
  local agent_port args
  agent_port="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  args=(--head --temp-dir "$HEAD_DIR" --port "$GCS_PORT" --include-dashboard true
    --dashboard-host "$DASHBOARD_HOST" --dashboard-port "$DASHBOARD_PORT"
    --ray-client-server-port "$CLIENT_PORT" --dashboard-agent-listen-port "$agent_port" --disable-usage-stats)
  [[ -n "$num_cpus" ]] && args+=(--num-cpus "$num_cpus")
  note "starting a local Ray head (temp dir $HEAD_DIR) ..."
  for attempt in 1 2; do  # Ray gives its raylet 30 s to register: a busy machine can miss that once
    (unset RAY_ADDRESS RAY_API_SERVER_ADDRESS; ray start "${args[@]}") >"$HEAD_DIR/head-start.log" 2>&1 && break
    head_stop >/dev/null
    if [[ $attempt == 2 ]]; then
      tail -n 15 "$HEAD_DIR/head-start.log" >&2
      die "ray start failed (full log: $HEAD_DIR/head-start.log)"
    fi
    note "ray start failed; retrying once"
  done
  for i in $(seq 30); do reachable "$url" 2 && break; sleep 1; done
  reachable "$url" 2 || die "the head started but its dashboard does not answer at $url (log: $HEAD_DIR/head-start.log)"
  note "local Ray head up: dashboard $url, GCS $(cat "$HEAD_DIR/ray_current_cluster" 2>/dev/null)"
}

# Stops only the Ray processes of the head in $HEAD_DIR (never other Ray instances on the machine).
head_stop() {
  HEAD_DIR="$HEAD_DIR" python - <<'PY'
import contextlib, os, re, psutil

temp = os.path.abspath(os.environ["HEAD_DIR"])
address_file = os.path.join(temp, "ray_current_cluster")
gcs = open(address_file).read().strip() if os.path.exists(address_file) else None
me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
ray_cmd = re.compile(r"(/ray/|-m ray\.|^ray::)")

def of_this_head(args):
    if not args or not ray_cmd.search(" ".join(args[:3])):
        return False
    return any(temp + "/" in a or a.endswith("=" + temp) or (gcs and a == "--address=" + gcs) for a in args)

procs = {}
for p in psutil.process_iter(["cmdline"]):
    try:
        if p.pid not in me and of_this_head(p.info["cmdline"]):
            procs[p.pid] = p
            procs.update({c.pid: c for c in p.children(recursive=True) if c.pid not in me})
    except psutil.Error:
        pass
for p in procs.values():
    with contextlib.suppress(psutil.Error):
        p.terminate()
_, alive = psutil.wait_procs(list(procs.values()), timeout=5)  # gcs_server can linger on SIGTERM
for p in alive:
    with contextlib.suppress(psutil.Error):
        p.kill()
if os.path.exists(address_file):
    os.remove(address_file)
print(f"launch.sh: stopped the local Ray head in {temp} ({len(procs)} processes)" if procs
      else f"launch.sh: no local Ray head running in {temp}")
PY
}

head_cmd() {
  case "${1:-}" in
    start) shift; head_start "$@" ;;
    stop) head_stop ;;
    status) reachable "$(local_url)" 2 || { echo "not running (dashboard $(local_url))"; return 1; }
      echo "running: dashboard $(local_url), GCS $(cat "$HEAD_DIR/ray_current_cluster" 2>/dev/null || echo '?')" ;;
    *) die "head: expected start, stop or status" ;;
  esac
}

# ---- jobs ----------------------------------------------------------------------------------
# jobs_py MODE URL [JOB_ID]: status | wait | list | actors, through the Jobs and State APIs.
jobs_py() {
  python - "$@" <<'PY'
import sys, time
from ray.job_submission import JobStatus, JobSubmissionClient

mode, url = sys.argv[1], sys.argv[2]
job = sys.argv[3] if len(sys.argv) > 3 else None
try:
    client = JobSubmissionClient(url)
    info = client.get_job_info(job) if job else None
except Exception as exc:  # unknown job id, auth failure, not a Ray dashboard: one line, not a traceback
    sys.exit(print(f"launch.sh: error: job {job} at {url}: {str(exc).strip().splitlines()[0][:300]}",
                   file=sys.stderr) or 2)
if mode == "status":
    print(f"job {job}: {info.status.value}")
    if info.message:
        print(f"message: {info.message.strip().splitlines()[-1][:300]}")
    print(f"output_dir: {(info.metadata or {}).get('output_dir', '?')}\ndashboard: {url}")
elif mode == "wait":
    last = None
    try:
        while True:
            status = client.get_job_status(job)
            if status != last:
                print(f"launch.sh: job {job}: {status.value}", flush=True)
                last = status
            if status.is_terminal():
                break
            time.sleep(2)
    except KeyboardInterrupt:
        print(f"launch.sh: stopped waiting; the job keeps running (./launch.sh stop {job})", file=sys.stderr)
        sys.exit(130)
    sys.exit(0 if status == JobStatus.SUCCEEDED else 1)
elif mode == "list":
    for j in sorted(client.list_jobs(), key=lambda j: j.start_time or 0):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time / 1000)) if j.start_time else "-"
        where = (j.metadata or {}).get("output_dir") or j.entrypoint[:60]
        print(f"{j.submission_id or j.job_id:32} {j.status.value:10} {started}  {where}")
elif mode == "actors":
    from ray.util.state import list_actors, list_jobs

    ids = [j.job_id for j in list_jobs(address=url) if j.submission_id == job and j.job_id]
    if not ids:
        sys.exit(print(f"launch.sh: error: job {job} has no driver yet", file=sys.stderr) or 2)
    actors = list_actors(address=url, filters=[("job_id", "=", ids[0])], limit=10000, raise_on_missing_output=False)
    for a in sorted(actors, key=lambda a: a.name or ""):
        print(f"{a.name or '-':32} {a.class_name:18} {a.state}")
PY
}

job_args() {  # parses JOB_ID [--address URL] [--follow] for status / logs / stop / actors
  JOB_ID="" ADDRESS="" FOLLOW=""
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --address) ADDRESS="${2:?--address needs a value}"; shift 2 ;;
      --address=*) ADDRESS="${1#*=}"; shift ;;
      -f | --follow) FOLLOW=1; shift ;;
      -*) die "unknown option $1" ;;
      *) [[ -z "$JOB_ID" ]] || die "one JOB_ID expected, got $JOB_ID and $1"; JOB_ID="$1"; shift ;;
    esac
  done
}

submit() {
  local address="" follow="" no_wait="" submission_id=""
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --address) address="${2:?--address needs a value}"; shift 2 ;;
      --address=*) address="${1#*=}"; shift ;;
      --follow | -f) follow=1; shift ;;
      --no-wait) no_wait=1; shift ;;
      --submission-id) submission_id="${2:?--submission-id needs a value}"; shift 2 ;;
      --) shift; break ;;
      *) break ;;
    esac
  done
  [[ -n "$follow" && -n "$no_wait" ]] && die "--follow and --no-wait exclude each other"
  # Inside a job the working dir is a temporary upload, so the folder a run (output_dir) or a
  # multirun (hydra.sweep.dir) writes to is made absolute, with a default under this folder.
  local overrides=("$@") key=output_dir dir="" default="$OUTPUT_ROOT" i k stamp
  stamp="$(date +%Y-%m-%d_%H-%M-%S)_$(printf '%04x' $((RANDOM)))"
  if [[ " $* " == *" -m "* || " $* " == *" --multirun "* ]]; then key=hydra.sweep.dir default="$ROOT/multirun"; fi
  for i in "${!overrides[@]}"; do
    k="${overrides[$i]%%=*}"
    [[ "${k#"${k%%[!+]*}"}" == "$key" && "${overrides[$i]}" == *=* ]] || continue
    dir="${overrides[$i]#*=}"
    # shellcheck disable=SC2016  # a literal ${ marks a Hydra interpolation
    [[ "$dir" == /* || "$dir" == "~"* || "$dir" == *'${'* ]] || dir="$PWD/$dir"
    overrides[i]="$k=$dir"
  done
  [[ -n "$dir" ]] || { dir="$default/$stamp"; overrides+=("$key=$dir"); }
  [[ -n "$submission_id" ]] || submission_id="tether-$stamp"
  use_token_auth
  resolve_address "$address" start
  [[ -z "${WANDB_API_KEY:-}" ]] || note "WANDB_API_KEY is not sent with the job (secrets never go in runtime_env); the job logs to wandb online only if the Ray node running it has WANDB_API_KEY set"
  local runtime_env metadata
  { read -r runtime_env; read -r metadata; } < <(OUTPUT_DIR="$dir" python - <<'PY'
import json, os
e = os.environ
env = {"HF_HUB_OFFLINE": e.get("HF_HUB_OFFLINE", "1"),
       "WANDB_MODE": e.get("WANDB_MODE") or ("online" if e.get("WANDB_API_KEY") else "offline"),
       **{k: e[k] for k in ("TETHER_CACHE",) if e.get(k)}}  # no secrets: Ray logs runtime_env env vars
excludes = [".venv", ".git", "outputs", "multirun", "wandb", "__pycache__", "*.egg-info", ".pytest_cache", ".cache"]
print(json.dumps({"excludes": excludes, "env_vars": env}))
print(json.dumps({"project": "tether", "output_dir": e["OUTPUT_DIR"]}))
PY
)
  local log at=""
  log="$(ray job submit --address "$URL" --submission-id "$submission_id" --working-dir "$ROOT" \
    --runtime-env-json "$runtime_env" --metadata-json "$metadata" --no-wait --log-style record \
    -- python -m orchestrator "${overrides[@]}" 2>&1)" ||
    { grep -v '^\s*$' <<<"$log" | tail -n 15 >&2; die "ray job submit to $URL failed"; }
  [[ -n "$LOCAL_HEAD" ]] || at=" --address $URL"
  echo "job id: $submission_id"
  echo "dashboard: $URL"
  echo "$([[ $key == output_dir ]] && echo output_dir || echo sweep_dir): $dir"
  echo "follow: ./launch.sh logs $submission_id --follow$at | status: ./launch.sh status $submission_id$at | stop: ./launch.sh stop $submission_id$at"
  [[ -n "$no_wait" ]] && return 0
  if [[ -n "$follow" ]]; then
    ray job logs --address "$URL" --follow --log-style record "$submission_id" || true
  fi
  if ! jobs_py wait "$URL" "$submission_id"; then
    [[ -n "$follow" ]] || ray job logs --address "$URL" "$submission_id" 2>/dev/null | tail -n 40 >&2 || true
    return 1
  fi
}

# ---- TensorBoard ---------------------------------------------------------------------------
serve_tensorboard() {
  local dir="$OUTPUT_ROOT" port=6006 host=127.0.0.1
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --port) port="${2:?--port needs a value}"; shift 2 ;;
      --host) host="${2:?--host needs a value}"; shift 2 ;;
      -*) die "tensorboard: unknown option $1" ;;
      *) dir="$1"; shift ;;
    esac
  done
  [[ -d "$dir" ]] || die "tensorboard: no folder $dir (runs write <output_dir>/tensorboard)"
  [[ "$host" == 127.0.0.1 ]] || note "warning: TensorBoard will listen on $host"
  note "TensorBoard for $dir at http://$host:$port/ (Ctrl-C stops it)"
  exec tensorboard --logdir "$dir" --host "$host" --port "$port"
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    -h | --help | help) usage ;;
    submit) submit "$@" ;;
    status | logs | stop | actors)
      job_args "$@"
      [[ -n "$JOB_ID" ]] || die "$cmd: JOB_ID missing"
      use_token_auth
      resolve_address "$ADDRESS"
      case "$cmd" in
        status) jobs_py status "$URL" "$JOB_ID" ;;
        actors) jobs_py actors "$URL" "$JOB_ID" ;;
        logs) ray job logs --address "$URL" --log-style record ${FOLLOW:+--follow} "$JOB_ID" ;;
        stop) ray job stop --address "$URL" --log-style record "$JOB_ID" ;;
      esac ;;
    list)
      job_args "$@"
      use_token_auth
      resolve_address "$ADDRESS"
      jobs_py list "$URL" ;;
    head) head_cmd "$@" ;;
    tensorboard) serve_tensorboard "$@" ;;
    "") usage >&2; exit 2 ;;
    *) die "unknown command $cmd (see ./launch.sh --help)" ;;
  esac
}

main "$@"
