"""TRL's DPOTrainer on the same model, pairs, batch and loss (run in bench/peers/.venv-trl).

    .venv-trl/bin/python bench/peers/dpo_trl.py MODEL_DIR OUT.json WORK_DIR

fp32 (bf16=False) and no gradient checkpointing (TRL's DPOConfig turns both on by default), like the
plain loop and Tether. The prompt is given already chat-templated (the same text Tether renders),
chosen/rejected as plain text: TRL appends EOS, as Tether does.
"""

import json
import resource
import os
import sys
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer

import common as c


class StepTimes(TrainerCallback):
    def __init__(self):
        self.times, self.first, self._t = [], None, 0.0

    def on_step_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t)
        if self.first is None:
            self.first = c.since_start(os.environ.get(c.T0_ENV))
        print(f"trl step {state.global_step}: {self.times[-1]:.2f} s", flush=True)


def main(model_dir, out, work):
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    data = Dataset.from_list([{"prompt": c.render(tok, r["prompt"]), "chosen": r["chosen"], "rejected": r["rejected"]}
                              for r in c.rows()])
    args = DPOConfig(output_dir=work, use_cpu=True, per_device_train_batch_size=c.BATCH, learning_rate=c.LR,
                     beta=c.BETA, loss_type=["sigmoid"], max_steps=c.STEPS, bf16=False,
                     gradient_checkpointing=False, logging_steps=1, report_to="none", save_strategy="no",
                     seed=0, dataloader_num_workers=0, disable_tqdm=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    timer = StepTimes()
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[timer])
    ds = trainer.train_dataset
    tokens = sum(2 * len(p) + len(a) + len(b) for p, a, b in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]))
    trainer.train()
    res = c.summary(timer.times, timer.first, threads=torch.get_num_threads(),
                    peak_rss_mb={"process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)},
                    tokens_per_step=tokens / len(ds) * c.BATCH)
    json.dump(res, open(out, "w"), indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:4])
