"""The output folder of a run: checked writable at start, one writer at a time, never emptied unasked.

* :func:`prepare` creates ``output_dir`` and writes and removes a probe file, so an unwritable
  folder or a path that is a file fails in one line before Ray starts or data is tokenised.
* :class:`OutputLock` holds ``fcntl.flock`` on ``<output_dir>/.tether.lock`` for the whole run. The
  kernel releases it when the process ends, killed or not; a second run on the folder meets it at
  once (the file names the holder: pid, host, start time). The file is never removed: removing a
  lock file lets a third process lock a new file while the second still holds the old one. The
  descriptor is not inherited by child processes (Ray's raylet and workers), so a Ray process that
  outlives a killed driver does not keep the folder locked. On NFS, Linux maps ``flock`` to
  byte-range locks, which lockd shares between nodes.
* :func:`check_reuse` decides whether this run may use a folder that holds another run's files:
  with ``resume`` it must find a checkpoint of a compatible run, and only ``overwrite=true``
  removes anything (:func:`remove_run`, after every input check has passed).
* :func:`run_id` gives the run a folder holds an identity (``run.json``, written when a run first
  starts there); every checkpoint records it, and ``resume=auto`` skips a checkpoint of another run
  copied into ``checkpoints/``.
* With ``storage`` set (a bucket URI or another folder), ``checkpoints/``, ``final/`` and ``run.json``
  live there and the rest (lock, metrics, trackers, config) in ``output_dir`` on the driver's node;
  the functions taking ``storage`` look at both (``storage=None``: everything is in ``output_dir``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

from orchestrator import checkpoint, storage as stored
from orchestrator.errors import CheckpointError, ConfigError

log = logging.getLogger("tether")
LOCK_FILE = ".tether.lock"
RUN_FILES = ("metrics.jsonl", "config.yaml", "final", "checkpoints")  # a folder holding any of these holds a run
# what overwrite=true removes: the run files, the trackers' folders, CAI's stage outputs, the red-team and
# evaluation outputs (a red-team cycle's second pass: after/), a half-written final; never collect/ (labels)
RUN_ID_FILE = "run.json"  # {"run_id": uuid4 hex}: which run the folder holds
OVERWRITTEN = (*RUN_FILES, "tensorboard", "wandb", "cai", "redteam", "eval", "final_eval", "after", ".final.tmp",
               RUN_ID_FILE)


def prepare(output_dir: Path) -> bool:
    """Create ``output_dir`` (with parents) and check a file can be written there; returns whether
    the folder was created. Raises ConfigError naming ``output_dir`` and the reason."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output_dir={str(output_dir)!r} is a file, not a folder; choose a folder path")
    created = not output_dir.exists()
    probe = output_dir / f".tether-probe-{os.getpid()}"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output_dir={str(output_dir)!r} cannot be written: {exc.strerror or exc}; "
                          "choose a folder you can write to") from None
    return created


class OutputLock:
    """An exclusive lock on ``<output_dir>/.tether.lock`` held until :meth:`release` (or process end)."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / LOCK_FILE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inheritable (PEP 446)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(fd)
            os.close(fd)
            raise ConfigError(f"output_dir={str(output_dir)!r} is in use by another run ({holder}); wait for it "
                              "to end or choose another output_dir") from None
        self._fd: int | None = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)

    def release(self) -> None:
        """Unlock (closing the descriptor releases the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _holder(fd: int) -> str:
    """``pid N on HOST since TIME`` from a lock file's content, as far as it was written."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']} since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder not yet recorded"


STORED = ("checkpoints", "final", ".final.tmp", RUN_ID_FILE)  # what a separate storage holds of a run


def _separate(output_dir: Path, storage) -> bool:
    return storage is not None and storage != Path(output_dir)


def run_files(output_dir: Path, storage=None) -> list[str]:
    """The names in :data:`RUN_FILES` that ``output_dir`` holds (folders with a trailing ``/``), and with a
    separate ``storage`` the run folders it holds (as their full location)."""
    paths = [Path(output_dir) / name for name in RUN_FILES]
    held = [p.name + ("/" if p.is_dir() else "") for p in paths if p.exists()]
    if _separate(output_dir, storage):
        held += [f"{stored.child(storage, n)}/" for n in ("checkpoints", "final") if stored.exists(stored.child(storage, n))]
    return held


def remove_run(output_dir: Path, storage=None) -> list[str]:
    """``overwrite=true``: remove what an earlier run wrote (:data:`OVERWRITTEN`, and :data:`STORED` of a
    separate ``storage``); other files stay. Returns the names removed."""
    removed = []
    for name in OVERWRITTEN:
        path = Path(output_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    if _separate(output_dir, storage):
        for name in STORED:
            if stored.exists(stored.child(storage, name)):
                stored.remove(stored.child(storage, name))
                removed.append(str(stored.child(storage, name)))
    return removed


def read_run_id(output_dir) -> str | None:
    """The id in ``<output_dir>/run.json`` (or the run's storage), or None when there is none (a folder
    of an older version)."""
    path = stored.child(stored.location(output_dir), RUN_ID_FILE)
    if not stored.exists(path):
        return None
    try:
        found = json.loads(stored.read_text(path))["run_id"]
        if isinstance(found, str) and found:
            return found
        raise ValueError("run_id is not a non-empty string")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {str(exc)[:100]}); it names the run this "
                              "folder holds: restore it, or delete it (every checkpoint there is then taken)") from None


def run_id(output_dir) -> str:
    """The id of the run ``output_dir`` holds: read from ``run.json``, or created (written atomically)
    when a run first starts there (a fresh folder, one emptied by ``overwrite=true``, or a branch:
    ``resume=DIR`` into a new folder)."""
    found = read_run_id(output_dir)
    if found:
        return found
    new, path = uuid.uuid4().hex, stored.child(stored.location(output_dir), RUN_ID_FILE)
    stored.write_text(path, json.dumps({"run_id": new}) + "\n")
    return new


def _inside(path, folder) -> bool:
    if isinstance(path, Path) and isinstance(folder, Path):
        return path == folder or folder in path.parents
    return str(path) == str(folder) or str(path).startswith(str(folder).rstrip("/") + "/")


def check_reuse(cfg, output_dir: Path, storage=None) -> None:
    """Refuse, in one line, a run that would mix with, or silently replace, the run ``output_dir`` holds.

    No run there: anything goes. A run there and ``resume`` null: refused (``overwrite=true`` starts
    over). ``resume=auto``: needs a checkpoint there. ``resume=DIR``: DIR must be a checkpoint of that
    run. ``overwrite=true`` with ``resume=auto``, or with a DIR inside ``output_dir``: contradictory.
    Then, with ``resume``, the checkpoint and the folder's ``config.yaml`` must come from a compatible
    config (:func:`orchestrator.checkpoint.mismatch`). ``storage``: where the run's checkpoints are, when
    not in ``output_dir``."""
    resume, overwrite = cfg.resume, bool(cfg.get("overwrite", False))
    out = repr(str(output_dir))
    store = output_dir if storage is None else storage
    source = stored.resolve(resume) if resume not in (None, "auto") else None
    if overwrite and (resume == "auto" or (source is not None and _inside(source, store))):
        raise ConfigError(f"overwrite=true (start over, deleting the run in output_dir={out}) and resume={resume} "
                          "(continue it) contradict each other; drop one of them")
    held = run_files(output_dir, storage)
    if held and not overwrite:
        what = f"output_dir={out} already holds a run ({', '.join(held)})"
        start_over = "start over with overwrite=true (deletes its metrics, config, checkpoints and final/)"
        if resume is None:
            hint = ("continue it with resume=auto, " if checkpoint.newest_state(store) else
                    "it has no checkpoint to continue from (trainer.save_steps=0 writes none); ")
            raise ConfigError(f"{what}; {hint}{start_over}, or choose another output_dir")
        if resume == "auto" and checkpoint.newest_state(store) is None:
            raise ConfigError(f"resume=auto: {what} but no checkpoint to continue from (trainer.save_steps=0 "
                              f"writes none); nothing was changed: {start_over}, or choose another output_dir")
        if source is not None and not _inside(source, store):
            raise ConfigError(f"resume={resume}: {what}, and a checkpoint of another folder would mix the two "
                              f"runs; choose an empty output_dir, or {start_over}")
    if resume is not None:
        check_compatible(cfg, output_dir, source, store)


def check_compatible(cfg, output_dir: Path, source=None, store=None) -> None:
    """The checkpoint to resume (``source``, or for ``resume=auto`` the newest in ``output_dir``) and
    ``<output_dir>/config.yaml`` must have been written with the fields that make a resume valid
    equal to this run's; else CheckpointError naming the field, the old and the new value."""
    from omegaconf import OmegaConf

    new = OmegaConf.to_container(cfg, resolve=True)
    written = []
    store = output_dir if store is None else store
    found = checkpoint.newest_state(store) if source is None else checkpoint.read_state(source)
    if found and isinstance(found[1].get("config"), dict):
        written.append((stored.child(found[0], checkpoint.STATE_FILE), found[1]["config"]))
    saved = output_dir / "config.yaml"
    if saved.is_file() and not (source and not _inside(source, store)):
        try:
            written.append((saved, OmegaConf.to_container(OmegaConf.load(saved))))
        except Exception as exc:  # a YAML or OmegaConf error: one line
            raise CheckpointError(f"{saved}: unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                                  "it records the run this folder holds: restore it, or use another output_dir") from None
    for where, old in written:
        bad = checkpoint.mismatch(old, new)
        if bad:
            name, was, now = bad
            raise CheckpointError(f"resume={cfg.resume}: {where} was written by a run with {name}={was!r}, this "
                                  f"run has {name}={now!r}; a run resumes only with the same {name}: set it back, "
                                  "or use another output_dir")
