"""Helpers shared by the worker actors: process set-up, model loading, batched log-probs.

Batch layout (built by ``orchestrator.batching.pack_samples``): every sequence is its prompt,
left-padded to ``P`` tokens, followed by its response, right-padded to ``T`` tokens.
``input_ids``/``attention_mask``/``position_ids`` are ``[B, P+T]``; ``response_mask`` is ``[B, T]``.
The log-prob of response token ``j`` comes from the logits at position ``P + j - 1``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import inspect
import os
import random

import numpy as np
import torch

from orchestrator.batching import flatten_pairs

from orchestrator import quiet
from orchestrator.specs import ProcessSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def setup_process(process: ProcessSpec) -> int:
    """Quiet the libraries' notices (unless ``logger.verbose``, see orchestrator/quiet.py), seed every
    generator and set the intra-op threads: ``cluster.torch_threads``, or with auto (None) the CPUs of
    this node (see orchestrator/threads.py); with ``cluster.keep_freed_memory`` freed memory stays in the
    process (:func:`keep_freed_memory`). Returns the threads set."""
    quiet.setup_actor()
    if process.keep_freed_memory:
        keep_freed_memory()
    torch.set_num_threads(int(process.torch_threads or (node_cpus() if process.device == "cpu" else actor_cpus())))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    random.seed(process.seed)
    np.random.seed(process.seed % (2**32))
    torch.manual_seed(process.seed)
    return torch.get_num_threads()


# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep what this process frees, for the next step to reuse.

    By default every allocation over the mmap threshold (at most 32 MiB: a step's logits, activations
    and gradients) gets fresh pages from the kernel and gives them back when freed, so each step faults
    in and zeroes its memory again: a third of a CPU training step went to the kernel here. With no
    mmap'd allocations and no trimming, the heap grows to the step's peak once and is reused after.
    Returns False (and changes nothing) where the C library has no ``mallopt`` (not glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1)))


def _ray():
    """The ray module when this process is connected to Ray, else None (also where Ray is not installed)."""
    try:
        import ray
    except ImportError:
        return None
    return ray if ray.is_initialized() else None


def node_id() -> str:
    """The Ray node this process runs on ("" outside Ray)."""
    ray = _ray()
    return ray.get_runtime_context().get_node_id() if ray else ""


def node_cpus() -> int:
    """The CPUs of this process's node as Ray counts them (``ray start --num-cpus``, ``cluster.num_cpus``),
    at most the cores this process may run on."""
    ray, cores = _ray(), len(os.sched_getaffinity(0))
    if ray is None:
        return cores
    me = node_id()
    cpus = next((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["NodeID"] == me), 0)
    return max(1, min(int(cpus) or cores, cores))


def actor_cpus() -> int:
    """The CPUs Ray reserved for this actor (at least 1)."""
    ray = _ray()
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1) if ray else 1
    return max(1, int(cpus))


class ThreadShare:
    """Lets the driver change an actor's intra-op threads between calls (``cluster.torch_threads`` auto):
    fewer while other actors on its node compute at the same time, back to ``alone_threads`` after."""

    alone_threads: int = 1

    def node_cpus(self) -> tuple[str, int]:
        """``(node id, CPUs)`` of this actor's node."""
        return node_id(), node_cpus()

    def use_threads(self, n: int | None) -> int:
        """Compute with ``n`` threads from the next call on (None: ``alone_threads``); returns them."""
        torch.set_num_threads(int(n or self.alone_threads))
        return torch.get_num_threads()


def device_for(device: str) -> torch.device:
    """``cpu`` or the GPU Ray gave this actor."""
    if device == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def load_causal_lm(path: str, process: ProcessSpec):
    """Load an HF causal LM from a local folder (safetensors only), in the process's dtype and device."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=DTYPES[process.dtype], trust_remote_code=process.trust_remote_code, use_safetensors=True
    )
    return disable_dropout(model).to(device_for(process.device))


def to_device(batch: dict, device) -> dict:
    """Move the tensors of a batch dict to ``device``."""
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def keeps_logits(model) -> bool:
    """Whether ``model``'s forward (a DeepSpeed engine's module's) takes ``logits_to_keep``, i.e. can
    skip the output head on positions nobody reads (HF causal LMs do; classification heads do not)."""
    forward = getattr(model, "module", model).forward
    return "logits_to_keep" in inspect.signature(forward).parameters


def response_logits(model, batch: dict) -> torch.Tensor:
    """Logits ``[B, T, V]`` that predict each response token. The output head runs only on the last
    ``T + 1`` positions when the model allows it (on SmolLM2 the head is ~20% of a forward's work and
    the prompt often more than half of the positions). Rows that share a prompt (a GRPO group, a DPO
    pair) run it once: see ``shared_prompt_logits``."""
    prompt_len = batch["prompt_len"]
    resp_len = batch["response_mask"].shape[1]
    if keeps_logits(model) and resp_len > 1:
        groups = prompt_groups(batch)
        if groups is not None:
            logits = shared_prompt_logits(model, batch, *groups)
            if logits is not None:
                return logits
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  position_ids=batch["position_ids"], use_cache=False)
    if keeps_logits(model):  # positions P-1 .. P+T-1 of P+T; the last one predicts nothing we score
        return model(**inputs, logits_to_keep=resp_len + 1).logits[:, :resp_len].float()
    return model(**inputs).logits[:, prompt_len - 1 : prompt_len - 1 + resp_len].float()


def prompt_groups(batch: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(first, group)`` when some rows of a ``[B, P+T]`` batch share their (left-padded) prompt: the
    first row of each distinct prompt, and each row's index into ``first``. None when none do."""
    p = batch["prompt_len"]
    key = torch.cat([batch["input_ids"][:, :p], batch["attention_mask"][:, :p]], dim=1)
    distinct, group = torch.unique(key, dim=0, return_inverse=True)
    n = key.shape[0]
    if distinct.shape[0] == n:
        return None
    first = torch.full((distinct.shape[0],), n).scatter_reduce(0, group, torch.arange(n), "amin")
    return first, group


def shuffled_order(batch: dict, gen: torch.Generator, by_group: bool) -> torch.Tensor:
    """A random order of the batch's rows (pairs). ``by_group``: rows that share a prompt stay next to
    each other (their groups in random order, each in its batch order), so that a micro-batch holds
    whole groups and runs each prompt once (``shared_prompt_logits``)."""
    n = batch["input_ids"].shape[0]
    groups = prompt_groups(batch) if by_group and batch["input_ids"].dim() == 2 else None
    if groups is None:
        return torch.randperm(n, generator=gen)
    first, group = groups
    place = torch.empty_like(first)
    place[torch.randperm(first.shape[0], generator=gen)] = torch.arange(first.shape[0])
    return torch.argsort(place[group] * n + torch.arange(n))


def shared_prompt_logits(model, batch: dict, first: torch.Tensor, group: torch.Tensor) -> torch.Tensor | None:
    """Response logits ``[B, T, V]`` computed with each distinct prompt run through the model once: its
    keys and values (a ``DynamicCache``, indexed per row, so gradients from every row flow back into the
    one prompt forward) are what the rows' responses attend to. The same numbers as one forward per row
    up to float rounding, for fewer FLOPs: with 4 samples of a 40-token prompt and 32-token responses,
    43% fewer positions. None (the caller runs whole rows) for a model whose cache is not plain per-layer
    keys and values, e.g. sliding-window attention, whose prompt cache keeps only the window (found on the
    first call, then remembered on the model so it is not tried again)."""
    from transformers.cache_utils import DynamicLayer

    core = getattr(model, "module", model)  # a DeepSpeed engine's model
    if getattr(core, "tether_whole_rows_only", False):
        return None
    p = batch["prompt_len"]
    ids, mask, pos = batch["input_ids"], batch["attention_mask"], batch["position_ids"]
    head = model(input_ids=ids[first, :p], attention_mask=mask[first, :p], position_ids=pos[first, :p],
                 use_cache=True, logits_to_keep=1)
    cache = head.past_key_values
    if not all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None])):
        core.tether_whole_rows_only = True
        return None
    cache.batch_select_indices(group)
    # response tokens 0 .. T-2 as inputs (the last one predicts nothing we score), after the P cached positions
    tail = model(input_ids=ids[:, p:-1], attention_mask=mask[:, :-1], position_ids=pos[:, p:-1],
                 past_key_values=cache, use_cache=True)
    return torch.cat([head.logits[group], tail.logits], dim=1).float()


def policy_logits(model, batch: dict) -> torch.Tensor:
    """Response logits divided by the sampling temperature (``batch["temperature"]``, default 1),
    so log-probs describe the distribution the responses were sampled from."""
    return response_logits(model, batch) / float(batch.get("temperature", 1.0))


def disable_dropout(model):
    """Set every dropout probability of ``model`` to 0 (modules and config); returns the model."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for key, value in vars(model.config).items():
        if "dropout" in key and isinstance(value, float):
            setattr(model.config, key, 0.0)
    return model


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of ``tokens`` ``[B, T]`` under ``logits`` ``[B, T, V]``."""
    logz = torch.logsumexp(logits, dim=-1)
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - logz


def response_tokens(batch: dict) -> torch.Tensor:
    """Response token ids ``[B, T]``."""
    return batch["input_ids"][:, batch["prompt_len"] :]


def split_batch(batch: dict, size: int) -> list[dict]:
    """Split a batch dict along dim 0 into chunks of at most ``size`` rows."""
    n = batch["input_ids"].shape[0]
    chunks = []
    for start in range(0, n, size):
        chunks.append({k: (v[start : start + size] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()})
    return chunks


@torch.no_grad()
def batched_logprobs(model, batch: dict, micro_batch_size: int) -> torch.Tensor:
    """Response log-probs ``[B, T]`` in micro-batches, zero where ``response_mask`` is 0."""
    device = next(model.parameters()).device
    parts = []
    for chunk in split_batch(batch, micro_batch_size):
        chunk = to_device(chunk, device)
        logp = gather_logprobs(policy_logits(model, chunk), response_tokens(chunk))
        parts.append((logp * chunk["response_mask"]).cpu())
    return torch.cat(parts)


def pair_sequence_logprobs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs ``[B, 2]`` of a pair batch, and the response lengths ``[B, 2]``."""
    flat = flatten_pairs({k: v for k, v in batch.items() if k != "ref_logps"})
    logp = gather_logprobs(policy_logits(model, flat), response_tokens(flat)) * flat["response_mask"]
    return logp.sum(-1).view(-1, 2), flat["response_mask"].sum(-1).view(-1, 2)
