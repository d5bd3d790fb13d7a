"""Hydra entry point: ``python -m orchestrator pipeline=rlhf <overrides>`` (console script ``tether``).

It picks the pipeline from config and runs it; a user-facing error is printed on one line
(``tether: error: ...``) with exit status 2.
"""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from orchestrator.config import register_configs  # noqa: E402
from orchestrator.errors import TetherError  # noqa: E402

register_configs()
CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


def run_pipeline(cfg: DictConfig):
    """Run the configured pipeline; returns its final metrics (what sweeps optimise)."""
    from orchestrator.pipelines import PIPELINES, get_pipeline

    if cfg.pipeline not in PIPELINES:  # checked again, with the rest, by config.validate
        raise TetherError(f"pipeline={cfg.pipeline!r} is not valid; choose one of: {', '.join(sorted(PIPELINES))}")
    return get_pipeline(cfg.pipeline)(cfg)


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    """Console-script entry."""
    logging.getLogger("tether").setLevel(logging.INFO)
    try:
        return run_pipeline(cfg)
    except TetherError as exc:
        print(f"tether: error: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()


if __name__ == "__main__":
    main()
