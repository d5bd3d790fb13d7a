"""Where an RLHF step's samples come from: generated when the step asks (synchronous), or one step ahead.

With ``rollout.asynchronous=true`` the engines sample step t+1's prompts while step t scores and
trains: the generation is started right after step t takes its own batch, so on each engine it runs
after the weight push of step t-1 and before the push of step t (an engine runs its calls in order).
Step t+1 therefore trains on samples of the policy of step t-1: one step off-policy
(``rollout/staleness`` = 1; 0 for a batch generated when asked: the first step, the first after a
resume, and every step in synchronous mode). The importance ratio is then taken against the
engines' own sampling log-probs (``sampling_logprobs`` of the packed batch), not against a forward
pass of the trainer, which would already hold newer weights.

The data order is the same in both modes. A checkpoint holds the loader as it was before the batch
still being generated was drawn, so a resumed run draws that batch again (and generates it with the
restored weights).
"""

from __future__ import annotations

import ray

from orchestrator.prompts import prompt_ids


class RolloutStream:
    """The batches of an RLHF run: ``next(n)`` gives step ``n``'s prompt rows, samples and staleness."""

    def __init__(self, pool, loader, n_samples: int, seed: int, max_steps: int, asynchronous: bool):
        self.pool, self.loader, self.n_samples = pool, loader, n_samples
        self.seed, self.max_steps, self.asynchronous = seed, max_steps, asynchronous
        self.pending: dict | None = None  # the generation started for the next step
        self._loader_state = loader.state_dict()  # the loader before ``pending`` was drawn

    def _start(self, n: int) -> dict:
        self._loader_state = self.loader.state_dict()
        rows = next(self.loader)
        generation = self.pool.submit(prompt_ids(rows), self.n_samples, seed=self.seed * 1_000_000_007 + n * 1_000_003)
        return {"step": n, "rows": rows, "epoch": self.loader.epoch, "generation": generation}

    def next(self, n: int) -> tuple[list[dict], list[dict], int, int]:
        """Step ``n``'s prompt rows, their samples, the staleness of the weights that sampled them (policy
        updates between those weights and the ones being trained) and the data epoch of the rows."""
        if self.pending is not None and self.pending["step"] == n:
            batch, staleness = self.pending, 1
        else:
            batch, staleness = self._start(n), 0
        self.pending = self._start(n + 1) if self.asynchronous and n < self.max_steps else None
        if self.pending is None:
            self._loader_state = self.loader.state_dict()
        return batch["rows"], self.pool.collect(batch["generation"]), staleness, batch["epoch"]

    def settle(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until the generation started for the next step has finished, e.g.
        before a weight push, so that the push's time is the push's own; a failure is left to ``next``."""
        if self.pending is not None:
            refs = self.pending["generation"]["refs"]
            ray.wait(refs, num_returns=len(refs), timeout=timeout_s, fetch_local=False)

    def state_dict(self) -> dict:
        """The loader's state before the batch still being generated was drawn (the loader's own format)."""
        return dict(self._loader_state)

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)
        self._loader_state = self.loader.state_dict()
        self.pending = None
