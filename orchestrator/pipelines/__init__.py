"""Pipelines by name: ``pipeline=<name>`` picks the driver loop ``run(cfg) -> dict``."""

from __future__ import annotations

import importlib

PIPELINES = {
    "rlhf": "orchestrator.pipelines.rlhf",
    "dpo": "orchestrator.pipelines.dpo",
    "rm": "orchestrator.pipelines.rm",
    "sft": "orchestrator.pipelines.sft",
    "cai": "orchestrator.pipelines.cai",
    "collect": "orchestrator.pipelines.collect",
    "redteam": "orchestrator.pipelines.redteam",
    "eval": "orchestrator.pipelines.eval",
}


def get_pipeline(name: str):
    """The ``run`` function of pipeline ``name`` (validated beforehand by config.validate)."""
    return importlib.import_module(PIPELINES[name]).run
