"""Hydra multirun support: one output folder and run name per trial, the metric a sweep
optimises, and a summary of the sweep.

``python -m orchestrator -m trainer.lr=1e-5,1e-4`` runs one trial per value. Each trial writes
into ``<hydra.sweep.dir>/<job number>`` (the ``tether.trial_output_dir`` resolver in
``conf/config.yaml``), names its wandb run ``<run name>-trial<N>`` and joins the wandb group named
after the sweep folder. When the trial ends it leaves ``trial.json`` there (status, overrides,
the chosen metric, the final metrics, the error if it failed); the ``SweepSummary`` callback
reads those files after the last trial and writes ``summary.md`` (a table) and ``summary.png``
(the metric per trial) into the sweep folder.

A failed trial does not stop the sweep (see orchestrator/__main__.py); the multirun exits with
status 2 after the summary when any trial failed.

Limits: the summary reads the trial folders from the machine that launched the sweep, so with a
multi-node Ray cluster ``hydra.sweep.dir`` must be on storage every node shares. A trial whose
process was killed leaves no ``trial.json`` and is listed as "no record". When no Optuna trial
completes, the Optuna sweeper itself fails ("No trials are completed yet") before the summary is
written; the trials' ``trial.json`` files are there, and ``write_summary(sweep_dir)`` writes it.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import OmegaConf

from orchestrator import atomic
from orchestrator.errors import ConfigError

# sweep.metric=null picks the first one reported: rlhf's reward, dpo's and rm's pair accuracy (held-out first)
AUTO_METRICS = ("eval/reward/mean", "reward/mean", "eval/rewards/accuracies", "rewards/accuracies",
                "eval/accuracy", "accuracy")
TRIAL_RECORD = "trial.json"
SUMMARY_MD = "summary.md"
SUMMARY_PNG = "summary.png"


@dataclass
class Trial:
    """The Hydra multirun job this process is running."""

    num: int  # hydra.job.num
    overrides: list[str]  # this job's overrides, swept values included
    sweep_dir: Path
    job_dir: Path  # <sweep dir>/<subdir>, created by Hydra before the job starts
    optimising: bool = False  # a sweeper other than the basic one (Optuna) needs the metric's value


def current_trial() -> Trial | None:
    """The running multirun job, or None in a single run (or outside Hydra)."""
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN or OmegaConf.is_missing(hc.job, "num"):
        return None
    sweep_dir = Path(hc.sweep.dir).resolve()
    job_dir = OmegaConf.select(hc, "runtime.output_dir", default=None)
    return Trial(num=int(hc.job.num), overrides=list(hc.overrides.task), sweep_dir=sweep_dir,
                 job_dir=Path(job_dir) if job_dir else sweep_dir / str(hc.sweep.subdir),
                 optimising="BasicSweeper" not in str(OmegaConf.select(hc, "sweeper._target_", default="")))


# ---- config resolvers ------------------------------------------------------------------------
def trial_output_dir(default: str) -> str:
    """``${tether.trial_output_dir:DEFAULT}``: the trial's folder in a multirun, else DEFAULT."""
    trial = current_trial()
    return str(trial.job_dir) if trial else default


def actor_env_vars() -> dict:
    """``${tether.actor_env:}``: the environment every actor gets (for the Ray launcher preset)."""
    from orchestrator.runtime import actor_env

    return actor_env()


def register_resolvers() -> None:
    """Register the ``tether.*`` resolvers (idempotent) and the plugin presets below."""
    for name, fn in (("tether.trial_output_dir", trial_output_dir), ("tether.actor_env", actor_env_vars)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
    register_plugin_presets()


# ---- presets for the Hydra plugins ---------------------------------------------------------------
# hydra/launcher=ray: each trial is a Ray task; its actors go to the same cluster. Trials launched
# together run at the same time, so the cluster must hold all their actors (or limit the batch:
# hydra.sweeper.max_batch_size=N, or hydra.sweeper.n_jobs=N with Optuna).
RAY_INIT = {  # ray.init arguments in the launching process
    "address": "local",  # a new local Ray on 127.0.0.1; HOST:PORT or auto joins a running cluster
    "num_cpus": None,  # logical CPUs of the local Ray (null: all cores); leave null when joining
    "object_store_memory": None,  # Ray's default (the plugin alone caps it at 75 MiB)
    "include_dashboard": False,
    "dashboard_host": "127.0.0.1",
    "logging_level": "WARNING",
    "runtime_env": {"env_vars": "${tether.actor_env:}"},  # what every actor gets (offline hub, caches)
}
RAY_REMOTE = {  # options of the Ray task that runs one trial
    "num_cpus": 0,  # the trial's driver only waits on its actors: it must not hold a CPU they need
    "max_retries": 0,  # a failed trial is reported, never silently rerun
}
# hydra/sweeper=optuna: maximise sweep.metric (the plugin's default direction is minimize).
OPTUNA = {"direction": "maximize", "study_name": "tether", "n_jobs": 1,
          "max_failure_rate": 1.0}  # failed trials are recorded as failed and the search goes on


def register_plugin_presets() -> None:
    """Replace the ``ray`` launcher and ``optuna`` sweeper presets of the Hydra plugins (when
    installed) by the same schemas with Tether's defaults above.

    Hydra's plugin scan (once per process) re-runs the plugins' modules, which store their own
    presets; it is run here first so that the presets stored after it are the ones Hydra uses.
    """
    from hydra.core.plugins import Plugins

    Plugins.instance()
    store = ConfigStore.instance()
    try:
        from hydra_plugins.hydra_ray_launcher._config import RayConf, RayLauncherConf
    except ImportError:
        pass
    else:
        store.store(group="hydra/launcher", name="ray", provider="tether",
                    node=RayLauncherConf(ray=RayConf(init=dict(RAY_INIT), remote=dict(RAY_REMOTE))))
    try:
        from hydra_plugins.hydra_optuna_sweeper.config import Direction, OptunaSweeperConf
    except ImportError:
        pass
    else:
        options = dict(OPTUNA, direction=Direction[OPTUNA["direction"]])
        store.store(group="hydra/sweeper", name="optuna", provider="tether", node=OptunaSweeperConf(**options))


# ---- per-trial naming and result -------------------------------------------------------------
def trial_run_name(base: str) -> str:
    """``base`` outside a multirun, ``<base>-trial<N>`` inside one (distinct per trial)."""
    trial = current_trial()
    return f"{base}-trial{trial.num}" if trial else base


def trial_group(group: str | None) -> str | None:
    """The wandb group: ``logger.wandb_group`` if set, else the sweep folder's name in a multirun."""
    if group:
        return group
    trial = current_trial()
    return trial.sweep_dir.name if trial else None


def pick_metric(metrics: dict, name: str | None, required: bool) -> tuple[str | None, float | None]:
    """The metric named by ``sweep.metric`` (null: the first of AUTO_METRICS reported) and its value.

    A named metric that the run did not report is a ConfigError listing the reported ones; so is
    an automatic choice that finds none when ``required`` (a sweeper that optimises, e.g. Optuna).
    """
    available = ", ".join(sorted(metrics)) or "(none)"
    if name is None:
        name = next((m for m in AUTO_METRICS if m in metrics), None)
        if name is None:
            if not required:
                return None, None
            raise ConfigError(f"sweep.metric is null and the run reported none of {', '.join(AUTO_METRICS)}; "
                              f"set sweep.metric to one of: {available}")
    elif name not in metrics:
        raise ConfigError(f"sweep.metric={name!r} is not among the run's final metrics: {available}")
    return name, float(metrics[name])


def write_trial_record(trial: Trial, status: str, output_dir: str | None, metric: str | None,
                       value: float | None, metrics: dict, error: str | None = None) -> Path:
    """Write ``<job dir>/trial.json`` (atomically) for the sweep summary."""
    record = {"num": trial.num, "status": status, "overrides": trial.overrides, "metric": metric,
              "value": _json_number(value), "metrics": {k: _json_number(v) for k, v in metrics.items()},
              "output_dir": output_dir, "error": error}
    trial.job_dir.mkdir(parents=True, exist_ok=True)
    path = trial.job_dir / TRIAL_RECORD
    atomic.write_text(path, json.dumps(record, indent=1) + "\n")
    return path


def _json_number(value):
    if isinstance(value, bool) or value is None:
        return value
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return value if math.isfinite(value) else str(value)


# ---- summary -----------------------------------------------------------------------------------
def read_trials(sweep_dir: Path) -> list[dict]:
    """The trial records of a sweep, by trial number; numbered folders without one count as
    trials that ended without reporting."""
    trials = {}
    for path in sweep_dir.glob(f"*/{TRIAL_RECORD}"):
        record = json.loads(path.read_text(encoding="utf-8"))
        trials[record["num"]] = record
    for folder in sweep_dir.iterdir() if sweep_dir.is_dir() else []:
        if folder.is_dir() and folder.name.isdigit() and int(folder.name) not in trials:
            trials[int(folder.name)] = {"num": int(folder.name), "status": "no record", "overrides": [],
                                        "metric": None, "value": None, "metrics": {}, "output_dir": str(folder),
                                        "error": "the trial ended without writing trial.json (killed?)"}
    return [trials[n] for n in sorted(trials)]


def varying_overrides(trials: list[dict]) -> list[str]:
    """Override keys whose value differs between trials (all keys when there is one trial);
    trials without a record do not count."""
    trials = [t for t in trials if t["overrides"]]
    values: dict[str, set] = {}
    for t in trials:
        for item in t["overrides"]:
            key, _, value = item.partition("=")
            values.setdefault(key, set()).add(value)
    with_all = [k for k in values if all(any(o.partition("=")[0] == k for o in t["overrides"]) for t in trials)]
    varying = [k for k in values if len(values[k]) > 1 or k not in with_all]
    return varying if len(trials) > 1 else list(values)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else ("-" if value is None else str(value))


def _shown_overrides(trial: dict, keys: list[str]) -> str:
    return " ".join(o for o in trial["overrides"] if o.partition("=")[0] in keys)


def best_trial(trials: list[dict], maximize: bool) -> dict | None:
    """The completed trial with the highest (or lowest) metric value."""
    done = [t for t in trials if t["status"] == "completed" and isinstance(t["value"], float)]
    if not done:
        return None
    return (max if maximize else min)(done, key=lambda t: t["value"])


def metric_label(trials: list[dict], configured: str | None = None) -> str:
    """The metric the trials reported (the most common one), else the configured name."""
    found = Counter(t["metric"] for t in trials if t["metric"]).most_common(1)
    return found[0][0] if found else (configured or "sweep.metric")


def summary_markdown(sweep_dir: Path, trials: list[dict], maximize: bool, metric: str) -> str:
    """The Markdown summary: header lines, then one table row per trial."""
    keys = varying_overrides(trials)
    others = sorted({k for t in trials for k in t["metrics"] if k != metric})
    failed = [t for t in trials if t["status"] != "completed"]
    best = best_trial(trials, maximize)
    lines = ["# Sweep summary", "", f"- sweep dir: `{sweep_dir}`",
             f"- metric: `{metric}` ({'higher' if maximize else 'lower'} is better)",
             f"- trials: {len(trials)} ({len(trials) - len(failed)} completed, {len(failed)} failed)"]
    if best:
        lines.append(f"- best: trial {best['num']} ({metric}={_fmt(best['value'])})"
                     f" {_shown_overrides(best, keys)}".rstrip())
    lines += ["", "| " + " | ".join(["trial", "status", "overrides", metric, *others, "output dir", "error"]) + " |",
              "|" + "---|" * (len(others) + 6)]
    for t in trials:
        cells = [str(t["num"]), t["status"], _shown_overrides(t, keys) or "-", _fmt(t["value"]),
                 *(_fmt(t["metrics"].get(k)) for k in others), t["output_dir"] or "-", t["error"] or ""]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def summary_plot(path: Path, trials: list[dict], maximize: bool, metric: str, title: str) -> None:
    """A bar per trial of the chosen metric; failed trials marked in red, the best one in green."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = varying_overrides(trials)
    best = best_trial(trials, maximize)
    fig, ax = plt.subplots(figsize=(min(max(4.0, 1.3 * len(trials) + 1.5), 20.0), 4.5))
    xs = list(range(len(trials)))
    values = [t["value"] if t["status"] == "completed" and isinstance(t["value"], float) else None for t in trials]
    colors = ["tab:green" if best is t else "tab:blue" for t in trials]
    ax.bar([x for x, v in zip(xs, values) if v is not None], [v for v in values if v is not None],
           color=[c for c, v in zip(colors, values) if v is not None])
    for x, v, t in zip(xs, values, trials):
        if v is None:
            failed = t["status"] != "completed"
            ax.annotate(t["status"] if failed else "no metric", (x, 0), ha="center", va="bottom", fontsize=9,
                        color="tab:red" if failed else "gray", rotation=90)
        elif len(trials) <= 12:
            ax.annotate(_fmt(v), (x, v), ha="center", va="bottom" if v >= 0 else "top", fontsize=8)
    labels = [str(t["num"]) if len(trials) > 12 else
              "\n".join([f"#{t['num']}", *textwrap.wrap(_shown_overrides(t, keys), 18)][:4]) for t in trials]
    ax.set_xticks(xs, labels, fontsize=7)
    for tick, t in zip(ax.get_xticklabels(), trials):
        if t["status"] != "completed":
            tick.set_color("tab:red")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlim(-0.6, len(trials) - 0.4)
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_summary(sweep_dir: Path, maximize: bool = True, metric: str | None = None) -> tuple[Path, Path, list[dict]]:
    """Write ``summary.md`` and ``summary.png`` into ``sweep_dir``; returns their paths and the trials.

    ``metric`` (``sweep.metric``) only names the metric when no trial reported one.
    """
    sweep_dir = Path(sweep_dir).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    trials = read_trials(sweep_dir)
    label = metric_label(trials, metric)
    md, png = sweep_dir / SUMMARY_MD, sweep_dir / SUMMARY_PNG
    md.write_text(summary_markdown(sweep_dir, trials, maximize, label), encoding="utf-8")
    summary_plot(png, trials, maximize, label, f"{label} per trial ({sweep_dir.name})")
    return md, png, trials


def _maximize(direction) -> bool:
    """False only when the sweeper is told to minimise (Optuna's ``hydra.sweeper.direction``)."""
    return "minimize" not in str(direction).lower()


class SweepSummary(Callback):
    """Hydra callback (``hydra.callbacks`` in conf/config.yaml): after the last trial of a
    multirun, write the sweep summary; exit with status 2 when a trial failed."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        md, png, trials = write_summary(sweep_dir, _maximize(OmegaConf.select(config, "hydra.sweeper.direction")),
                                        OmegaConf.select(config, "sweep.metric"))
        print(f"sweep summary: {md}\nsweep plot: {png}", flush=True)
        failed = [t for t in trials if t["status"] != "completed"]
        if failed:
            print(f"tether: error: {len(failed)} of {len(trials)} trials failed "
                  f"({', '.join(str(t['num']) for t in failed)}); see {md}", file=sys.stderr, flush=True)
            sys.exit(2)
