"""GPU check of Tether's trainer side alone: DeepSpeed ZeRO-2 and ZeRO-3 in bf16 on NCCL, through the
project's own trainer rank (``workers.trainer.TrainerRank``) and objectives (``workers/objectives.py``),
without Ray or vLLM. Runs on a bare GPU machine with torch, transformers, accelerate and DeepSpeed
(DeepSpeed's source with its small dependencies: hjson, ninja, py-cpuinfo, pydantic, msgpack, einops,
psutil) plus omegaconf (``orchestrator.specs`` imports it).

    python bench/gpu/trainer_check.py                        # one process, world of 1
    torchrun --nproc-per-node 2 bench/gpu/trainer_check.py   # several GPUs: one rank each
    python bench/gpu/trainer_check.py --model /path/to/hf-folder --report bench/gpu/REPORT-trainer.md

For each ZeRO stage (2, 3) and objective (``ppo``: clipped surrogate with made-up advantages;
``dpo``: sigmoid preference loss with reference log-probs) it builds the engine (bf16, NCCL), takes
``--steps`` optimizer steps on one fixed batch, and checks: every loss is finite, the parameters stay
bf16, the weights move, the ranks agree on the weights, and the DPO loss falls on the batch it trains
on. Without ``--model`` the model is a randomly initialised Llama with SmolLM2-135M's shape (no
download). Exit status 0 when every check passed; a Markdown table goes to stdout and ``--report``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root, for a plain checkout

from orchestrator.batching import pack_samples, with_fields  # noqa: E402
from orchestrator.specs import ProcessSpec, TrainerSpec  # noqa: E402
from workers.trainer import TrainerRank  # noqa: E402

PPO = {"policy_loss": "ppo", "clip_eps": 0.2, "entropy_coef": 0.0, "kl_mode": "reward", "kl_estimator": "k1"}
DPO = {"preference_loss": "sigmoid", "beta": 0.1, "label_smoothing": 0.0, "simpo_gamma": 0.5, "orpo_lambda": 0.1}
SMOLLM2_135M_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                          rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)


def random_model(folder: str, tiny: bool = False) -> str:
    """A randomly initialised Llama of SmolLM2-135M's shape (``tiny``: 2 small layers), saved as
    safetensors in ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = {**SMOLLM2_135M_SHAPE, **(dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2) if tiny else {})}
    LlamaForCausalLM(LlamaConfig(**shape)).to(torch.bfloat16).save_pretrained(folder)
    return folder


def ppo_batch(rows: int, vocab: int) -> dict:
    gen = torch.Generator().manual_seed(1)
    samples = [{"prompt_ids": torch.randint(5, vocab, (12 + i % 5,), generator=gen).tolist(),
                "response_ids": torch.randint(5, vocab, (24 - i % 7,), generator=gen).tolist()} for i in range(rows)]
    batch = pack_samples(samples, pad_id=0)
    adv = torch.linspace(-1, 1, rows)[:, None] * batch["response_mask"]
    return with_fields(batch, advantages=adv)


def dpo_batch(pairs: int, vocab: int) -> dict:
    """Rows chosen_0, rejected_0, ... packed together, then viewed as ``[pairs, 2, ...]``."""
    gen = torch.Generator().manual_seed(2)
    samples = []
    for i in range(pairs):
        prompt = torch.randint(5, vocab, (10 + i % 4,), generator=gen).tolist()
        samples += [{"prompt_ids": prompt, "response_ids": torch.randint(5, vocab, (16,), generator=gen).tolist()},
                    {"prompt_ids": prompt, "response_ids": torch.randint(5, vocab, (12 + i % 5,), generator=gen).tolist()}]
    flat = pack_samples(samples, pad_id=0)
    batch = {k: (v.view(pairs, 2, *v.shape[1:]) if isinstance(v, torch.Tensor) else v) for k, v in flat.items()}
    return with_fields(batch, ref_logps=torch.full((pairs, 2), -80.0))


def run_case(model: str, stage: int, objective: str, steps: int, rank: int, world: int, master: tuple[str, int],
             vocab: int, device: str = "cuda") -> dict:
    rows = 8 * world
    gpu = device == "cuda"
    dtype = "bfloat16" if gpu else "float32"  # --device cpu: a gloo smoke run of this script's logic
    threads = max(1, min(8, (os.cpu_count() or 1) // world))  # set here: the automatic choice asks Ray
    spec = TrainerSpec(process=ProcessSpec(seed=0, device=device, dtype=dtype, torch_threads=threads),
                       objective=objective, lr=1e-4 if objective == "dpo" else 1e-5, zero_stage=stage,
                       mini_batch_size=rows, micro_batch_size=4, algorithm=PPO if objective == "ppo" else DPO)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    start = time.monotonic()
    trainer = TrainerRank("policy", model, spec, rank, world)
    trainer.setup(master)
    setup_s = time.monotonic() - start
    full = ppo_batch(rows, vocab) if objective == "ppo" else dpo_batch(rows, vocab)
    mine = {k: (v[rank::world] if isinstance(v, torch.Tensor) else v) for k, v in full.items()}
    if objective == "ppo":
        mine = with_fields(mine, old_logprobs=trainer.logprobs(mine).cpu())
    before = trainer.weights_checksum()
    dtypes = {p.dtype for p in trainer.engine.module.parameters()}
    losses, step_s = [], []
    for step in range(steps):
        t0 = time.monotonic()
        out = trainer.train(mine, epochs=1, seed=step)
        if gpu:
            torch.cuda.synchronize()
        step_s.append(time.monotonic() - t0)
        losses.append(out["loss"])
    after = trainer.weights_checksum()
    agree = _all_ranks_equal(after, trainer.device)
    result = {"stage": stage, "objective": objective, "setup_s": setup_s, "step_s": sum(step_s[1:]) / max(1, steps - 1),
              "first_loss": losses[0], "last_loss": losses[-1], "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else 0.0,
              "checks": {
                  "losses finite": all(torch.isfinite(torch.tensor(losses)).tolist()),
                  f"parameters {dtype}": dtypes == {getattr(torch, dtype)},
                  "weights moved": after != before,
                  "ranks agree": agree,
                  **({"loss falls": losses[-1] < losses[0]} if objective == "dpo" else {}),
              }}
    del trainer
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()
    return result


def _all_ranks_equal(value: float, device) -> bool:
    import torch.distributed as dist

    t = torch.tensor([value, -value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t[0]) == value and float(-t[1]) == value


def report(results: list[dict], world: int, device: str) -> str:
    import deepspeed
    import transformers

    if device == "cuda":
        where = (f"{world} x {torch.cuda.get_device_name()}; torch {torch.__version__} (CUDA {torch.version.cuda}), "
                 f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}; bf16")
    else:
        where = f"CPU smoke run (gloo, float32), world {world}; torch {torch.__version__}"
    lines = [f"# Trainer check ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"{where}; DeepSpeed {deepspeed.__version__}, transformers {transformers.__version__}; model: "
             f"{os.environ.get('TETHER_CHECK_MODEL')}",
             "", "| ZeRO | objective | set-up s | s / step | loss first -> last | peak GiB | checks |", "|---|---|---|---|---|---|---|"]
    for r in results:
        failed = [k for k, ok in r["checks"].items() if not ok]
        lines.append(f"| {r['stage']} | {r['objective']} | {r['setup_s']:.1f} | {r['step_s']:.3f} | "
                     f"{r['first_loss']:.4f} -> {r['last_loss']:.4f} | {r['peak_gib']:.2f} | "
                     f"{'all passed' if not failed else 'FAILED: ' + ', '.join(failed)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="HF model folder (safetensors); default: random SmolLM2-135M shape")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--stages", default="2,3")
    parser.add_argument("--objectives", default="ppo,dpo")
    parser.add_argument("--report", help="also write the Markdown report here")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # 2-layer model: quick smoke run
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("trainer_check: no CUDA device", file=sys.stderr)
        return 2
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    master = (os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", 0) or _free_port()))
    with tempfile.TemporaryDirectory(prefix="tether-gpu-check-") as tmp:
        if args.model:
            model = args.model
            os.environ["TETHER_CHECK_MODEL"] = args.model
        else:  # every rank builds the same seeded model in its own folder
            model = random_model(os.path.join(tmp, f"model-rank{rank}"), args.tiny)
            os.environ["TETHER_CHECK_MODEL"] = "random 2-layer Llama" if args.tiny else "random SmolLM2-135M shape"
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(model).vocab_size
        results = [run_case(model, int(s), o, args.steps, rank, world, master, vocab, args.device)
                   for s in args.stages.split(",") for o in args.objectives.split(",")]
    text = report(results, world, args.device)
    if rank == 0:
        print(text)
        if args.report:
            Path(args.report).write_text(text)
    return 0 if all(all(r["checks"].values()) for r in results) else 1


def _free_port() -> int:
    from workers.nccl_weight_sender import free_port

    return free_port()


if __name__ == "__main__":
    sys.exit(main())
