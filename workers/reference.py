"""ReferenceWorker: a frozen copy of the initial policy giving per-token log-probs."""

from __future__ import annotations

import torch

from orchestrator.specs import ForwardSpec
from workers.common import batched_logprobs, load_causal_lm, ThreadShare, setup_process


class ReferenceWorker(ThreadShare):
    """One reference actor (the KL anchor)."""

    def __init__(self, model_path: str, spec: ForwardSpec):
        self.alone_threads = setup_process(spec.process)
        self.spec = spec
        self.model = load_causal_lm(model_path, spec.process)
        self.model.eval().requires_grad_(False)

    def logprobs(self, batch: dict) -> torch.Tensor:
        """Response log-probs ``[B, T]`` (zero on padding)."""
        return batched_logprobs(self.model, batch, self.spec.batch_size)
