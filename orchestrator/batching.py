"""Turn rollout samples into padded tensors and split batches between ranks.

Layout (see ``workers.common``): prompt left-padded to ``P``, response right-padded to ``T``.
"""

from __future__ import annotations

import torch


def pad_token_id(tokenizer) -> int:
    """The id every batch is padded with: the tokenizer's pad token, else its eos token. A
    sequence-classification model (reward model) must be given the same id as
    ``config.pad_token_id``: it scores the last token that is not this id."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def pack_samples(samples: list[dict], pad_id: int, temperature: float = 1.0) -> dict:
    """Pack ``[{"prompt_ids", "response_ids"}, ...]`` into a batch dict of tensors (plus the
    sampling ``temperature``, which log-prob computations divide the logits by)."""
    prompt_len = max(len(s["prompt_ids"]) for s in samples)
    resp_len = max(1, max(len(s["response_ids"]) for s in samples))
    n = len(samples)
    input_ids = torch.full((n, prompt_len + resp_len), pad_id, dtype=torch.long)
    attention = torch.zeros((n, prompt_len + resp_len), dtype=torch.long)
    response_mask = torch.zeros((n, resp_len), dtype=torch.float32)
    for i, s in enumerate(samples):
        p, r = s["prompt_ids"], s["response_ids"]
        input_ids[i, prompt_len - len(p) : prompt_len] = torch.tensor(p, dtype=torch.long)
        attention[i, prompt_len - len(p) : prompt_len] = 1
        if r:
            input_ids[i, prompt_len : prompt_len + len(r)] = torch.tensor(r, dtype=torch.long)
            attention[i, prompt_len : prompt_len + len(r)] = 1
            response_mask[i, : len(r)] = 1.0
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    batch = {"input_ids": input_ids, "attention_mask": attention, "position_ids": position_ids,
             "response_mask": response_mask, "prompt_len": prompt_len, "temperature": float(temperature)}
    if all("logprobs" in s for s in samples):  # the engines' sampling log-probs (rollout.asynchronous)
        sampling = torch.zeros((n, resp_len), dtype=torch.float32)
        for i, s in enumerate(samples):
            sampling[i, : len(s["logprobs"])] = torch.tensor(s["logprobs"], dtype=torch.float32)
        batch["sampling_logprobs"] = sampling
    return batch


def shard(batch: dict, num_shards: int) -> list[dict]:
    """Split rows into ``num_shards`` equal contiguous shards (rows must divide evenly)."""
    n = batch["input_ids"].shape[0]
    if n % num_shards:
        raise ValueError(f"{n} rows do not split evenly over {num_shards} ranks")
    size = n // num_shards
    return [{k: (v[i * size : (i + 1) * size] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            for i in range(num_shards)]


def with_fields(batch: dict, **fields) -> dict:
    """A shallow copy of ``batch`` with extra entries."""
    out = dict(batch)
    out.update(fields)
    return out


def flatten_pairs(batch: dict) -> dict:
    """A pair batch (tensors ``[B, 2, ...]``: chosen at ``[:, 0]``, rejected at ``[:, 1]``) as ``[2B, ...]``
    rows in the order chosen_0, rejected_0, chosen_1, ...; plain values are kept."""
    return {k: (v.reshape(-1, *v.shape[2:]) if isinstance(v, torch.Tensor) and v.dim() >= 2 else v)
            for k, v in batch.items()}
