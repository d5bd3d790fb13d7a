"""Prompt data: loading and checking rows, rendering prompts, and a resumable loader.

:func:`load_rows` reads rows from any supported source and passes each through a row check;
:func:`load_prompt_rows` uses it for prompt rows (``orchestrator.preference_data`` for preference
pairs and SFT rows). A prompt is either a non-empty string or a non-empty list of chat messages
``{"role": str, "content": str}``. Every problem with the data is a one-line
:class:`~orchestrator.errors.DataError` that names the place at fault: ``file:N`` (1-based line)
for JSONL, and ``file:row N`` (0-based row index, as in ``dataset[N]``) for JSON lists, parquet
files and datasets.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterator

from orchestrator.errors import DataError

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def _short(exc: BaseException, limit: int = 200) -> str:
    """Return the first line of an exception message, prefixed by its type and kept short."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


_TYPE_NAMES = {str: "string", bool: "boolean", int: "number", float: "number", list: "list",
               dict: "object", type(None): "null"}


def json_type_name(value: Any) -> str:
    """Return a short, JSON-flavoured name for the type of ``value``."""
    return _TYPE_NAMES.get(type(value), type(value).__name__)


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


RowCheck = Callable[[Any, str], dict]
"""``check(row, where) -> row``: checks (and may normalise) one raw row, raising DataError that
starts with ``where`` (``file:N`` or ``file:row N``) when the row is malformed."""


def _read_text(path: str) -> str:
    """Read a UTF-8 text file (a leading byte-order mark is allowed)."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return fh.read()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _load_jsonl(path: str, check: RowCheck) -> list[dict]:
    """Load and check a JSON Lines file; blank lines are skipped."""
    rows = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _invalid_json(path, exc, lineno) from None
        rows.append(check(row, f"{path}:{lineno}"))
    return rows


def _invalid_json(path: str, exc: json.JSONDecodeError, line: int | None = None) -> DataError:
    """Build the one-line error for a JSON syntax error."""
    return DataError(f"{path}:{line or exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})")


def _load_json(path: str, check: RowCheck) -> list[dict]:
    """Load and check a JSON file holding a list of objects (JSON Lines content also works)."""
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several top-level values: read it as JSON Lines
            return _load_jsonl(path, check)
        raise _invalid_json(path, exc) from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {json_type_name(data)}")
    return _check_rows(data, path, check)


def _check_rows(rows: list, name: str, check: RowCheck) -> list[dict]:
    """Check rows that come from a list or a table, naming them ``name:row N``."""
    return [check(row, f"{name}:row {i}") for i, row in enumerate(rows)]


def _load_parquet(path: str, check: RowCheck) -> list[dict]:
    """Load and check a parquet file."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise DataError(f"{path}: not a readable parquet file: {_short(exc)}") from None
    return _check_rows(table.to_pylist(), path, check)


def _pick_split(data: Any, path: str, split: str, field: str) -> Any:
    """Return ``data[split]`` for a DatasetDict, or ``data`` itself for a single Dataset."""
    import datasets

    if isinstance(data, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in data:
            raise DataError(
                f"{field}={path}: no split '{split}' (splits: {', '.join(data) or 'none'})")
        return data[split]
    return data


def _load_with_datasets(path: str, split: str, check: RowCheck, field: str) -> list[dict]:
    """Load a ``save_to_disk`` directory, a folder of data files, or a dataset by name."""
    saved = os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in
                                        ("dataset_dict.json", "state.json", "dataset_info.json"))
    try:
        import datasets

        data = datasets.load_from_disk(path) if saved else datasets.load_dataset(path, split=split)
    except Exception as exc:
        why = "directory is not a loadable dataset" if os.path.isdir(path) else \
            "not a file, and not a dataset that loads offline"
        raise DataError(f"{field}={path}: {why}: {_short(exc)}") from None
    data = _pick_split(data, path, split, field)
    rows = data.to_list() if hasattr(data, "to_list") else list(data)
    return _check_rows(rows, path, check)


def _looks_like_file(path: str) -> bool:
    """True when ``path`` is plainly meant as a local path (a file suffix, an absolute or
    relative path, or a parent folder that exists here) rather than a dataset name."""
    parent = os.path.dirname(os.path.expanduser(path))
    return path.lower().endswith(FILE_SUFFIXES) or path.startswith(("/", ".", "~")) \
        or (bool(parent) and os.path.isdir(parent))


def load_rows(path: str, check: RowCheck, split: str = "train", field: str = "data.path") -> list[dict]:
    """Load rows from a file, a saved dataset directory or a dataset name, checking each one.

    ``path`` may be a ``.jsonl``, ``.json`` (a list of objects) or ``.parquet`` file, a directory
    saved with ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (``split`` picks
    the split of a DatasetDict), or a dataset name for ``datasets.load_dataset``. Each raw row goes
    through ``check(row, where)`` and what it returns is kept. ``field`` is the config field the
    path came from; errors about the path as a whole name it (``data.path: no such file: X``).
    """
    if not isinstance(path, str) or not path.strip():
        raise DataError(f"{field} is empty; give a .jsonl/.json/.parquet file or a dataset")
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
        rows = _load_with_datasets(expanded, split, check, field)
    elif os.path.isfile(expanded):
        lower = expanded.lower()
        if lower.endswith(".jsonl"):
            rows = _load_jsonl(expanded, check)
        elif lower.endswith(".json"):
            rows = _load_json(expanded, check)
        elif lower.endswith(".parquet"):
            rows = _load_parquet(expanded, check)
        else:
            raise DataError(f"{field}={path}: unsupported file type; use .jsonl, .json or "
                            ".parquet, a saved dataset directory, or a dataset name")
    elif _looks_like_file(path):
        raise DataError(f"{field}: no such file: {path}")
    else:
        rows = _load_with_datasets(path, split, check, field)
    if not rows:
        raise DataError(f"{field}={path}: no rows (the dataset is empty)")
    return rows


def load_prompt_rows(path: str, prompt_key: str = "prompt", split: str = "train",
                     field: str = "data.path") -> list[dict]:
    """Load prompt rows (see :func:`load_rows` for the sources ``path`` may name).

    Every row must hold a valid prompt under ``prompt_key``; other columns are kept as they are.
    """
    return load_rows(path, lambda row, where: check_prompt_row(row, where, prompt_key), split, field)


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
