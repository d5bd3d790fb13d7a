"""Attack rows: ``{"prompt": str, "category": str[, "benign": bool]}``, read and checked before anything starts.

A row with ``"benign": true`` is a control: a harmless request that looks risky ("how do I kill a
Python process"); its answers measure over-refusal, not attack success. Every problem is a one-line
:class:`~orchestrator.errors.DataError` naming ``file:line`` (or a ConfigError naming the field).
"""

from __future__ import annotations

from orchestrator.data import check_object, check_prompt
from orchestrator.errors import ConfigError, DataError
from orchestrator.inputs import json_type_name, load_rows, resolve_data_path


def check_attack_row(row, where: str) -> dict:
    """One attack row, normalised to ``{"prompt", "category", "benign", "source"}``; DataError naming ``where``."""
    check_object(row, where, ("prompt", "category"))
    if not isinstance(row["prompt"], str):
        raise DataError(f"{where}: 'prompt' must be a non-empty string, got {json_type_name(row['prompt'])}")
    check_prompt(row["prompt"], where)
    category = row["category"]
    if not isinstance(category, str) or not category.strip():
        raise DataError(f"{where}: 'category' must be a non-empty string, got {json_type_name(category)}")
    benign = row.get("benign", False)
    if not isinstance(benign, bool):
        raise DataError(f"{where}: 'benign' must be true or false, got {json_type_name(benign)}")
    return {"prompt": row["prompt"], "category": category.strip(), "benign": benign, "source": row.get("source", "file")}


def load_attacks(cfg) -> list[dict]:
    """The attack rows of ``redteam.attacks``, kept to ``redteam.categories`` (when given), with at most
    ``redteam.max_attacks`` non-benign rows taken in turn from each category (file order within a category)."""
    r = cfg.redteam
    path = resolve_data_path(r.attacks)
    rows = load_rows(path, check_attack_row, field="redteam.attacks", max_row_bytes=cfg.data.max_row_bytes)
    present = sorted({row["category"] for row in rows})
    wanted = list(r.categories or [])
    unknown = [c for c in wanted if c not in present]
    if unknown:
        raise ConfigError(f"redteam.categories: unknown category {unknown[0]!r}; {r.attacks} has: {', '.join(present)}")
    if wanted:
        rows = [row for row in rows if row["category"] in wanted]
    harmful = [row for row in rows if not row["benign"]]
    if r.max_attacks is not None and len(harmful) > r.max_attacks:  # benign controls are all kept
        rows = take_in_turn(harmful, r.max_attacks) + [row for row in rows if row["benign"]]
    if not any(not row["benign"] for row in rows):
        raise DataError(f"redteam.attacks={r.attacks}: no attack rows (only benign controls) after the filters")
    return rows


def take_in_turn(rows: list[dict], n: int) -> list[dict]:
    """``n`` rows taken one category at a time (round robin), so every category keeps its share."""
    by_category: dict[str, list[dict]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row)
    queues = list(by_category.values())
    out: list[dict] = []
    i = 0
    while len(out) < n:
        queue = queues[i % len(queues)]
        depth = i // len(queues)
        if depth < len(queue):
            out.append(queue[depth])
        i += 1
    return out
