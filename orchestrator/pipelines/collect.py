"""Human preference collection: people compare two responses in a web page; their labels feed DPO / RM.

As on paper:
  1. the pairs: ready ones from ``collect.pairs_path``, or two responses per prompt (``data.path``)
     sampled on the rollout engines (two samples of ``model``, or ``model`` against
     ``collect.model_b_path``);
  2. with ``collect.selection=uncertainty``, the reward model ``collect.reward_model_path`` predicts each
     pair's preference; pairs closest to 0.5 are served first;
  3. the pairs go into the label database (``<output_dir>/collect/labels.db``, or
     ``collect.database_url``); a restart finds them there and skips 1-2;
  4. the web app (``collect.host``:``collect.port``) serves each annotator (``collect.annotators``, one
     token and URL each) pairs nobody else has (``collect.overlap`` > 1: that many annotators a pair),
     stores every judgement, and keeps ``<output_dir>/collect/preferences.jsonl`` (prompt, chosen,
     rejected: what ``pipeline=dpo`` / ``rm`` read) and ``summary.json`` (counts, balance, agreement)
     current, until every pair is judged, ``collect.max_labels`` labels, or SIGTERM / Ctrl-C.
``collect.serve=false`` stops after step 3. The page, storage and security rules are in
``orchestrator/collect/`` (app.py, store.py, tokens.py); see README "Human preference collection".
"""

from __future__ import annotations

import logging

from orchestrator.collect.export import export
from orchestrator.collect.pairs import generate_pairs, load_inputs, score_pairs
from orchestrator.collect.session import LabellingSession, database_url, labelling_folder, stored_pairs
from orchestrator.collect.store import LabelStore
from orchestrator.run import RunContext

log = logging.getLogger("tether")


def prepare_pairs(cfg, inputs: list[dict]) -> list[dict]:
    """Steps 1-2: pairs from the rollout engines and / or priorities from the reward model (on Ray)."""
    import ray

    with RunContext(cfg, lambda _: (inputs, [])) as ctx:
        pairs = inputs if cfg.collect.pairs_path else generate_pairs(ctx, inputs)
        pairs = score_pairs(ctx, pairs) if cfg.collect.selection == "uncertainty" else pairs
    ray.shutdown()  # the engines' work is done; labelling needs no Ray
    return pairs


def run(cfg) -> dict:
    """Prepare the pairs once, then serve them until the session ends; returns the summary numbers."""
    c = cfg.collect
    inputs = load_inputs(cfg)  # checked (file:line) before anything starts
    stored = stored_pairs(cfg)
    if not stored:
        ready = c.pairs_path and c.selection != "uncertainty"
        pairs = inputs if ready else prepare_pairs(cfg, inputs)
        with labelling_folder(cfg) as folder:
            added = LabelStore(database_url(cfg, folder), c.overlap, cfg.seed).add_pairs(pairs, "pairs_path")
        log.info("collect: %d pairs stored in the label database", added)
    else:
        log.info("collect: %d pairs already in the label database; going on with them", stored)
    with labelling_folder(cfg) as folder:
        store = LabelStore(database_url(cfg, folder), c.overlap, cfg.seed)
        if not c.serve:
            return export(store, folder)
        return LabellingSession(cfg, store, folder).serve()
