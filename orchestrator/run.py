"""Everything a pipeline needs that is not its algorithm.

``RunContext`` checks input before any actor starts (config, data, reward function, resources),
owns the output folder, the tokenizer, the tracker, the progress bar and the per-phase timers,
and writes the final HF-format model atomically. If a run fails before its first step is logged,
the output folder it created is removed: a failed start leaves nothing half-written.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

from orchestrator import checkpoint, outputs, storage as stored
from orchestrator.batching import pad_token_id
from orchestrator.errors import CheckpointError, ConfigError, NumericalError, WorkerError
from orchestrator.model_nodes import place_on_nodes
from orchestrator.models import resolve_model_path
from orchestrator.placement import Placement
from orchestrator.runtime import ray_is_up, start_ray, stop_ray
from orchestrator.tracking import Tracker

log = logging.getLogger("tether")


def process_started() -> float:
    """When this process started (seconds since the epoch, as ``time.time()``)."""
    import psutil

    return psutil.Process().create_time()


class RunContext:
    """Output folder, tokenizer, tracker, timers and progress for one pipeline run.

    ``load_data(cfg) -> (train_rows, held_out_rows)`` is the pipeline's input check; it runs after
    the config is validated and before the tokenizer is loaded. ``prepare(ctx) -> (train, held_out)``,
    if given, then turns the rows into what the pipeline trains on (e.g. token ids). ``load_data`` runs
    before Ray starts; the tokenizer and ``prepare`` run while it starts (seconds of a CPU otherwise idle),
    and their error stops it again. Either way bad input fails before any actor starts.
    """

    def __init__(self, cfg, load_data, prepare=None):
        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir).expanduser().resolve()
        self._created_dir = outputs.prepare(self.output_dir)  # writable, before anything starts
        self._lock = outputs.OutputLock(self.output_dir)  # one writer per output_dir, until __exit__
        try:
            outputs.check_reuse(cfg, self.output_dir, self.storage)  # never mix with, or silently replace, a run there
            self._start(cfg, load_data, prepare)
        except BaseException:
            self._release(failed=True)
            raise

    def _start(self, cfg, load_data, prepare) -> None:
        """Input checks, tokenizer, Ray: what ``__init__`` does once the output folder is held. The config
        and the data rows are checked before Ray starts; the tokenizer (seconds of imports) loads and the
        rows are prepared while it starts, and an error there stops the Ray just started before it is raised."""
        self.train_rows, self.eval_rows = load_data(cfg)
        self.model_path = resolve_model_path(cfg.model)
        was_up = ray_is_up()
        with ThreadPoolExecutor(1, thread_name_prefix="inputs") as pool:
            inputs = pool.submit(self._tokenize, cfg, prepare)
            try:
                self.dashboard_url = start_ray(cfg.cluster)
            finally:
                if inputs.exception() is not None:  # the input's error, not Ray's: the user's to fix first
                    stop_ray(was_up)
                    raise inputs.exception()
        self.start_marks = {"inputs": self._inputs_done}  # start-up stages (ends); see ``log``
        place_on_nodes(self.model_path, cfg.cluster.call_timeout_s)  # a model built here reaches every node
        self.start_marks["ray"] = time.time()  # what Ray's start took beyond the inputs' (0 when it was quicker)
        self.times: dict[str, float] = {}
        self.tracker: Tracker | None = None
        self.placements: list[Placement] = []
        self.steps_logged = 0
        self.resumed_step = 0  # the checkpoint's step when resumed
        self.wandb_id = None  # the wandb run (kept in checkpoints: a resumed run continues it)
        self.nonfinite_steps = 0
        self.bar = None
        self._last_log = time.perf_counter()

    def _tokenize(self, cfg, prepare) -> None:
        """Load the tokenizer and prepare the rows (``prepare``); one-line error for a folder without a
        tokenizer."""
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=cfg.model.trust_remote_code)
        except (OSError, ValueError) as exc:  # no or broken tokenizer files: one line, before any actor starts
            detail = (str(exc).strip().splitlines() or [""])[0][:200]
            raise ConfigError(f"model: the tokenizer in {self.model_path} did not load ({type(exc).__name__}: {detail}); "
                              "the folder needs its tokenizer files (tokenizer.json, tokenizer_config.json)") from None
        self.pad_id = pad_token_id(self.tokenizer)
        if prepare is not None:
            self.train_rows, self.eval_rows = prepare(self)
        self._inputs_done = time.time()

    def __enter__(self) -> "RunContext":
        if self.cfg.get("overwrite"):  # every input check passed: only now is the old run removed
            removed = outputs.remove_run(self.output_dir, self.storage)
            if removed:
                log.warning("overwrite=true: removed the previous run's %s from %s", ", ".join(removed), self.output_dir)
        self.run_id = outputs.run_id(self.storage)  # kept in every checkpoint: resume=auto takes only this run's
        return self

    @property
    def storage(self):
        """Where checkpoints, ``final/`` and ``run.json`` go: ``storage`` (a folder or a bucket URI, see
        orchestrator/storage.py) when set, else ``output_dir``."""
        value = self.cfg.get("storage")
        return stored.resolve(value) if value else self.output_dir

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                print(self.summary())
            elif issubclass(exc_type, (KeyboardInterrupt, SystemExit)) and self.steps_logged:
                found = checkpoint.latest(self.storage, hashes=False)
                where = f"output_dir={self.output_dir}" + (f" storage={self.cfg.storage}" if self.cfg.get("storage") else "")
                how = (f"resume with resume=auto {where} (from step {found[1]['step']})" if found
                       else "no checkpoint was written (trainer.save_steps)")
                print(f"tether: stopped at step {self.steps_logged}; {how}", file=sys.stderr, flush=True)
            self._close_tracker_and_placements(stopping=exc_type is not None and issubclass(exc_type, (KeyboardInterrupt, SystemExit)))
        finally:
            self._release(failed=exc_type is not None and self.steps_logged == 0)

    def _close_tracker_and_placements(self, stopping: bool) -> None:
        """Close the tracker and remove the placement groups. While a stop (SIGTERM, Ctrl-C) unwinds, an
        error here is logged, not raised, so the run still ends with the stop's status (143 / 130)."""
        try:
            if self.tracker is not None:
                self.tracker.close()
            for p in self.placements:
                p.remove()
        except Exception as exc:  # noqa: BLE001 - the stop's own status wins
            if not stopping:
                raise
            log.warning("cleanup after the stop: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def _release(self, failed: bool) -> None:
        """Remove the output folder if this run created it and failed before logging a step; unlock."""
        if failed and self._created_dir:
            shutil.rmtree(self.output_dir, ignore_errors=True)
        self._lock.release()

    # ---- set-up helpers --------------------------------------------------------------------
    def place(self, roles) -> Placement:
        """Placement groups for ``roles`` (fails fast when the cluster cannot hold them); logs
        where each role landed when they span more than one node."""
        c = self.cfg.cluster
        placement = Placement(roles, c.placement_strategy, c.placement_timeout_s, c.colocate)
        self.placements.append(placement)
        if len({n for r in roles for n in placement.node_ids(r.name)}) > 1:
            log.info("placement: %s", placement.describe())
        return placement

    def decode(self, ids: list[int]) -> str:
        """Token ids -> text without special tokens."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ---- progress, timing, logging ----------------------------------------------------------
    def steps(self, start: int = 0):
        """Step numbers start+1..max_steps, with a progress bar when enabled."""
        steps = range(start + 1, self.cfg.trainer.max_steps + 1)
        self._last_log = time.perf_counter()
        self.start_marks["actors"] = time.time()
        if self.cfg.logger.progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(steps, desc=f"{self.cfg.pipeline}", unit="step", dynamic_ncols=True,
                            initial=start, total=self.cfg.trainer.max_steps)
            return self.bar
        return steps

    @contextmanager
    def phase(self, name: str):
        """Time a phase of the step; reported as ``time/<name>`` in seconds."""
        start = time.perf_counter()
        yield
        self.times[f"time/{name}"] = self.times.get(f"time/{name}", 0.0) + time.perf_counter() - start

    def log(self, step: int, metrics: dict) -> None:
        """Write one metrics row (with the phase times) and reset the timers."""
        if self.tracker is None:
            c = self.cfg
            label = f"-{c.algorithm.name}" if c.algorithm is not None else ""
            from orchestrator.sweep import trial_group, trial_run_name  # per-trial name, shared group in a multirun

            name = trial_run_name(c.logger.run_name or f"{c.pipeline}{label}-{c.model.name}-{time.strftime('%Y%m%d-%H%M%S')}")
            self.tracker = Tracker(str(self.output_dir), OmegaConf.to_container(c, resolve=True), name,
                                   wandb=c.logger.wandb, wandb_project=c.logger.wandb_project,
                                   wandb_group=trial_group(c.logger.wandb_group), tensorboard=c.logger.tensorboard,
                                   resume_step=self.resumed_step, wandb_id=self.wandb_id)
            self.wandb_id = self.tracker.wandb_id
            OmegaConf.save(c, self.output_dir / "config.yaml", resolve=True)
        now = time.perf_counter()
        row = {**metrics, **self.times, "time/step": now - self._last_log}
        if not self.steps_logged:  # the first step of this process: how long the user waited for it, and where
            # it went: input checks and tokenizer, Ray start, the roles' actors (and a resume's checkpoint load)
            row["time/to_first_step"] = time.time() - process_started()
            ends = list(self.start_marks.items())
            for (name, end), before in zip(ends, [process_started()] + [e for _, e in ends]):
                row[f"time/start/{name}"] = end - before
        self._last_log = now
        self.tracker.log(step, row)
        self.times = {}
        self.steps_logged += 1
        keys = ("reward/mean", "kl", "loss/policy", "loss", "rewards/accuracies", "accuracy", "time/step")
        shown = {k: f"{row[k]:.4g}" for k in keys if k in row}
        if self.bar is not None:
            self.bar.set_postfix(shown, refresh=False)
        else:
            log.info("step %d %s", step, " ".join(f"{k}={v}" for k, v in shown.items()))

    def summarize(self, name: str, metrics: dict) -> Path:
        """Record results that follow the last step (e.g. CAI's stage 2) as ``<output_dir>/<name>``
        (a JSON object), in the wandb summary and in TensorBoard at the last step."""
        path = self.output_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tracker.summarize(self.cfg.trainer.max_steps, metrics, str(path))
        return path

    def check_finite(self, *group_stats: dict) -> None:
        """Count steps in which a trainer group (policy or critic) had every update skipped as
        non-finite; stop after ``trainer.max_nonfinite_steps`` such steps in a row."""
        if any(s and s["updates"] and s["nonfinite_skips"] == s["updates"] for s in group_stats):
            self.nonfinite_steps += 1
            log.warning("every update of the step had a non-finite loss or gradient (%d steps in a row)", self.nonfinite_steps)
        else:
            self.nonfinite_steps = 0
        limit = self.cfg.trainer.max_nonfinite_steps
        if limit and self.nonfinite_steps >= limit:
            found = checkpoint.latest(self.storage, hashes=False)
            where = f"last checkpoint: {found[0]}" if found else "no checkpoint was written"
            raise NumericalError(f"stopped after {self.nonfinite_steps} consecutive steps whose every update had a "
                                 f"non-finite loss or gradient (trainer.max_nonfinite_steps); {where}")

    def eval_due(self, step: int) -> bool:
        """Whether held-out prompts are scored after ``step`` (every ``eval_every``, and the last)."""
        every, last = self.cfg.trainer.eval_every, self.cfg.trainer.max_steps
        return bool(self.eval_rows) and (step == last or (every > 0 and step % every == 0))

    # ---- checkpoints ---------------------------------------------------------------------------
    def restore(self, groups: dict, stateful: dict) -> int:
        """Load the checkpoint ``resume`` asks for into the trainer ``groups`` and the ``stateful``
        objects (``{name: obj}`` with ``load_state_dict``, saved under their names by
        :meth:`maybe_checkpoint`); returns its step (0: fresh start).

        ``resume=auto`` takes the newest good checkpoint in ``output_dir`` (a broken one, one written
        by another run than the folder's ``run.json`` names, or one whose trainer state fails to load,
        is skipped with a warning; one without a run id, older, is taken); ``resume=DIR`` takes that one.
        Checkpoints newer than the one loaded are moved aside (an abandoned timeline). When none
        loads and the folder holds a run, nothing is changed and the run stops.
        """
        resume = self.cfg.resume
        if resume is None:
            return 0
        folder_run = outputs.read_run_id(self.storage)
        if resume == "auto":  # the ranks check the hashes of the files they load
            candidates = checkpoint.good_checkpoints(self.storage, hashes=False)
        else:
            source = stored.resolve(resume)
            candidates = iter([(source, checkpoint.load_state(source))])
        for folder, state in candidates:
            if resume == "auto" and state.get("run_id") not in (None, folder_run):
                log.warning("skipping checkpoint %s: written by run %s, but %s names run %s (a checkpoint of "
                            "another run copied in?); resume=DIR into a new output_dir branches from it",
                            folder, state["run_id"], stored.child(self.storage, outputs.RUN_ID_FILE), folder_run)
                continue
            missing = [name for name in stateful if name not in state]
            if missing:
                raise CheckpointError(f"{stored.child(folder, checkpoint.STATE_FILE)} holds no state for {', '.join(missing)}: "
                                      "it was written by another pipeline; use another output_dir")
            try:
                for name, group in groups.items():
                    group.load_checkpoint(str(stored.child(folder, name)))
            except (WorkerError, CheckpointError) as exc:
                if resume != "auto":
                    raise
                log.warning("skipping checkpoint %s: trainer state did not load: %s", folder, exc)
                continue
            for name, obj in stateful.items():
                obj.load_state_dict(state[name])
            checkpoint.set_rng_state(state["rng"])
            checkpoint.set_aside_newer(self.storage, state["step"])
            checkpoint.truncate_metrics(self.output_dir / "metrics.jsonl", state["step"])
            self.steps_logged = self.resumed_step = state["step"]
            self.wandb_id = state.get("wandb_id")
            log.info("resumed from %s (step %d)", folder, state["step"])
            return state["step"]
        held = outputs.run_files(self.output_dir, self.storage)
        if held:
            raise CheckpointError(f"resume=auto: no checkpoint in {checkpoint.root(self.storage)} could be used "
                                  "(see the warnings above); nothing was changed: start over with overwrite=true, "
                                  "or choose another output_dir")
        log.info("resume=auto: no checkpoint in %s, starting fresh", self.storage)
        return 0

    def maybe_checkpoint(self, step: int, groups: dict, stateful: dict) -> None:
        """Every ``trainer.save_steps`` steps, write an atomic checkpoint of the trainer ``groups`` and
        of the ``stateful`` objects (``{name: obj}`` with ``state_dict``, e.g. the data loader)."""
        every = self.cfg.trainer.save_steps
        if every and step % every == 0:
            reserved = {"step", "rng", "wandb_id", "config", "run_id"} & set(stateful)
            if reserved:
                raise ValueError(f"checkpoint state names {sorted(reserved)} are reserved")
            with self.phase("checkpoint"):
                state = {**{name: obj.state_dict() for name, obj in stateful.items()},
                         "rng": checkpoint.rng_state(), "wandb_id": self.wandb_id, "run_id": self.run_id,
                         "config": OmegaConf.to_container(self.cfg, resolve=True)}
                checkpoint.save(self.storage, step, state, groups, self.cfg.trainer.keep_checkpoints)

    def save_final(self, group):
        """Write ``<storage>/final`` (HF format, safetensors + tokenizer): rank 0 publishes it whole from
        its node (a rename on a file system, a ``COMPLETE`` marker last in a bucket)."""
        final = stored.child(self.storage, "final")
        group.save_pretrained(str(final), self.model_path)
        return final

    def summary(self) -> str:
        """Where the run's outputs are, for the closing message."""
        lines = [f"output_dir: {self.output_dir}"]
        if self.tracker is not None:
            lines += [f"{k}: {v}" for k, v in self.tracker.locations().items()]
        if stored.folder_published(stored.child(self.storage, "final")):
            lines.append(f"final model: {stored.child(self.storage, 'final')}")
        if self.dashboard_url:
            lines.append(f"ray dashboard: http://{self.dashboard_url}")
        return "\n".join(lines)
