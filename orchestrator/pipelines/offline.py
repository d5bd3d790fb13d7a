"""What the offline pipelines (dpo, rm, sft) share that is not their algorithm: input checks,
tokenisation with the over-long policy, the roles they place, and held-out evaluation.
"""

from __future__ import annotations

import logging

from orchestrator.ahead import OneAhead
from orchestrator.data import load_train_and_held_out
from orchestrator.errors import DataError
from orchestrator.loop import train
from orchestrator.preference_data import load_pair_rows, load_sft_rows

log = logging.getLogger("tether")


def load_pair_data(cfg) -> tuple[list[dict], list[dict]]:
    """Preference pairs (train, held-out), every row checked before anything starts."""
    d = cfg.data
    return load_train_and_held_out(cfg, load_pair_rows, "trainer.mini_batch_size", "preference pairs",
                                   prompt_key=d.prompt_key, chosen_key=d.chosen_key, rejected_key=d.rejected_key)


def load_sft_data(cfg) -> tuple[list[dict], list[dict]]:
    """SFT rows (train, held-out), normalised to ``{"prompt", "response"}``."""
    d = cfg.data
    return load_train_and_held_out(cfg, load_sft_rows, "trainer.mini_batch_size", "rows", prompt_key=d.prompt_key,
                                   response_key=d.response_key, messages_key=d.messages_key)


def encode_both(ctx, encode, **kwargs) -> tuple[list[dict], list[dict]]:
    """Tokenise the train and held-out rows with ``encode(tokenizer, rows, ..., overlong)``; says how
    many rows were truncated or dropped (``data.overlong``), and fails if too few train rows are left."""
    cfg = ctx.cfg
    out = []
    for name, rows in (("train", ctx.train_rows), ("held-out", ctx.eval_rows)):
        if not rows:
            out.append([])
            continue
        encoded, counts = encode(ctx.tokenizer, rows, max_length=cfg.data.max_length, overlong=cfg.data.overlong,
                                 **kwargs)
        if counts.get("truncated") or counts.get("dropped"):
            log.warning("%s data: %d of %d rows were over data.max_length=%d tokens: %d truncated, %d dropped "
                        "(data.overlong=%s)", name, counts.get("truncated", 0) + counts.get("dropped", 0),
                        counts["rows"], cfg.data.max_length, counts.get("truncated", 0), counts.get("dropped", 0),
                        cfg.data.overlong)
        out.append(encoded)
    if len(out[0]) < cfg.trainer.mini_batch_size:
        raise DataError(f"only {len(out[0])} train rows are left after dropping over-long ones, fewer than "
                        f"trainer.mini_batch_size={cfg.trainer.mini_batch_size}; raise data.max_length or use "
                        "data.overlong=truncate")
    return out[0], out[1]


def held_out_metrics(group, batch: dict | None) -> dict[str, float]:
    """The objective's metrics on the held-out batch, as ``eval/<name>``."""
    if batch is None:
        return {}
    return {f"eval/{k}": v for k, v in group.evaluate(batch).items()}


def train_metrics(stats: dict, epoch: int) -> dict[str, float]:
    """A step's metrics row from the trainer group's stats."""
    row = {k: v for k, v in stats.items() if k not in ("nonfinite_skips", "updates")}
    row["train/nonfinite_skips"] = stats["nonfinite_skips"]
    row["epoch"] = epoch
    return row


def fit(ctx, group, role: str, train_rows: list[dict], eval_batch: dict | None, make_batch, finish=None,
        ahead: bool = False) -> dict:
    """The offline loop: ``make_batch(rows)`` -> one optimizer step -> metrics row (held-out metrics
    every ``trainer.eval_every`` steps and after the last) -> checkpoint every ``trainer.save_steps``;
    then ``<output_dir>/final``. Returns the last metrics row. With ``finish``, ``make_batch`` only
    starts remote work and ``finish(handle)`` waits for it and returns the batch; with ``ahead`` too,
    the next step's batch is started before this step trains (``orchestrator/ahead.py``)."""
    from orchestrator.data import PromptLoader

    cfg = ctx.cfg
    loader = PromptLoader(train_rows, cfg.trainer.mini_batch_size, cfg.seed)
    batches = OneAhead(loader, lambda rows, n: make_batch(rows), finish or (lambda batch: batch), ahead,
                       cfg.trainer.max_steps)

    def step(n: int) -> tuple[dict, tuple]:
        _, batch, _, epoch = batches.next(n)
        with ctx.phase("train"):
            stats = group.train(batch, 1, seed=cfg.seed + n)
        return train_metrics(stats, epoch), (stats,)

    evaluate = (lambda: held_out_metrics(group, eval_batch)) if eval_batch is not None else None
    return train(ctx, step, groups={role: group}, state={"loader": batches}, final=group, evaluate=evaluate)
