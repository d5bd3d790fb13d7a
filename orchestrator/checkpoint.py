"""Atomic checkpoints of a run, and finding the newest good one.

Layout: ``<output_dir>/checkpoints/step_000012/`` holding one DeepSpeed checkpoint folder per
trainer group (``policy/``, ``critic/``: weights, optimizer and scheduler state, ZeRO partitions
included) and ``state.json`` (step, data-loader position, KL controller, the resolved config).
A checkpoint is written to ``.tmp_step_...`` and renamed into place only once complete; the
``COMPLETE`` file written last lists the groups and the size and SHA-256 of every file. A folder
without it, with unreadable ``state.json``, a missing group, or a file whose size or hash differs
(truncated, corrupted or replaced) is skipped with a warning and the previous one used. The ranks
then read DeepSpeed's pickled files with ``torch.load(weights_only=True)`` (``workers/safe_torch_load.py``).

A run resumed from an older checkpoint than the newest starts a new timeline: the newer ones are
moved to ``checkpoints/abandoned/`` (:func:`set_aside_newer`), where neither ``resume=auto`` nor
pruning sees them. A resume is refused when a field that the saved state depends on differs
(:data:`RESUME_FIELDS`, :func:`mismatch`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from orchestrator import atomic
from orchestrator.errors import CheckpointError

log = logging.getLogger("tether")
STATE_FILE, COMPLETE_FILE = "state.json", "COMPLETE"


def root(output_dir: Path) -> Path:
    """The folder holding a run's checkpoints."""
    return Path(output_dir) / "checkpoints"


def step_folders(output_dir: Path) -> list[Path]:
    """The live timeline's ``step_N`` folders, oldest first by step number (``step_1000000`` sorts
    after ``step_999999``, which a sort by name would not do)."""
    def number(folder: Path) -> tuple[int, str]:
        digits = folder.name[len("step_"):]
        return (int(digits), folder.name) if digits.isdigit() else (-1, folder.name)

    return sorted(root(output_dir).glob("step_*"), key=number)


def save(output_dir: Path, step: int, state: dict, groups: dict, keep: int) -> Path:
    """Write checkpoint ``step`` (every group saves its ranks' DeepSpeed state), keep the newest ``keep``."""
    final = root(output_dir) / f"step_{step:06d}"
    tmp = root(output_dir) / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, group in groups.items():
        group.save_checkpoint(str(tmp / name))
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=1))
    (tmp / COMPLETE_FILE).write_text(json.dumps({"groups": sorted(groups), "files": _manifest(tmp)}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    for old in step_folders(output_dir)[:-keep] if keep > 0 else []:  # live timeline only
        shutil.rmtree(old, ignore_errors=True)
    return final


ABANDONED = "abandoned"
# config fields a checkpoint's state depends on: another pipeline or algorithm has other trainer
# groups and state; other weights or another ZeRO layout / world size cannot load the saved partitions
RESUME_FIELDS = ("pipeline", "algorithm.name", "algorithm.estimator", "model.path", "model.gguf",
                 "trainer.num_ranks", "trainer.zero_stage")


def _select(cfg: dict, dotted: str):
    for key in dotted.split("."):
        if not isinstance(cfg, dict) or key not in cfg:
            return None
        cfg = cfg[key]
    return cfg


def mismatch(old: dict, new: dict) -> tuple[str, object, object] | None:
    """The first of :data:`RESUME_FIELDS` (and ``model.tiny`` when the tiny model is built) that differs
    between a saved config and this run's, as ``(field, old, new)``; None when the resume is valid.
    A field missing from either side (an older schema) is not compared."""
    fields = list(RESUME_FIELDS)
    if _select(new, "model.path") is None and _select(new, "model.gguf") is None:
        fields.append("model.tiny")
    for name in fields:
        was, now = _select(old, name), _select(new, name)
        if was is not None and now is not None and was != now:
            return name, was, now
    return None


def read_state(folder: Path) -> tuple[Path, dict] | None:
    """``(folder, state)`` when ``folder`` has a COMPLETE marker and a readable ``state.json`` (no
    hashing: a cheap look before anything starts), else None."""
    try:
        if (folder / COMPLETE_FILE).is_file():
            state = json.loads((folder / STATE_FILE).read_text())
            if isinstance(state, dict):
                return folder, state
    except (OSError, ValueError):
        pass
    return None


def newest_state(output_dir: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint of the live timeline that :func:`read_state` reads, or None."""
    for folder in reversed(step_folders(output_dir)):
        found = read_state(folder)
        if found:
            return found
    return None


def set_aside_newer(output_dir: Path, step: int) -> list[Path]:
    """Move the checkpoints newer than ``step`` (an abandoned timeline after resuming an older one, or
    broken ones skipped) to ``checkpoints/abandoned/``; nothing is deleted. Returns their new paths."""
    moved = []
    for folder in sorted(root(output_dir).glob("step_*")):
        try:
            newer = int(folder.name.split("_")[1]) > step
        except (IndexError, ValueError):
            continue
        if newer:
            dest = root(output_dir) / ABANDONED / folder.name
            n = 1
            while dest.exists():
                n += 1
                dest = root(output_dir) / ABANDONED / f"{folder.name}.{n}"
            dest.parent.mkdir(exist_ok=True)
            os.rename(folder, dest)
            moved.append(dest)
    if moved:
        log.warning("resumed at step %d: moved %d newer checkpoint(s) of the abandoned timeline to %s (%s); "
                    "resume=auto and trainer.keep_checkpoints ignore them", step, len(moved),
                    root(output_dir) / ABANDONED, ", ".join(p.name for p in moved))
    return moved


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest(folder: Path) -> dict:
    """``{relative path: [size, sha256]}`` of every file under ``folder``."""
    return {str(p.relative_to(folder)): [p.stat().st_size, _sha256(p)]
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != COMPLETE_FILE}


def problem(folder: Path) -> str | None:
    """Why ``folder`` is not a usable checkpoint, or None when it is."""
    try:
        complete = json.loads((folder / COMPLETE_FILE).read_text())
        groups, files = complete["groups"], complete["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "no valid COMPLETE marker (half-written or not a checkpoint)"
    try:
        json.loads((folder / STATE_FILE).read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"unreadable {STATE_FILE}"
    missing = [g for g in groups if not (folder / g).is_dir()]
    if missing:
        return f"missing trainer state for {', '.join(missing)}"
    for rel, (size, digest) in files.items():
        path = folder / rel
        if not path.is_file():
            return f"missing file {rel}"
        if path.stat().st_size != size or _sha256(path) != digest:
            return f"file {rel} does not match what was written (corrupt)"
    return None


def load_state(folder: Path) -> dict:
    """The ``state.json`` of a checkpoint that passed :func:`problem`."""
    return json.loads((folder / STATE_FILE).read_text())


def good_checkpoints(output_dir: Path):
    """Good checkpoints, newest first, as ``(folder, state)``; broken ones are skipped with a warning."""
    for folder in reversed(step_folders(output_dir)):
        why = problem(folder)
        if why is None:
            yield folder, load_state(folder)
        else:
            log.warning("skipping checkpoint %s: %s", folder, why)


def latest(output_dir: Path) -> tuple[Path, dict] | None:
    """The newest good checkpoint and its state, or None."""
    return next(good_checkpoints(output_dir), None)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows after ``step`` (written after the checkpoint a run resumes from). A torn last
    line (a kill mid-write) is dropped with a warning; a malformed line before it is a CheckpointError
    naming file:line."""
    if not path.exists():
        return
    lines = [(n, line) for n, line in enumerate(path.read_bytes().split(b"\n"), 1) if line.strip()]
    kept = []
    for i, (n, line) in enumerate(lines):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step", 0), int):
                raise ValueError("not a JSON object with an integer step")
        except ValueError as exc:  # UnicodeDecodeError is one too
            if i == len(lines) - 1:
                log.warning("%s:%d: dropped a torn last line (the run was killed while writing it)", path, n)
                break
            raise CheckpointError(f"{path}:{n}: malformed metrics row ({exc}); fix or delete that line to "
                                  "resume") from None
        if row.get("step", 0) <= step:
            kept.append(line.decode() + "\n")
    atomic.write_text(path, "".join(kept))


def rng_state() -> dict:
    """The driver's Python / NumPy / torch random states, as JSON-able lists."""
    import random

    import numpy as np
    import torch

    np_state = np.random.get_state()
    return {"python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            "numpy": [np_state[0], np_state[1].tolist(), *map(float, np_state[2:])],
            "torch": torch.get_rng_state().tolist()}


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    import random

    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), int(pos), int(has_gauss), cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
