"""The floor: one process, plain PyTorch, policy + frozen reference copy, sigmoid DPO, AdamW, fp32.

    python bench/peers/dpo_plain.py MODEL_DIR OUT.json
"""

import copy
import json
import resource
import os
import sys
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

import common as c


def logps(model, ids, mask, resp):
    """Sum of log-probs of the response tokens of each sequence."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    lp = torch.gather(logits.log_softmax(-1), 2, ids[:, 1:, None]).squeeze(2)
    return (lp * resp[:, 1:]).sum(-1)


def collate(pairs, pad):
    seqs = [(p["prompt_ids"], p[k]) for k in ("chosen_ids", "rejected_ids") for p in pairs]
    n = max(len(a) + len(b) for a, b in seqs)
    ids = torch.full((len(seqs), n), pad)
    mask, resp = torch.zeros(len(seqs), n), torch.zeros(len(seqs), n)
    for i, (a, b) in enumerate(seqs):
        ids[i, :len(a) + len(b)] = torch.tensor(a + b)
        mask[i, :len(a) + len(b)] = 1
        resp[i, len(a):len(a) + len(b)] = 1
    return ids, mask.long(), resp


def main(model_dir, out):
    torch.set_num_threads(c.THREADS)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=c.LR)
    data = c.encode(tok, c.rows())
    times, first, tokens = [], None, 0
    for step in range(c.STEPS):
        t = time.perf_counter()
        ids, mask, resp = collate(data[step * c.BATCH:(step + 1) * c.BATCH], tok.pad_token_id or 0)
        tokens += int(mask.sum())
        with torch.no_grad():
            ref_lp = logps(ref, ids, mask, resp)
        lp = logps(policy, ids, mask, resp)
        ratio = (lp - ref_lp).view(2, -1)
        loss = -F.logsigmoid(c.BETA * (ratio[0] - ratio[1])).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
        if first is None:
            first = c.since_start(os.environ.get(c.T0_ENV))
        print(f"plain step {step + 1}: {times[-1]:.2f} s loss {loss.item():.4f}", flush=True)
    res = c.summary(times, first, threads=torch.get_num_threads(),
                    peak_rss_mb={"process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)},
                    tokens_per_step=tokens / c.STEPS)
    json.dump(res, open(out, "w"), indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
