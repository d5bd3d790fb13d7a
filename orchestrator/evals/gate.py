"""The baseline gate: ``eval.baseline=PATH`` (an earlier ``eval/summary.json``) and ``eval.tolerance``.

A metric is a regression when it is worse than the baseline's (by its direction) by more than its
tolerance (absolute; one number for every metric, or ``{metric: number}``, others 0). The run then ends
with exit status 3 and one line per regressed metric: name, baseline, now.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from orchestrator.errors import ConfigError, DataError, TetherError
from orchestrator.evals import EVALS, SUITES


class RegressionError(TetherError):
    """Metrics worse than the baseline beyond the tolerance (exit status 3, one line per metric)."""

    exit_status = 3


def _choice_line(value) -> str:
    return f"eval.suite={value!r} is not valid; choose one of: {', '.join(SUITES)}"


def tolerances(cfg) -> dict[str, float]:
    """``{metric: tolerance}`` for the suite's metrics, from ``eval.tolerance`` (ConfigError naming the field)."""
    names = SUITES[cfg.eval.suite]
    tol = cfg.eval.tolerance
    if isinstance(tol, DictConfig):
        tol = OmegaConf.to_container(tol)
    if isinstance(tol, dict):
        unknown = [k for k in tol if k not in names]
        if unknown:
            raise ConfigError(f"eval.tolerance: {unknown[0]!r} is not a metric of eval.suite={cfg.eval.suite} "
                              f"({', '.join(names)})")
        out = {n: tol.get(n, 0.0) for n in names}
    else:
        out = {n: tol for n in names}
    for name, value in out.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"eval.tolerance={value!r} (for {name}) must be a number >= 0")
    return {k: float(v) for k, v in out.items()}


def check_eval_config(cfg) -> None:
    """The suite's name and the tolerance's form (before anything starts)."""
    if cfg.eval.suite not in SUITES:
        raise ConfigError(_choice_line(cfg.eval.suite) if cfg.eval.suite is not None else
                          f"eval.suite is null; pipeline=eval needs one of: {', '.join(SUITES)}")
    tolerances(cfg)


def load_baseline(cfg) -> dict | None:
    """``eval.baseline``'s summary, checked: a JSON object of the same suite with a number for each metric."""
    path = cfg.eval.baseline
    if not path:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"eval.baseline: no such file: {path}")
    try:
        found = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"eval.baseline={path}: not a JSON summary ({type(exc).__name__}: {str(exc)[:100]})") from None
    if not isinstance(found, dict) or not isinstance(found.get("metrics"), dict):
        raise DataError(f"eval.baseline={path}: not an eval summary (no \"metrics\" object)")
    if found.get("suite") != cfg.eval.suite:
        raise DataError(f"eval.baseline={path}: written by suite {found.get('suite')!r}, this run is "
                        f"eval.suite={cfg.eval.suite}; compare summaries of the same suite")
    for name in SUITES[cfg.eval.suite]:
        value = found["metrics"].get(name, "missing")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise DataError(f"eval.baseline={path}: metric {name!r} is {value!r}, not a number")
    return found


def regressions(summary: dict, baseline: dict, tolerance: dict[str, float]) -> list[str]:
    """One line per metric worse than the baseline by more than its tolerance."""
    lines = []
    for name, now in summary["metrics"].items():
        before = baseline["metrics"].get(name)
        if now is None or before is None:
            continue
        worse = before - now if EVALS[name][0] == "higher" else now - before
        if worse > tolerance[name] + 1e-12:
            lines.append(f"regression: {name}: baseline {before:.4g}, now {now:.4g} "
                         f"({EVALS[name][0]} is better; eval.tolerance {tolerance[name]:g})")
    return lines


def gate(cfg, summary: dict, baseline: dict | None) -> None:
    """Raise RegressionError (exit 3) listing every regressed metric; nothing when there is no baseline."""
    if baseline is None:
        return
    lines = regressions(summary, baseline, tolerances(cfg))
    if lines:
        raise RegressionError("\n".join(lines))
