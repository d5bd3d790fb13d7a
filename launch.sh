#!/usr/bin/env bash
# launch.sh: run Tether pipelines as Ray jobs (Ray Jobs API), manage a local Ray head node and serve
# TensorBoard. The logic is orchestrator/launch.py; `./launch.sh --help` lists the commands.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The project's venv (make install) provides `ray`, `tensorboard` and the `python` that jobs on a
# local head run with: a head started from here inherits this PATH.
if [[ -z "${VIRTUAL_ENV:-}" && -x "$ROOT/.venv/bin/python" ]]; then PATH="$ROOT/.venv/bin:$PATH"; fi
export PATH PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec python -m orchestrator.launch "$@"
