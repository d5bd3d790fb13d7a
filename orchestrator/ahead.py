"""Batches prepared one step ahead: the remote work of step t+1's batch (an RLHF generation, DPO's
reference pass) runs while step t trains.

``OneAhead.next(n)`` gives step ``n``'s rows and prepared batch. With ``enabled``, it first starts
preparing step n+1's batch (``start(rows, n + 1)``, which only launches remote calls); a batch
started this way is finished (``finish(handle)``, which waits for them) when its step asks. Without
it, each batch is started and finished when its step asks. The data order is the same either way.

A checkpoint holds the loader as it was before the batch still in preparation was drawn
(``state_dict``), so a resumed run draws that batch again and prepares it anew.
"""

from __future__ import annotations

from typing import Any, Callable


class OneAhead:
    """Step ``n``'s batch from ``loader`` through ``start(rows, n) -> handle`` and ``finish(handle) -> batch``."""

    def __init__(self, loader, start: Callable[[list, int], Any], finish: Callable[[Any], Any], enabled: bool,
                 max_steps: int):
        self.loader, self.start, self.finish = loader, start, finish
        self.enabled, self.max_steps = enabled, max_steps
        self.pending: dict | None = None  # the batch started for the next step
        self._loader_state = loader.state_dict()  # the loader before ``pending`` was drawn

    def _start(self, n: int) -> dict:
        self._loader_state = self.loader.state_dict()
        rows = next(self.loader)
        return {"step": n, "rows": rows, "epoch": self.loader.epoch, "handle": self.start(rows, n)}

    def next(self, n: int) -> tuple[list, Any, bool, int]:
        """Step ``n``'s rows, its batch, whether the batch was started during the previous step, and the
        data epoch of its rows."""
        early = self.pending is not None and self.pending["step"] == n
        item = self.pending if early else self._start(n)
        self.pending = self._start(n + 1) if self.enabled and n < self.max_steps else None
        if self.pending is None:
            self._loader_state = self.loader.state_dict()
        return item["rows"], self.finish(item["handle"]), early, item["epoch"]

    @property
    def in_flight(self):
        """The handle of the batch started for the next step (None if there is none)."""
        return None if self.pending is None else self.pending["handle"]

    def state_dict(self) -> dict:
        """The loader's state before the batch still in preparation was drawn (the loader's own format)."""
        return dict(self._loader_state)

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)
        self._loader_state = self.loader.state_dict()
        self.pending = None
