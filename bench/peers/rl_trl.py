"""TRL's GRPOTrainer or RLOOTrainer on the same model, prompts, reward and sizes as Tether's
``pipeline=rlhf algorithm=grpo|rloo`` (run in bench/peers/.venv-trl).

    .venv-trl/bin/python bench/peers/rl_trl.py grpo|rloo MODEL_DIR OUT.json WORK_DIR

8 prompts a step x 4 samples x at most 32 new tokens (transformers ``generate``, temperature 1), one
optimizer step per batch of samples (8 samples a forward, 4 accumulated), no KL term (beta 0: no
reference model), fp32, no gradient checkpointing. A step (between TRL's step callbacks) holds the
generation, the reward and the update.
"""

import json
import resource
import sys

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

import common as c
from dpo_trl import StepTimes


def main(algo, model_dir, out, work):
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    config_cls, trainer_cls = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}[algo]
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    data = Dataset.from_list([{"prompt": c.render(tok, r["prompt"])} for r in c.rows(c.PROMPTS)])
    rl = c.RL
    micro = 8
    args = config_cls(output_dir=work, use_cpu=True, per_device_train_batch_size=micro,
                      gradient_accumulation_steps=rl["prompts_per_step"] * rl["samples"] // micro,
                      num_generations=rl["samples"], max_completion_length=rl["new_tokens"], temperature=1.0,
                      learning_rate=rl["lr"], beta=0.0, max_steps=rl["steps"], bf16=False, gradient_checkpointing=False,
                      logging_steps=1, report_to="none", save_strategy="no", seed=0, dataloader_num_workers=0,
                      disable_tqdm=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    timer = StepTimes()
    trainer = trainer_cls(model=model, args=args, reward_funcs=c.letter_frequency, train_dataset=data,
                          processing_class=tok, callbacks=[timer])
    trainer.train()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res = c.summary(timer.times, timer.first, threads=torch.get_num_threads(), peak_rss_mb={"TRL process": peak_mb})
    json.dump(res, open(out, "w"), indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:5])
