"""FeedbackWorker: a frozen language model answering multiple-choice questions (AI feedback).

Constitutional AI's stage 2 asks it which of two responses better follows a principle; its answer
is the log-probability of each option letter (``A``, ``B``, ...) right after the question, so no
text is sampled and the label comes with a probability.
"""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from orchestrator.batching import pack_samples
from orchestrator.batching import pad_token_id
from orchestrator.specs import ForwardSpec
from workers.common import batched_logprobs, load_causal_lm, ThreadShare, setup_process


class FeedbackWorker(ThreadShare):
    """One feedback-model actor (role ``feedback``)."""

    def __init__(self, model_path: str, spec: ForwardSpec):
        self.alone_threads = setup_process(spec.process)
        self.spec = spec
        self.model = load_causal_lm(model_path, spec.process)
        self.model.eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=spec.process.trust_remote_code)
        self.pad_id = pad_token_id(self.tokenizer)

    def ready(self) -> bool:
        """True once the model is loaded."""
        return True

    def option_logprobs(self, questions: list[str], options: list[str]) -> torch.Tensor:
        """``[len(questions), len(options)]``: log-prob of each option's tokens right after each
        question (questions are left-truncated to ``max_length`` tokens)."""
        encode = lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        option_ids = [encode(o) for o in options]
        limit = self.spec.max_length
        samples = [{"prompt_ids": encode(q)[-limit:], "response_ids": ids} for q in questions for ids in option_ids]
        logp = batched_logprobs(self.model, pack_samples(samples, self.pad_id), self.spec.batch_size)
        return logp.sum(-1).view(len(questions), len(options))
