"""FeedbackWorker: a frozen language model answering multiple-choice questions (AI feedback).

Constitutional AI's stage 2 asks it which of two responses better follows a principle; its answer
is the log-probability of each option letter (``A``, ``B``, ...) right after the question, so no
text is sampled and the label comes with a probability.
"""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from orchestrator.batching import pack_samples
from workers.common import batched_logprobs, load_causal_lm, setup_process


class FeedbackWorker:
    """One feedback-model actor (role ``feedback``)."""

    def __init__(self, model_path: str, cfg: dict):
        setup_process(cfg["seed"], cfg.get("torch_threads"))
        self.cfg = cfg
        self.model = load_causal_lm(model_path, cfg["dtype"], cfg["device"], cfg["trust_remote_code"])
        self.model.eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg["trust_remote_code"])
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id

    def ready(self) -> bool:
        """True once the model is loaded."""
        return True

    def option_logprobs(self, questions: list[str], options: list[str]) -> torch.Tensor:
        """``[len(questions), len(options)]``: log-prob of each option's tokens right after each
        question (questions are left-truncated to ``max_prompt_tokens`` tokens)."""
        encode = lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        option_ids = [encode(o) for o in options]
        limit = self.cfg["max_prompt_tokens"]
        samples = [{"prompt_ids": encode(q)[-limit:], "response_ids": ids} for q in questions for ids in option_ids]
        logp = batched_logprobs(self.model, pack_samples(samples, self.pad_id), self.cfg["batch_size"])
        return logp.sum(-1).view(len(questions), len(options))
