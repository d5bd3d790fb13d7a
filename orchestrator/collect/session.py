"""One labelling session: the label database, the web server, the exports and the metrics.

After every judgement ``preferences.jsonl`` and ``summary.json`` are rewritten (atomically), and every
``collect.log_every`` labels a metrics row goes through the project's tracker (``metrics.jsonl``,
TensorBoard, wandb under ``<output_dir>/collect/``; the step is the number of labels stored, and every
session continues the same wandb run). The session ends, with a last export and metrics row, when every
pair has ``collect.overlap`` judgements, when ``collect.max_labels`` judgements were stored since it
started, or on SIGTERM / Ctrl-C. The database keeps every judgement, so the same command later goes on
where this one stopped.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf
from sqlalchemy.engine import make_url

from orchestrator import atomic, outputs
from orchestrator.collect import tokens as annotator_tokens
from orchestrator.collect.app import make_app
from orchestrator.collect.export import export
from orchestrator.collect.store import LabelStore
from orchestrator.errors import ConfigError
from orchestrator.rewards.remote import RewardServer, ServerLimits
from orchestrator.tracking import Tracker, read_metrics

log = logging.getLogger("tether")
WANDB_ID_FILE = "wandb_id"  # the labelling's wandb run, continued by every session


def database_url(cfg, folder: Path) -> str:
    """``collect.database_url``, else SQLite at ``<output_dir>/collect/labels.db``."""
    return cfg.collect.database_url or f"sqlite:///{folder / 'labels.db'}"


@contextmanager
def labelling_folder(cfg):
    """``<output_dir>/collect``, with the output folder locked (one writer) while the block runs."""
    out = Path(cfg.output_dir).expanduser().resolve()
    outputs.prepare(out)
    lock = outputs.OutputLock(out)
    try:
        (out / "collect").mkdir(exist_ok=True)
        yield out / "collect"
    finally:
        lock.release()


def stored_pairs(cfg) -> int:
    """How many pairs the label database already holds (0 when the default SQLite file does not exist yet)."""
    folder = Path(cfg.output_dir).expanduser().resolve() / "collect"
    if not cfg.collect.database_url and not (folder / "labels.db").exists():
        return 0
    return LabelStore(database_url(cfg, folder), cfg.collect.overlap, cfg.seed).count_pairs()


class LabellingSession:
    """Serve ``store``'s pairs to the annotators of ``cfg.collect`` until the session ends."""

    def __init__(self, cfg, store: LabelStore, folder: Path):
        self.cfg, self.c, self.store, self.folder = cfg, cfg.collect, store, folder
        self.tokens = annotator_tokens.Tokens(annotator_tokens.load_or_create(folder / "tokens.json", list(self.c.annotators)))
        self.stop = threading.Event()
        self.new_labels = 0
        self.values = export(store, folder)
        self._lock = threading.Lock()
        metrics = folder / "metrics.jsonl"
        self.last_step = max((r["step"] for r in read_metrics(str(metrics))), default=0) if metrics.exists() else 0
        config = OmegaConf.to_container(cfg, resolve=True)
        if self.c.database_url:  # a password in the URL stays out of the tracker's copy of the config
            config["collect"]["database_url"] = repr(make_url(self.c.database_url))
        self.tracker = Tracker(str(folder), config, f"collect-{time.strftime('%Y%m%d-%H%M%S')}",
                               wandb=cfg.logger.wandb, wandb_project=cfg.logger.wandb_project,
                               tensorboard=cfg.logger.tensorboard, resume_step=self.last_step,
                               wandb_id=self._read_wandb_id())
        if self.tracker.wandb_id:  # the next session continues this wandb run
            atomic.write_text(folder / WANDB_ID_FILE, self.tracker.wandb_id)
        self._check_finished()

    def _read_wandb_id(self) -> str | None:
        path = self.folder / WANDB_ID_FILE
        return path.read_text(encoding="utf-8").strip() or None if path.exists() else None

    def status(self) -> dict:
        return {**self.values, **{f"collect/progress/{k}": v for k, v in self.store.progress().items() if k != "mine"}}

    def _log(self) -> None:
        step = self.values["collect/labels"]
        if step > self.last_step:
            self.tracker.log(step, {k: v for k, v in self.values.items() if v is not None})
            self.last_step = step

    def _check_finished(self) -> None:
        progress = self.store.progress()
        if progress["done"] >= progress["total"]:
            self.stop.set()
        if self.c.max_labels is not None and self.new_labels >= self.c.max_labels:
            self.stop.set()

    def after_judgement(self) -> None:
        """Export, metrics every ``collect.log_every`` labels, and the end-of-session check."""
        with self._lock:
            self.new_labels += 1
            self.values = export(self.store, self.folder)
            if self.values["collect/labels"] % self.c.log_every == 0:
                self._log()
            self._check_finished()

    def serve(self) -> dict:
        """Serve until the session ends; returns the final summary."""
        app = make_app(self.store, self.tokens, self.status, self.after_judgement, self.c.max_body_bytes)
        limits = ServerLimits(max_body_bytes=self.c.max_body_bytes)
        try:
            server = RewardServer(app, self.c.host, self.c.port, limits).start()
        except OSError as exc:
            raise ConfigError(f"collect.host={self.c.host} collect.port={self.c.port}: cannot listen there "
                              f"({exc.strerror or exc}); choose another port (0: any free one)") from None
        host, port = server.server_address
        shown = f"[{host}]" if ":" in host else host
        progress = self.store.progress()
        log.info("collect: serving %d pairs (%d of %d judgements done) on http://%s:%d; status page /status",
                 self.store.count_pairs(), progress["done"], progress["total"], shown, port)
        for name, token in zip(self.c.annotators, self.tokens_in_order()):
            print(f"collect: annotator {name}: http://{shown}:{port}/?token={token}", flush=True)
        previous = {s: signal.signal(s, lambda *_: self.stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not self.stop.wait(0.2):
                pass
        finally:
            server.shutdown()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self.close()

    def tokens_in_order(self) -> list[str]:
        data = annotator_tokens.load_or_create(self.folder / "tokens.json", list(self.c.annotators))
        return [data["tokens"][name] for name in self.c.annotators]

    def close(self) -> dict:
        """Last export and metrics row; close the tracker."""
        with self._lock:
            self.values = export(self.store, self.folder)
            self._log()
            self.tracker.close()
        progress = self.store.progress()
        log.info("collect: %d judgements stored (%d this session), %d of %d done; %d pairs in %s",
                 progress["done"], self.new_labels, progress["done"], progress["total"],
                 self.values["collect/exported_pairs"], self.folder / "preferences.jsonl")
        return self.status()
