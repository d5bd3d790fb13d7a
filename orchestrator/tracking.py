"""Experiment tracking: a JSONL metrics file, Weights & Biases and TensorBoard.

The JSONL file ``<output_dir>/metrics.jsonl`` is always written (one object per ``log`` call,
flushed at once) so a run leaves readable metrics even when the other back ends are off.
Weights & Biases runs "online" only when ``WANDB_API_KEY`` is set and "offline" otherwise, so
it never prompts for a login and never waits on the network.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from typing import Any

from orchestrator import atomic
from orchestrator.errors import ConfigError

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _to_python(value: Any) -> Any:
    """Turn tensors and numpy scalars into plain Python numbers; leave other values alone."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    item = getattr(value, "item", None)
    numel = getattr(value, "numel", None)
    size = getattr(value, "size", None)
    if callable(item):
        one = (callable(numel) and numel() == 1) or (isinstance(size, int) and size == 1)
        if one:
            out = item()
            return out if isinstance(out, bool) else float(out)
    return value


def _json_safe(value: Any) -> Any:
    """Return ``value`` in a form ``json.dumps`` accepts (non-finite floats become strings)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def wandb_mode() -> str:
    """``WANDB_MODE`` when it says offline / disabled / online; else "online" when ``WANDB_API_KEY``
    is set and "offline" when it is not."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("offline", "disabled", "online"):
        return mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class Tracker:
    """Sends scalar metrics to ``metrics.jsonl``, Weights & Biases and TensorBoard.

    Use it as a context manager, or call :meth:`close` when the run ends.
    """

    def __init__(
        self,
        output_dir: str,
        config: dict,
        run_name: str,
        wandb: bool = True,
        wandb_project: str = "tether",
        wandb_group: str | None = None,
        tensorboard: bool = True,
        resume_step: int = 0,
        wandb_id: str | None = None,
    ) -> None:
        """Create ``output_dir`` and start the enabled back ends. ``resume_step`` > 0: the run continues
        from the checkpoint of that step, so TensorBoard hides the events logged after it by the
        interrupted run (the steps about to be logged again). ``wandb_id``: continue that wandb run
        (``resume="allow"``) instead of starting a new one; the id in use is ``self.wandb_id``."""
        self.output_dir = os.path.abspath(output_dir)
        os.makedirs(self.output_dir, exist_ok=True)
        self.run_name = run_name
        self.metrics_path = os.path.join(self.output_dir, METRICS_FILE)
        self._file = open(self.metrics_path, "a", encoding="utf-8")
        self._run = None
        self._writer = None
        self._closed = False
        try:
            if wandb:
                self._run = self._start_wandb(config, wandb_project, wandb_group, wandb_id)
            self.wandb_id = self._run.id if self._run is not None else None
            if tensorboard:
                self._writer = self._start_tensorboard(resume_step)
        except BaseException:
            self.close()
            raise

    def _start_wandb(self, config: dict, project: str, group: str | None, run_id: str | None):
        """Start (or, with ``run_id``, continue) a wandb run, online or offline, without any prompt."""
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("WANDB_CONSOLE", "off")
        try:
            import wandb
        except ImportError as exc:
            raise ConfigError(
                f"logger.wandb=true but the wandb package is missing ({exc}); "
                "install it or set logger.wandb=false"
            ) from None
        mode = wandb_mode()
        settings = wandb.Settings(silent=True, console="off")
        return wandb.init(
            project=project,
            name=self.run_name,
            group=group,
            config=dict(config),
            dir=self.output_dir,
            mode=mode,
            settings=settings,
            id=run_id,
            resume="allow" if run_id else None,
        )

    def _start_tensorboard(self, resume_step: int):
        """Open a TensorBoard ``SummaryWriter`` under ``<output_dir>/tensorboard``; on a resume, events
        at steps after ``resume_step`` are purged (TensorBoard's ``purge_step``)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError(
                f"logger.tensorboard=true but TensorBoard is unavailable ({exc}); "
                "install tensorboard or set logger.tensorboard=false"
            ) from None
        return SummaryWriter(log_dir=os.path.join(self.output_dir, TENSORBOARD_DIR),
                             purge_step=resume_step + 1 if resume_step > 0 else None)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record ``metrics`` at ``step`` in every enabled back end."""
        if self._closed:
            raise RuntimeError("Tracker.log called after close()")
        step = int(step)
        values = {str(k): _to_python(v) for k, v in metrics.items()}
        record = {"step": step, **{k: _json_safe(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._run is not None:
            self._run.log(values, step=step)
        self._scalars(values, step)

    def summarize(self, step: int, metrics: dict[str, float], path: str) -> None:
        """Record a run's closing results (not a step's): the JSON object ``path`` (written atomically),
        the wandb run's summary, and TensorBoard scalars at ``step`` (the last step)."""
        values = {str(k): _to_python(v) for k, v in metrics.items()}
        atomic.write_text(path, json.dumps({k: _json_safe(v) for k, v in values.items()}, indent=1))
        if self._run is not None:
            self._run.summary.update(values)
        self._scalars(values, int(step))

    def _scalars(self, values: dict, step: int) -> None:
        """The numbers of ``values`` as TensorBoard scalars at ``step`` (when TensorBoard is on)."""
        if self._writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def locations(self) -> dict[str, str]:
        """Return where this run writes: metrics file, TensorBoard dir and wandb run dir."""
        out = {"metrics": self.metrics_path}
        if self._writer is not None:
            out["tensorboard"] = self._writer.log_dir
        if self._run is not None:
            out["wandb"] = self.wandb_run_dir()
        return out

    def wandb_run_dir(self) -> str | None:
        """Return the local directory of the wandb run, or None when wandb is off."""
        if self._run is None:
            return None
        sync_dir = getattr(getattr(self._run, "settings", None), "sync_dir", None)
        if sync_dir:
            return str(sync_dir)
        return os.path.dirname(str(self._run.dir))

    def close(self) -> None:
        """Finish the wandb run, close the TensorBoard writer and the metrics file."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._run is not None:
                self._run.finish()
        finally:
            if self._writer is not None:
                self._writer.close()
            self._file.close()

    def __enter__(self) -> "Tracker":
        """Return the tracker itself."""
        return self

    def __exit__(self, *exc_info) -> None:
        """Close the tracker."""
        self.close()


def read_metrics(path: str) -> list[dict]:
    """Read a ``metrics.jsonl`` file (or the directory holding one) into a list of dicts."""
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rows.append(json.loads(line))
    return rows
