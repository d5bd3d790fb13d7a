"""Running a pipeline as a stage of another (CAI then DPO, the red-team training cycle, the evaluation
suite after training): the same config with a few fields changed, validated like a command line's."""

from __future__ import annotations

import copy
import logging

from omegaconf import OmegaConf

log = logging.getLogger("tether")


def derived_config(cfg, changes: dict):
    """A copy of ``cfg`` with ``changes`` (``{"dotted.key": value}``) applied; ``algorithm=dpo`` puts the
    DPO preset's schema in place."""
    from orchestrator.config import PreferenceAlgorithmConfig

    out = copy.deepcopy(cfg)
    for key, value in changes.items():
        if key == "algorithm" and value == "dpo":
            value = OmegaConf.structured(PreferenceAlgorithmConfig())
        OmegaConf.update(out, key, value, merge=False, force_add=False)
    return out


def run_stage(cfg, what: str) -> dict:
    """Validate and run ``cfg`` (its ``pipeline``); returns the stage's final metrics."""
    from orchestrator.pipelines import get_pipeline
    from orchestrator.validation import validate

    validate(cfg)
    log.info("%s: pipeline=%s into %s", what, cfg.pipeline, cfg.output_dir)
    return get_pipeline(cfg.pipeline)(cfg) or {}
