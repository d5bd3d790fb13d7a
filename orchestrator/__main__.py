"""Hydra entry point: ``python -m orchestrator pipeline=rlhf <overrides>`` (console script ``tether``).

It picks the pipeline from config and runs it; a user-facing error is printed on one line
(``tether: error: ...``) with exit status 2. ``main`` returns the final value of ``sweep.metric``,
which is what a Hydra sweeper (``-m hydra/sweeper=optuna``) optimises.

In a multirun (``-m``) a failed trial does not stop the sweep: its error is printed, it is
recorded as failed in the sweep summary (see orchestrator/sweep.py), it returns None (Optuna marks
it failed), and the multirun exits with status 2 after the summary is written.
"""

from __future__ import annotations

import logging
import math
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from orchestrator import quiet, sweep  # noqa: E402
from orchestrator.config import register_configs  # noqa: E402
from orchestrator.errors import NumericalError, TetherError  # noqa: E402

register_configs()
CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
log = logging.getLogger("tether")


def run_pipeline(cfg: DictConfig):
    """Run the configured pipeline; returns its final metrics (what sweeps optimise)."""
    from orchestrator.validation import validate
    from orchestrator.pipelines import get_pipeline

    validate(cfg)  # before the pipeline's module (and its heavy imports) loads: a bad value fails in a second
    metrics = get_pipeline(cfg.pipeline)(cfg)
    if cfg.pipeline != "eval" and cfg.get("eval") is not None and cfg.eval.suite:  # the suite after the last step
        from orchestrator.evals.after_training import evaluate_final

        metrics = {**(metrics or {}), **evaluate_final(cfg)}
    return metrics


def _in_ray_worker() -> bool:
    """True inside a Ray task (a trial of ``hydra/launcher=ray``): that worker's Ray connection
    belongs to the launcher and must not be shut down here."""
    import ray

    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def _run_trial(cfg: DictConfig, trial: sweep.Trial) -> float | None:
    """One multirun trial: run, record the result in ``trial.json``, return the metric (None if it failed)."""
    metrics: dict = {}
    output_dir = None
    try:
        output_dir = str(cfg.output_dir)
        metrics = run_pipeline(cfg) or {}
        name, value = sweep.pick_metric(metrics, cfg.sweep.metric, required=trial.optimising)
        if value is not None and not math.isfinite(value):
            raise NumericalError(f"sweep.metric {name}={value} is not a finite number")
    except Exception as exc:  # a failed trial is reported and the sweep goes on
        if not isinstance(exc, TetherError):
            log.exception("trial %d failed", trial.num)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error = message if isinstance(exc, TetherError) else f"{type(exc).__name__}: {message}"
        print(f"tether: error: trial {trial.num}: {error}", file=sys.stderr, flush=True)
        sweep.write_trial_record(trial, "failed", output_dir, cfg.sweep.metric, None, metrics, error)
        return None  # not a number: Optuna records the trial as failed (NaN would stop its sweep)
    sweep.write_trial_record(trial, "completed", output_dir, name, value, metrics)
    return value


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Console-script entry; returns the final ``sweep.metric`` value (None in a single run that
    reported none of the automatic choices)."""
    logging.getLogger("tether").setLevel(logging.INFO)
    quiet.setup_driver(bool(cfg.logger.verbose))
    trial = sweep.current_trial()
    try:
        if trial is not None:
            return _run_trial(cfg, trial)
        return sweep.pick_metric(run_pipeline(cfg) or {}, cfg.sweep.metric, required=False)[1]
    except TetherError as exc:  # one line; an evaluation gate's regression is one line per metric, status 3
        for line in str(exc).splitlines() or [""]:
            print(f"tether: error: {line}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_status", 2))
    finally:
        ray = sys.modules.get("ray")  # not imported: nothing to shut down
        if ray is not None and ray.is_initialized() and not _in_ray_worker():
            ray.shutdown()


if __name__ == "__main__":
    # Run the function of the module imported under its own name, so that Ray-launched trials
    # (which pickle the task function) import orchestrator.__main__ instead of a copy of __main__.
    from orchestrator.__main__ import main as _main

    _main()
