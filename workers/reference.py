"""ReferenceWorker: a frozen copy of the initial policy giving per-token log-probs."""

from __future__ import annotations

import torch

from workers.common import batched_logprobs, load_causal_lm, setup_process


class ReferenceWorker:
    """One reference actor (the KL anchor)."""

    def __init__(self, model_path: str, cfg: dict):
        setup_process(cfg["seed"], cfg.get("torch_threads"))
        self.cfg = cfg
        self.model = load_causal_lm(model_path, cfg["dtype"], cfg["device"], cfg["trust_remote_code"])
        self.model.eval().requires_grad_(False)

    def logprobs(self, batch: dict) -> torch.Tensor:
        """Response log-probs ``[B, T]`` (zero on padding)."""
        return batched_logprobs(self.model, batch, self.cfg["batch_size"])
