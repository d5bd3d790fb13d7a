"""Prompt data: checking rows, rendering prompts, and a resumable loader.

:func:`load_prompt_rows` reads prompt rows with :func:`orchestrator.inputs.load_rows` (every source,
every row bounded by ``data.max_row_bytes``) and checks each (``orchestrator.preference_data`` does
the same for preference pairs and SFT rows). A prompt is either a non-empty string or a non-empty
list of chat messages ``{"role": str, "content": str}``. Every problem with the data is a one-line
:class:`~orchestrator.errors.DataError` that names the place at fault: ``file:N`` (1-based line)
for JSONL, and ``file:row N`` (0-based row index, as in ``dataset[N]``) for JSON lists, parquet
files and datasets.
"""

from __future__ import annotations

from typing import Any, Iterator

from omegaconf import OmegaConf

from orchestrator.errors import DataError
from orchestrator.inputs import MAX_ROW_BYTES, RowCheck, data_paths, json_type_name, load_rows

__all__ = ["RowCheck", "load_rows", "json_type_name"]  # re-exported: the readers live in orchestrator.inputs


def check_prompt(prompt: Any, where: str, prompt_key: str = "prompt") -> None:
    """Raise DataError (naming ``where``) unless ``prompt`` is a valid prompt value."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError(f"{where}: empty prompt in '{prompt_key}'")
        return
    if not isinstance(prompt, (list, tuple)):
        raise DataError(f"{where}: '{prompt_key}' must be a non-empty string or a list of "
                        f"{{role, content}} messages, got {json_type_name(prompt)}")
    for i, msg in enumerate(prompt):
        bad = [f for f in ("role", "content")
               if not isinstance(msg, dict) or not isinstance(msg.get(f), str)]
        if bad:
            got = json_type_name(msg) if not isinstance(msg, dict) else f"keys {sorted(msg)}"
            raise DataError(f"{where}: '{prompt_key}' message {i} must be an object with string "
                            f"'role' and 'content', got {got}")
    if not any(m["content"].strip() for m in prompt):
        raise DataError(f"{where}: empty prompt in '{prompt_key}' (no message has content)")


def check_object(row: Any, where: str, keys: tuple[str, ...]) -> None:
    """Raise DataError (naming ``where``) unless ``row`` is a dict holding every key in ``keys``."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: row must be a JSON object, got {json_type_name(row)}")
    for key in keys:
        if key not in row:
            present = ", ".join(repr(k) for k in row) or "none"
            raise DataError(f"{where}: missing key '{key}' (keys present: {present})")


def check_prompt_row(row: Any, where: str, prompt_key: str = "prompt") -> dict:
    """Check one prompt row and return it; raise DataError naming ``where`` if it is malformed."""
    check_object(row, where, (prompt_key,))
    check_prompt(row[prompt_key], where, prompt_key)
    return row


def load_prompt_rows(path: str, prompt_key: str = "prompt", split: str = "train",
                     field: str = "data.path", max_row_bytes: int = MAX_ROW_BYTES) -> list[dict]:
    """Load prompt rows (see :func:`load_rows` for the sources ``path`` may name).

    Every row must hold a valid prompt under ``prompt_key``; other columns are kept as they are.
    """
    return load_rows(path, lambda row, where: check_prompt_row(row, where, prompt_key), split, field,
                     max_row_bytes)


def load_train_and_held_out(cfg, load, batch_field: str, what: str, **keys) -> tuple[list[dict], list[dict]]:
    """Rows (train, held-out) read with ``load(path, split=..., field=..., max_row_bytes=..., **keys)``;
    the train rows must fill at least one batch of ``batch_field`` (a config path such as
    ``trainer.mini_batch_size``)."""
    train_path, eval_path = data_paths(cfg)
    keys["max_row_bytes"] = cfg.data.max_row_bytes
    train = load(train_path, split=cfg.data.split, field="data.path", **keys)
    held_out = load(eval_path, split=cfg.data.split, field="data.eval_path", **keys) if eval_path else []
    batch = OmegaConf.select(cfg, batch_field)
    if batch > len(train):
        raise DataError(f"batch size {batch} ({batch_field}) is larger than the {len(train)} {what} in {train_path}; "
                        f"lower {batch_field}={batch} or add rows")
    return train, held_out


def render_prompt(tokenizer: Any, prompt: str | list[dict]) -> str:
    """Turn a prompt into the text the policy is asked to continue.

    With a chat template, the messages (a string becomes one user message) go through
    ``tokenizer.apply_chat_template(..., tokenize=False, add_generation_prompt=True)``. Without
    one, a string is returned unchanged and messages become ``role: content`` lines followed by
    ``assistant: ``.
    """
    has_template = bool(getattr(tokenizer, "chat_template", None)) if tokenizer else False
    if isinstance(prompt, str):
        if not has_template:
            return prompt
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
        if not has_template:
            lines = [f"{m['role']}: {m['content']}" for m in messages]
            return "\n".join(lines + ["assistant: "])
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


CHARS_PER_TOKEN = 32  # generous: no tokenizer in use packs more characters into a token on average


def last_tokens(tokenizer: Any, texts: list[str], max_tokens: int) -> tuple[list[list[int]], int]:
    """Token ids of each text (no special tokens added), left-truncated to ``max_tokens``, and how
    many texts were truncated.

    A text is cut to its last ``max_tokens * CHARS_PER_TOKEN`` characters before it is tokenised,
    so the tokenizer's work is bounded however long the text is. A text under that bound gets the
    ids of the whole text; over it, the cut lies so far left of the ``max_tokens`` tokens kept
    that they are the ones the whole text has.
    """
    bound = max_tokens * CHARS_PER_TOKEN
    cut = [len(t) > bound for t in texts]
    short = [t[-bound:] if c else t for t, c in zip(texts, cut)]
    ids = tokenizer(short, add_special_tokens=False)["input_ids"] if texts else []
    truncated = sum(c or len(i) > max_tokens for c, i in zip(cut, ids))
    return [list(i[-max_tokens:]) for i in ids], truncated


class PromptLoader:
    """Endless iterator of batches (lists of rows: prompts, preference pairs, SFT rows), epoch
    after epoch.

    Each epoch visits the rows in its own deterministic order: a permutation drawn from
    ``torch.Generator().manual_seed(seed + epoch)`` (or the file order when ``shuffle`` is
    False). The policy is drop_last: the ``len(rows) % batch_size`` rows left at the end of an
    epoch's order are skipped in that epoch; they are different rows in different epochs, so
    every row is still seen. :meth:`state_dict` / :meth:`load_state_dict` make a resumed loader
    yield exactly the batches an uninterrupted one would.
    """

    def __init__(self, rows: list, batch_size: int, seed: int, shuffle: bool = True,
                 row_kind: str = "prompt") -> None:
        """Check the sizes and start at epoch 0 (``row_kind`` names the rows in errors)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch size must be a positive integer, got {batch_size!r}")
        if batch_size > len(rows):
            more = "prompts" if row_kind == "prompt" else f"{row_kind} rows"
            raise DataError(f"batch size {batch_size} is larger than the {len(rows)} {row_kind} rows "
                            f"in the data set; lower the batch size or add {more}")
        self.rows = list(rows)
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self._epoch = 0
        self._index = 0  # rows of this epoch's order already handed out
        self._order_epoch: int | None = None
        self._order: list[int] = []

    @property
    def epoch(self) -> int:
        """The epoch the most recent batch came from (0 before the first batch)."""
        return self._epoch

    @property
    def batches_per_epoch(self) -> int:
        """Number of full batches in one epoch (the remainder is dropped)."""
        return len(self.rows) // self.batch_size

    def _epoch_order(self, epoch: int) -> list[int]:
        """Return (and cache) the row order of ``epoch``."""
        if self._order_epoch != epoch:
            import torch

            gen = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(len(self.rows), generator=gen).tolist()
            self._order = perm if self.shuffle else list(range(len(self.rows)))
            self._order_epoch = epoch
        return self._order

    def __iter__(self) -> Iterator[list]:
        """Return the loader itself (it never runs out)."""
        return self

    def __next__(self) -> list:
        """Return the next batch, moving to the next epoch when this one has no full batch."""
        if self._index + self.batch_size > len(self.rows):
            self._epoch += 1
            self._index = 0
        order = self._epoch_order(self._epoch)
        picked = order[self._index:self._index + self.batch_size]
        self._index += self.batch_size
        return [self.rows[i] for i in picked]

    def state_dict(self) -> dict[str, int]:
        """Return the position as ``{"epoch": e, "index": i}`` (i rows of epoch e used)."""
        return {"epoch": self._epoch, "index": self._index}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a position returned by :meth:`state_dict`."""
        try:
            epoch, index = state["epoch"], state["index"]
        except (KeyError, TypeError):
            raise DataError(f"prompt loader state must have 'epoch' and 'index', got {state!r}") \
                from None
        ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (epoch, index))
        if not ok or index > len(self.rows):
            raise DataError(f"prompt loader state {state!r} does not fit {len(self.rows)} rows")
        self._epoch, self._index = epoch, index
