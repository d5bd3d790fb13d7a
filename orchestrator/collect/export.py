"""What the label database gives the training pipelines: ``preferences.jsonl`` and ``summary.json``.

``preferences.jsonl`` holds one row per pair with a decisive majority: ``prompt``, ``chosen``,
``rejected`` (what ``pipeline=dpo`` / ``pipeline=rm`` read as they are), plus ``pair_id``,
``votes`` (``{"a", "b", "tie", "skip"}`` counts), ``annotators``, ``tags`` (HHH tags given), ``notes``
and ``source``. Ties and skips are stored in the database but give no row; a pair whose ``a`` and
``b`` votes are equal gives none either. Both files are rewritten whole and atomically (a reader sees
the old file or the new one) after every judgement.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from orchestrator import atomic
from orchestrator.collect.agreement import agreement, balance


def preference_rows(pairs: list[dict], judgements: list[dict]) -> list[dict]:
    """The exported rows, in the pairs' load order."""
    by_pair: dict[str, list[dict]] = defaultdict(list)
    for j in judgements:
        by_pair[j["pair_id"]].append(j)
    rows = []
    for pair in pairs:
        given = by_pair.get(pair["id"], [])
        votes = Counter(j["choice"] for j in given)
        if votes["a"] == votes["b"]:
            continue
        a_wins = votes["a"] > votes["b"]
        rows.append({"prompt": pair["prompt"],
                     "chosen": pair["response_a"] if a_wins else pair["response_b"],
                     "rejected": pair["response_b"] if a_wins else pair["response_a"],
                     "pair_id": pair["id"], "votes": {k: votes[k] for k in ("a", "b", "tie", "skip")},
                     "annotators": [j["annotator"] for j in given],
                     "tags": sorted({t for j in given for t in j["tags"].split(",") if t}),
                     "notes": [j["note"] for j in given if j["note"]], "source": pair["source"]})
    return rows


def summary(pairs: list[dict], judgements: list[dict], exported: int) -> dict:
    """Counts, label balance and inter-annotator agreement (``collect/*`` metric names)."""
    b, a = balance(judgements), agreement(judgements)
    values = {"pairs": len(pairs), "labels": b["labels"], "decisive": b["decisive"], "ties": b["ties"],
              "skips": b["skips"], "exported_pairs": exported, "balance/left_share": b["left_share"],
              "balance/a_share": b["a_share"], "agreement/compared": a["compared"],
              "agreement/rate": a["agreement"], "agreement/kappa": a["kappa"],
              "annotators": len({j["annotator"] for j in judgements})}
    return {f"collect/{k}": v for k, v in values.items()}


def export(store, folder: Path) -> dict:
    """Rewrite ``preferences.jsonl`` and ``summary.json`` in ``folder`` from ``store``; returns the summary."""
    pairs, judgements = store.pairs(), store.judgements()
    rows = preference_rows(pairs, judgements)
    atomic.write_text(folder / "preferences.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    values = summary(pairs, judgements, len(rows))
    atomic.write_text(folder / "summary.json", json.dumps(values, indent=1))
    return values
