"""The suite after any pipeline's last step (``eval.suite`` set): ``pipeline=eval`` on the run's ``final/``
(or on ``model`` for a pipeline that trains nothing), into ``<output_dir>/final_eval`` (its summary:
``<output_dir>/final_eval/eval/summary.json``), with the run's ``eval.baseline`` gate."""

from __future__ import annotations

from pathlib import Path

from orchestrator import storage as stored
from orchestrator.redteam.stages import derived_config, run_stage


def evaluate_final(cfg) -> dict:
    """Run the suite on what ``cfg``'s run produced; returns its ``eval/*`` metrics."""
    out = Path(cfg.output_dir).expanduser().resolve()
    final = stored.child(stored.resolve(cfg.storage) if cfg.get("storage") else out, "final")
    changes = {"pipeline": "eval", "algorithm": None, "pipeline_algorithms": [], "resume": None, "overwrite": False,
               "output_dir": str(out / "final_eval")}
    if stored.folder_published(final):
        changes.update({"model.path": str(final), "model.gguf": None})
    return run_stage(derived_config(cfg, changes), f"eval.suite={cfg.eval.suite} after the last step")
