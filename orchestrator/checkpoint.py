"""Checkpoints of a run in its storage, and finding the newest good one.

Layout: ``<storage>/checkpoints/step_000012/`` (``storage`` is ``output_dir`` unless set; a folder
path or a bucket URI, see ``orchestrator/storage.py``) holding one DeepSpeed checkpoint folder per
trainer group (``policy/``, ``critic/``: weights, optimizer and scheduler state, ZeRO partitions
included, and each rank's ``manifest_rank<R>.json``) and ``state.json`` (step, data-loader position,
KL controller, the resolved config). Each rank saves on its own node and copies its files to storage
with their size and SHA-256; the driver then writes ``state.json`` and, last, ``COMPLETE``, which lists
the groups and every file's size and SHA-256 (the ranks' manifests): nothing is renamed, and a folder
without ``COMPLETE`` (half-written) is not a checkpoint. A folder without it, with unreadable or
altered ``state.json``, a missing group, or a missing file or one of another size is skipped with a
warning and the previous one used; a file whose hash differs is found by the rank that loads it (it
checks every file on its own disk before DeepSpeed reads any) and that checkpoint is skipped too. The
ranks then read DeepSpeed's pickled files with ``torch.load(weights_only=True)``
(``workers/safe_torch_load.py``).

A run resumed from an older checkpoint than the newest starts a new timeline: the newer ones are
moved to ``checkpoints/abandoned/`` (:func:`set_aside_newer`), where neither ``resume=auto`` nor
pruning sees them. A resume is refused when a field that the saved state depends on differs
(:data:`RESUME_FIELDS`, :func:`mismatch`). Functions taking ``where`` take a run's storage location:
a ``Path`` or a URI string.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from orchestrator import atomic, storage
from orchestrator.errors import CheckpointError

log = logging.getLogger("tether")
STATE_FILE, COMPLETE_FILE = "state.json", storage.MARKER


def root(output_dir):
    """The folder holding a run's checkpoints."""
    return storage.child(storage.location(output_dir), "checkpoints")


def _number(folder) -> tuple[int, str]:
    digits = storage.name(folder)[len("step_"):]
    return (int(digits), storage.name(folder)) if digits.isdigit() else (-1, storage.name(folder))


def step_folders(output_dir) -> list:
    """The live timeline's ``step_N`` folders, oldest first by step number (``step_1000000`` sorts
    after ``step_999999``, which a sort by name would not do)."""
    base = root(output_dir)
    return sorted((storage.child(base, n) for n in storage.list_names(base) if n.startswith("step_")), key=_number)


def save(output_dir, step: int, state: dict, groups: dict, keep: int):
    """Write checkpoint ``step`` (every group's ranks copy their DeepSpeed state to storage themselves),
    then ``state.json`` and the ``COMPLETE`` marker; keep the newest ``keep``."""
    folder = storage.child(root(output_dir), f"step_{step:06d}")
    storage.remove(folder)  # a half-written one of an earlier attempt
    for name, group in groups.items():
        group.save_checkpoint(str(storage.child(folder, name)))
    text = json.dumps({"step": step, **state}, indent=1)
    storage.write_text(storage.child(folder, STATE_FILE), text)
    files = {STATE_FILE: [len(text.encode()), hashlib.sha256(text.encode()).hexdigest()]}
    for name in groups:
        files.update({f"{name}/{rel}": v for rel, v in storage.rank_manifests(storage.child(folder, name)).items()})
    storage.write_text(storage.child(folder, COMPLETE_FILE), json.dumps({"groups": sorted(groups), "files": files}, indent=1))
    for old in step_folders(output_dir)[:-keep] if keep > 0 else []:  # live timeline only
        storage.remove(old)
    return folder


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


def read_state(folder) -> tuple[object, dict] | None:
    """``(folder, state)`` when ``folder`` has a COMPLETE marker and a readable ``state.json`` (no
    hashing: a cheap look before anything starts), else None."""
    try:
        if storage.is_file(storage.child(folder, COMPLETE_FILE)):
            state = json.loads(storage.read_text(storage.child(folder, STATE_FILE)))
            if isinstance(state, dict):
                return folder, state
    except (OSError, ValueError):
        pass
    return None


def newest_state(output_dir) -> tuple[object, dict] | None:
    """The newest checkpoint of the live timeline that :func:`read_state` reads, or None."""
    for folder in reversed(step_folders(output_dir)):
        found = read_state(folder)
        if found:
            return found
    return None


def set_aside_newer(output_dir, step: int) -> list:
    """Move the checkpoints newer than ``step`` (an abandoned timeline after resuming an older one, or
    broken ones skipped) to ``checkpoints/abandoned/``; nothing is deleted. Returns their new paths."""
    moved = []
    base = root(output_dir)
    taken = set(storage.list_names(storage.child(base, ABANDONED)))
    for folder in step_folders(output_dir):
        if _number(folder)[0] > step:
            name = storage.name(folder)
            dest, n = name, 1
            while dest in taken:
                n += 1
                dest = f"{name}.{n}"
            taken.add(dest)
            storage.move(folder, storage.child(base, ABANDONED, dest))
            moved.append(storage.child(base, ABANDONED, dest))
    if moved:
        log.warning("resumed at step %d: moved %d newer checkpoint(s) of the abandoned timeline to %s (%s); "
                    "resume=auto and trainer.keep_checkpoints ignore them", step, len(moved),
                    storage.child(base, ABANDONED), ", ".join(storage.name(p) for p in moved))
    return moved


def _sha256(path) -> str:
    if storage.is_local(path):
        return storage.sha256(storage.location(path))
    return hashlib.sha256(storage.read_bytes(path)).hexdigest()


def _manifest(folder: Path) -> dict:
    """``{relative path: [size, sha256]}`` of every file under a local ``folder``."""
    return storage.manifest(folder)


def problem(folder, hashes: bool = True) -> str | None:
    """Why ``folder`` is not a usable checkpoint, or None when it is. Every listed file must be there
    with its size; ``state.json`` (the driver's own) must match its hash. ``hashes=False`` leaves the
    other files' hashes to the ranks that load them (a run never reads them on the driver)."""
    try:
        complete = json.loads(storage.read_text(storage.child(folder, COMPLETE_FILE)))
        groups, files = complete["groups"], complete["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "no valid COMPLETE marker (half-written or not a checkpoint)"
    try:
        json.loads(storage.read_text(storage.child(folder, STATE_FILE)))["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"unreadable {STATE_FILE}"
    missing = [g for g in groups if not storage.is_dir(storage.child(folder, g))]
    if missing:
        return f"missing trainer state for {', '.join(missing)}"
    present = storage.sizes(folder)
    for rel, (size, digest) in files.items():
        if rel not in present:
            return f"missing file {rel}"
        if present[rel] != size or ((hashes or rel == STATE_FILE) and _sha256(storage.child(folder, *rel.split("/"))) != digest):
            return f"file {rel} does not match what was written (corrupt)"
    return None


def load_state(folder) -> dict:
    """The ``state.json`` of a checkpoint that passed :func:`problem`."""
    return json.loads(storage.read_text(storage.child(folder, STATE_FILE)))


def expected_files(group_folder) -> dict:
    """What a rank checks before loading a group's folder: ``{relative path: [size, sha256]}`` from the
    checkpoint's ``COMPLETE`` marker, or (a group folder saved on its own) from the ranks' manifests."""
    group_folder = storage.location(group_folder)
    marker = storage.child(storage.parent(group_folder), COMPLETE_FILE)
    prefix = storage.name(group_folder) + "/"
    if storage.is_file(marker):
        files = json.loads(storage.read_text(marker)).get("files", {})
        return {rel[len(prefix):]: v for rel, v in files.items() if rel.startswith(prefix)}
    found = storage.rank_manifests(group_folder)
    if not found:
        raise CheckpointError(f"{group_folder}: no manifest of what was written (not a checkpoint folder)")
    return found


def good_checkpoints(output_dir, hashes: bool = True):
    """Good checkpoints, newest first, as ``(folder, state)``; broken ones are skipped with a warning."""
    for folder in reversed(step_folders(output_dir)):
        why = problem(folder, hashes)
        if why is None:
            yield folder, load_state(folder)
        else:
            log.warning("skipping checkpoint %s: %s", folder, why)


def latest(output_dir, hashes: bool = True) -> tuple[object, dict] | None:
    """The newest good checkpoint and its state, or None."""
    return next(good_checkpoints(output_dir, hashes), None)


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
