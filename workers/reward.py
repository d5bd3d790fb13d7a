"""RewardWorker: scores (prompt, response) pairs with a Python function, a reward model, a remote
reward server (``orchestrator.rewards.remote``), or a weighted sum of them.

The reward model is any local HF sequence-classification folder with one output (the
``pipeline=rm`` output). With several sources the reward is the weighted sum
``function_weight * f + model_weight * rm + remote_weight * remote``; each part is also returned.

The reward server's token comes as a constructor argument (a ``Secret``, through Ray's task spec),
never through ``runtime_env`` env vars, which Ray writes to its session logs.
"""

from __future__ import annotations

import os
import uuid

import torch

from orchestrator.batching import pad_token_id
from orchestrator.preference_data import reward_text
from orchestrator.rewards.loader import call_reward_function, load_reward_function
from orchestrator.rewards.remote import remote_scores
from orchestrator.runtime import Secret
from orchestrator.specs import RewardSpec
from workers.common import DTYPES, device_for, ThreadShare, setup_process


class RewardWorker(ThreadShare):
    """One reward actor."""

    def __init__(self, spec: RewardSpec, token: Secret | None = None):
        self.alone_threads = setup_process(spec.process)
        self.spec = spec
        self.token = token  # the reward server's bearer token (remote_url)
        self.incarnation = uuid.uuid4().hex  # new after every restart by Ray
        self.fn = load_reward_function(spec.function, spec.import_timeout_s) if spec.function else None
        self.model = None
        if spec.model_path:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                spec.model_path, dtype=DTYPES[spec.process.dtype], use_safetensors=True,
                trust_remote_code=spec.process.trust_remote_code,
            ).to(device_for(spec.process.device)).eval()
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            # the model scores the last token that is not config.pad_token_id: the id the batches are padded with
            self.model.config.pad_token_id = pad_token_id(self.tokenizer)

    def ready(self) -> str:
        """This process's incarnation id, once loaded (a new id means Ray restarted it)."""
        return self.incarnation

    def score(self, prompts: list[str], responses: list[str]) -> dict[str, list[float]]:
        """Return ``{"reward": [...]}`` plus ``reward/function`` / ``reward/model`` parts."""
        parts: dict[str, list[float]] = {}
        total = [0.0] * len(responses)
        if self.fn is not None:
            f = call_reward_function(self.fn, self.spec.function, prompts, responses)
            parts["reward/function"] = f
            total = [t + self.spec.function_weight * s for t, s in zip(total, f)]
        if self.spec.remote_url:
            token = self.token.reveal() if self.token else os.environ.get(self.spec.remote_token_env, "")
            r = remote_scores(self.spec.remote_url, token, prompts, responses, self.spec.remote_timeout_s)
            parts["reward/remote"] = r
            total = [t + self.spec.remote_weight * s for t, s in zip(total, r)]
        if self.model is not None:
            m = self._model_scores(prompts, responses)
            parts["reward/model"] = m
            total = [t + self.spec.model_weight * s for t, s in zip(total, m)]
        parts["reward"] = total
        return parts

    def score_tagged(self, prompts: list[str], responses: list[str]) -> dict:
        """``score`` plus the incarnation id of the process that ran it."""
        return {"incarnation": self.incarnation, "scores": self.score(prompts, responses)}

    @torch.no_grad()
    def _model_scores(self, prompts: list[str], responses: list[str]) -> list[float]:
        scores: list[float] = []
        bs = self.spec.batch_size
        device = next(self.model.parameters()).device
        for i in range(0, len(prompts), bs):
            enc = self.tokenizer(
                [reward_text(p, r) for p, r in zip(prompts[i : i + bs], responses[i : i + bs])],
                return_tensors="pt", padding=True, truncation=True, max_length=self.spec.max_length,
            ).to(device)
            scores.extend(self.model(**enc).logits[:, 0].float().tolist())
        return scores
