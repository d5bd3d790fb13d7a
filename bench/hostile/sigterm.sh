#!/bin/bash
# SIGTERM a running sft run (save_steps=1) right after its 3rd metrics row, i.e. around its checkpoint write, then resume=auto
cd "$(dirname "$0")/../.."
H="${H:-/tmp/hostile}"; mkdir -p "$H/logs"
rm -rf $H/C
.venv/bin/python -m orchestrator pipeline=sft rollout=hf trainer.max_steps=30 trainer.save_steps=1 logger.progress_bar=false logger.wandb=false output_dir=$H/C > $H/logs/C.log 2>&1 &
PID=$!
for i in $(seq 600); do n=$(cat $H/C/metrics.jsonl 2>/dev/null | wc -l); [ "$n" -ge 3 ] && break; sleep 0.05; done
kill -TERM $PID; wait $PID; echo "rc after SIGTERM=$?"
ls -a $H/C $H/C/checkpoints
tail -2 $H/C/metrics.jsonl | cut -c1-60
sleep 5; echo "ray processes left: $(ps -eo cmd | grep -E '[r]aylet|[g]cs_server' | grep -v ci_before | wc -l)"
timeout 300 .venv/bin/python -m orchestrator pipeline=sft rollout=hf trainer.max_steps=6 trainer.save_steps=1 logger.progress_bar=false logger.wandb=false output_dir=$H/C resume=auto > $H/logs/C2.log 2>&1; echo "resume rc=$?"
grep -E "resumed|skipping|error|Traceback|torn" $H/logs/C2.log
python3 -c "import json; print([json.loads(l)['step'] for l in open('$H/C/metrics.jsonl') if l.strip()])"
