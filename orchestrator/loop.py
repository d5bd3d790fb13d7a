"""The frame every training pipeline shares, so that a pipeline module holds only its algorithm.

``train`` resumes from a checkpoint when asked, runs the steps (held-out evaluation when due, one
metrics row per step, a stop after repeated non-finite updates, checkpoints when due) and writes
``<output_dir>/final``. A pipeline gives it one function, ``step(n) -> (metrics, trainer stats)``.
"""

from __future__ import annotations

from typing import Callable


def train(ctx, step: Callable[[int], tuple[dict, tuple]], *, groups: dict, state: dict, final=None,
          evaluate: Callable[[], dict] | None = None, on_resume: Callable[[], None] | None = None) -> dict:
    """Run steps ``start+1 .. trainer.max_steps``; returns the last metrics row.

    ``groups``: the trainer groups a checkpoint holds (``{name: TrainerGroup}``); ``state``: the other
    objects it holds (``{name: obj}`` with ``state_dict`` / ``load_state_dict``, e.g. the data loader);
    ``final``: the trainer group saved as ``<output_dir>/final`` (HF format) after the last step;
    ``evaluate()``: held-out metrics, every ``trainer.eval_every`` steps and after the last;
    ``on_resume()``: called once after a checkpoint was loaded (e.g. push the weights to the engines).
    ``step(n)`` returns the step's metrics row and the stats of each trainer group it trained.
    """
    start = ctx.restore(groups, state)
    if start and on_resume is not None:
        on_resume()
    metrics: dict = {}
    for n in ctx.steps(start):
        metrics, stats = step(n)
        if evaluate is not None and ctx.eval_due(n):
            with ctx.phase("eval"):
                metrics.update(evaluate())
        ctx.log(n, metrics)
        ctx.check_finite(*stats)
        ctx.maybe_checkpoint(n, groups, state)
    if final is not None and ctx.cfg.trainer.save_final:
        ctx.save_final(final)
    return metrics
