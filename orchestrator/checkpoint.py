"""Atomic checkpoints of a run, and finding the newest good one.

Layout: ``<output_dir>/checkpoints/step_000012/`` holding one DeepSpeed checkpoint folder per
trainer group (``policy/``, ``critic/``: weights, optimizer and scheduler state, ZeRO partitions
included) and ``state.json`` (step, data-loader position, KL controller, the resolved config).
A checkpoint is written to ``.tmp_step_...`` and renamed into place only once complete; the
``COMPLETE`` file written last lists the groups and the size and SHA-256 of every file. A folder
without it, with unreadable ``state.json``, a missing group, or a file whose size or hash differs
(truncated, corrupted or replaced) is skipped with a warning and the previous one used. The ranks
then read DeepSpeed's pickled files with ``torch.load(weights_only=True)`` (``workers/safe_torch_load.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("tether")
STATE_FILE, COMPLETE_FILE = "state.json", "COMPLETE"


def root(output_dir: Path) -> Path:
    """The folder holding a run's checkpoints."""
    return Path(output_dir) / "checkpoints"


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
    for old in sorted(root(output_dir).glob("step_*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


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
    for folder in sorted(root(output_dir).glob("step_*"), reverse=True):
        why = problem(folder)
        if why is None:
            yield folder, load_state(folder)
        else:
            log.warning("skipping checkpoint %s: %s", folder, why)


def latest(output_dir: Path) -> tuple[Path, dict] | None:
    """The newest good checkpoint and its state, or None."""
    return next(good_checkpoints(output_dir), None)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows after ``step`` (written after the checkpoint a run resumes from)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line).get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


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
