"""The targeted-training cycle (``pipeline=redteam redteam.retrain=true``).

Cycle: red-team (``<output_dir>/redteam``) -> ``pipeline=cai`` on the failures with ``cai.then=dpo``
(``<output_dir>/cai``, its DPO run in ``<output_dir>/cai/dpo``) -> the same attacks (file and generated,
from ``responses.jsonl``) against the DPO model (``<output_dir>/after``) -> ``before_after.md`` / ``.json``
in ``<output_dir>/redteam``. The second pass uses the attacks the training saw: it shows whether the
failures were learnt, not whether the model is safer on new attacks.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from orchestrator import atomic
from orchestrator.errors import DataError
from orchestrator.redteam.report import before_after_table
from orchestrator.redteam.stages import derived_config, run_stage

log = logging.getLogger("tether")


def retrain_and_attack_again(cfg, before: dict) -> dict:
    """CAI on the failures, DPO on its pairs, the same attacks again; writes and returns the before/after."""
    out = Path(cfg.output_dir).expanduser().resolve()
    folder = out / "redteam"
    if before["n_failures"] < cfg.trainer.mini_batch_size:
        raise DataError(f"redteam.retrain: {before['n_failures']} failures, fewer than trainer.mini_batch_size="
                        f"{cfg.trainer.mini_batch_size}; nothing to train on (the red-team results are in {folder})")
    cai = derived_config(cfg, {"pipeline": "cai", "data.path": str(folder / "failures.jsonl"), "data.eval_path": None,
                               "output_dir": str(out / "cai"), "cai.then": "dpo", "redteam.retrain": False,
                               "resume": None})
    run_stage(cai, "redteam.retrain (CAI on the failures, then DPO)")
    again = derived_config(cfg, {"model.path": str(out / "cai" / "dpo" / "final"), "model.gguf": None,
                                 "redteam.attacks": str(folder / "responses.jsonl"), "redteam.categories": [],
                                 "redteam.max_attacks": None, "redteam.generate_per_category": 0,
                                 "redteam.retrain": False, "output_dir": str(out / "after"), "resume": None})
    run_stage(again, "redteam.retrain (the same attacks on the trained model)")
    after = json.loads((out / "after" / "redteam" / "summary.json").read_text(encoding="utf-8"))
    atomic.write_text(folder / "before_after.json", json.dumps({"before": before, "after": after}, indent=1) + "\n")
    atomic.write_text(folder / "before_after.md", before_after_table(before, after))
    log.info("redteam.retrain: attack success rate %.3f -> %.3f (%s)", before["attack_success_rate"],
             after["attack_success_rate"], folder / "before_after.md")
    return {"redteam/attack_success_rate/before": before["attack_success_rate"],
            "redteam/attack_success_rate/after": after["attack_success_rate"]}
