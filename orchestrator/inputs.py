"""Where a run's data comes from and how its rows are read, each row bounded in size.

:func:`data_paths` resolves ``data.path`` / ``data.eval_path`` (or the pipeline's shipped set;
``orchestrator.data.load_train_and_held_out`` loads both). :func:`load_rows` reads rows from a
``.jsonl``, ``.json`` (a list of objects) or ``.parquet`` file, a ``save_to_disk`` folder or a
dataset name, passing each through a row check; a key given twice in a JSON object is an error.

Every row is bounded by ``data.max_row_bytes`` while it is read: JSON Lines are read line by line
with ``readline(limit)`` and JSON lists element by element, so an over-long row (a 200 MB line) is a
one-line :class:`~orchestrator.errors.DataError` naming ``file:line`` after reading about the limit,
never the whole row. Errors name ``file:N`` (1-based line) for JSONL and ``file:row N`` (0-based
row index, as in ``dataset[N]``) for JSON lists, parquet files and datasets.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from typing import Any, Callable, Iterator

from orchestrator.errors import ConfigError, DataError

ASSETS = "orchestrator/assets"
SHIPPED_DATA = {  # pipeline -> (train, held-out) used when data.path is null
    "rlhf": (f"{ASSETS}/prompts/tiny.jsonl", None),
    "dpo": (f"{ASSETS}/preferences/tiny.jsonl", f"{ASSETS}/preferences/tiny_eval.jsonl"),
    "rm": (f"{ASSETS}/preferences/tiny.jsonl", f"{ASSETS}/preferences/tiny_eval.jsonl"),
    "sft": (f"{ASSETS}/sft/tiny.jsonl", f"{ASSETS}/sft/tiny_eval.jsonl"),
    "cai": (f"{ASSETS}/red_team/prompts.jsonl", None),
}
MAX_ROW_BYTES = 1 << 20  # the default of data.max_row_bytes
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
_CHUNK = 1 << 16  # bytes read at a time from a JSON list
_WHITESPACE = re.compile(r"[ \t\r\n]*")

RowCheck = Callable[[Any, str], dict]
"""``check(row, where) -> row``: checks (and may normalise) one raw row, raising DataError that
starts with ``where`` (``file:N`` or ``file:row N``) when the row is malformed."""


# ---- which files -----------------------------------------------------------------------------

def resolve_data_path(path: str) -> str:
    """A data path relative to the current folder, else to the project root; names pass through."""
    from orchestrator.rewards.loader import resolve_file

    resolved = resolve_file(path)
    return str(resolved) if resolved.exists() else path


def data_paths(cfg) -> tuple[str, str | None]:
    """``(train, held-out or None)``: ``data.path`` / ``data.eval_path``, or the pipeline's shipped set."""
    if cfg.data.path:
        train, held_out = cfg.data.path, cfg.data.eval_path
    else:
        train, shipped_eval = SHIPPED_DATA[cfg.pipeline]
        held_out = cfg.data.eval_path or shipped_eval
    return resolve_data_path(train), (resolve_data_path(held_out) if held_out else None)


# ---- reading rows ----------------------------------------------------------------------------

def _short(exc: BaseException, limit: int = 200) -> str:
    """Return the first line of an exception message, prefixed by its type and kept short."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _too_long(where: str, limit: int) -> DataError:
    """The error for a row over ``data.max_row_bytes``."""
    return DataError(f"{where}: row is longer than data.max_row_bytes={limit} bytes; shorten it or raise "
                     "data.max_row_bytes")


def _open(path: str):
    """Open ``path`` for reading bytes; DataError when it cannot be read."""
    try:
        return open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _lines(path: str, limit: int) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each line of a UTF-8 file, never holding more than ``limit`` + 2
    bytes of a line (a leading byte-order mark is skipped)."""
    with _open(path) as fh:
        lineno = 0
        while raw := fh.readline(limit + 2):
            lineno += 1
            body = raw[:-1] if raw.endswith(b"\n") else raw
            body = body[:-1] if body.endswith(b"\r") else body
            if len(body) > limit:
                raise _too_long(f"{path}:{lineno}", limit)
            skip = 3 if lineno == 1 and body.startswith(codecs.BOM_UTF8) else 0
            try:
                yield lineno, body[skip:].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not UTF-8 text ({exc.reason} at byte {exc.start + skip + 1} "
                                "of the line)") from None


def _invalid_json(where: str, exc: json.JSONDecodeError, colno: int | None = None) -> DataError:
    """Build the one-line error for a JSON syntax error."""
    return DataError(f"{where}: invalid JSON: {exc.msg} (column {colno or exc.colno})")


class _DuplicateKey(ValueError):
    """A key given twice in one JSON object (json would keep the last value silently)."""


def _unique_keys(pairs: list) -> dict:
    """The ``object_pairs_hook`` of every JSON read here: a key given twice is an error."""
    if len(row := dict(pairs)) < len(pairs):
        key = next(k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i]))
        raise _DuplicateKey(f"key {key!r} appears twice in one object (JSON keeps only the last value); keep one")
    return row


def _text_row(check: RowCheck) -> RowCheck:
    """``check`` after a test that the row's strings are text: a JSON escape such as ``\\ud800`` with
    no pair gives a lone UTF-16 surrogate, which no tokenizer takes (it failed with a traceback)."""
    def checked(row: Any, where: str) -> dict:
        try:
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DataError(f"{where}: holds a lone UTF-16 surrogate ({exc.object[exc.start:exc.end]!r}, a \\u escape "
                            "without its pair): not text; fix the row") from None
        return check(row, where)
    return checked


def _load_jsonl(path: str, check: RowCheck, limit: int) -> list[dict]:
    """Load and check a JSON Lines file; blank lines are skipped."""
    rows = []
    for lineno, line in _lines(path, limit):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            raise _invalid_json(f"{path}:{lineno}", exc) from None
        except _DuplicateKey as exc:
            raise DataError(f"{path}:{lineno}: {exc}") from None
        rows.append(check(row, f"{path}:{lineno}"))
    return rows


class _JsonText:
    """A JSON file read in chunks: one value at a time, none longer than ``limit`` bytes.

    ``buf[pos:]`` is the text not yet consumed; ``line`` is the line ``pos`` is on."""

    def __init__(self, path: str, fh, limit: int) -> None:
        self.path, self.fh, self.limit = path, fh, limit
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False
        self.lines_read = 0  # newlines in the bytes read so far (for decoding errors)

    def _more(self, want: int) -> None:
        """Read at least ``want`` more bytes (all that is left near the end)."""
        raw = self.fh.read(max(want, _CHUNK))
        self.eof = not raw
        try:
            text = self.decoder.decode(raw, final=self.eof)
        except UnicodeDecodeError as exc:
            line = self.lines_read + raw[:max(exc.start, 0)].count(b"\n") + 1
            raise DataError(f"{self.path}:{line}: not UTF-8 text ({exc.reason})") from None
        self.lines_read += raw.count(b"\n")
        self.buf = self.buf[self.pos:] + text
        self.pos = 0

    def _advance(self, end: int) -> None:
        self.line += self.buf.count("\n", self.pos, end)
        self.pos = end

    def peek(self) -> str:
        """Skip whitespace; the next character, or "" at the end of the file."""
        while True:
            self._advance(_WHITESPACE.match(self.buf, self.pos).end())
            if self.pos < len(self.buf) or self.eof:
                return self.buf[self.pos:self.pos + 1]
            self._more(_CHUNK)

    def take(self) -> None:
        """Consume the character :meth:`peek` returned."""
        self._advance(self.pos + 1)

    def error(self, exc: json.JSONDecodeError) -> DataError:
        """A syntax error at ``exc.pos`` of the buffer, as file:line."""
        line = self.line + self.buf.count("\n", self.pos, exc.pos)
        return _invalid_json(f"{self.path}:{line}", exc, exc.pos - self.buf.rfind("\n", 0, exc.pos))

    def value(self, where: str) -> Any:
        """Parse the value starting at ``pos``, reading more as needed, up to ``limit`` bytes."""
        decode = json.JSONDecoder(object_pairs_hook=_unique_keys).raw_decode
        self.peek()
        while True:
            try:
                value, end = decode(self.buf, self.pos)
                if end < len(self.buf) or self.eof:  # a number at the end of the buffer may go on
                    break
            except _DuplicateKey as exc:
                raise DataError(f"{self.path}:{self.line} ({where}): {exc}") from None
            except json.JSONDecodeError as exc:
                cut = exc.msg.startswith("Unterminated string") or exc.pos >= len(self.buf) - 8
                if self.eof or not cut:
                    raise self.error(exc) from None
            size = len(self.buf) - self.pos
            if size > self.limit:  # characters: at least as many bytes
                raise _too_long(f"{self.path}:{self.line} ({where})", self.limit)
            self._more(size)  # doubles what is held: parsing again stays linear in the row's size
        if (end - self.pos) * 4 > self.limit and len(self.buf[self.pos:end].encode()) > self.limit:
            raise _too_long(f"{self.path}:{self.line} ({where})", self.limit)
        self._advance(end)
        return value

    def syntax(self, msg: str) -> DataError:
        """A syntax error at ``pos``."""
        return self.error(json.JSONDecodeError(msg, self.buf, self.pos))


def _load_json(path: str, check: RowCheck, limit: int) -> list[dict]:
    """Load and check a JSON file holding a list of objects, one element at a time (JSON Lines
    content, several top-level values, also works)."""
    with _open(path) as fh:
        text = _JsonText(path, fh, limit)
        if text.peek() != "[":
            first = text.value("row 0")
            if text.peek() == "":
                raise DataError(f"{path}: expected a JSON list of objects, got {json_type_name(first)}")
            return _load_jsonl(path, check, limit)  # several top-level values: JSON Lines
        text.take()
        rows: list[dict] = []
        if text.peek() == "]":
            text.take()
        else:
            while True:
                rows.append(check(text.value(f"row {len(rows)}"), f"{path}:row {len(rows)}"))
                sep = text.peek()
                if sep not in (",", "]"):
                    raise text.syntax("Expecting ',' delimiter")
                text.take()
                if sep == "]":
                    break
        if text.peek() != "":
            raise text.syntax("Extra data")
        return rows


_TYPE_NAMES = {str: "string", bool: "boolean", int: "number", float: "number", list: "list",
               dict: "object", type(None): "null"}


def json_type_name(value: Any) -> str:
    """Return a short, JSON-flavoured name for the type of ``value``."""
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def row_bytes(value: Any) -> int:
    """About the size of a table row as JSON: the UTF-8 bytes of its strings plus 8 per other value."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, dict):
        return sum(row_bytes(k) + row_bytes(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(row_bytes(v) for v in value) + 8
    return 8


def _check_table_rows(batches: Iterator[list], name: str, check: RowCheck, limit: int) -> list[dict]:
    """Check rows that come from a table in batches, naming them ``name:row N``."""
    out = []
    for batch in batches:
        for row in batch:
            where = f"{name}:row {len(out)}"
            if row_bytes(row) > limit:
                raise _too_long(where, limit)
            out.append(check(row, where))
    return out


def _parquet_batches(path: str, limit: int) -> Iterator[list]:
    """Rows of a parquet file, 256 at a time; a row group too large for its rows to fit the limit
    fails before it is read."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        first = 0
        for g in range(pf.metadata.num_row_groups):
            meta = pf.metadata.row_group(g)
            room = 2 * (limit + 16 * pf.metadata.num_columns) * meta.num_rows + (1 << 20)  # with encoding overhead
            if meta.num_rows and meta.total_byte_size > room:
                raise DataError(f"{path}:rows {first}-{first + meta.num_rows - 1}: hold {meta.total_byte_size} bytes, "
                                f"more than data.max_row_bytes={limit} bytes a row; shorten them or raise data.max_row_bytes")
            for batch in pf.iter_batches(batch_size=256, row_groups=[g]):
                yield batch.to_pylist()
            first += meta.num_rows
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise DataError(f"{path}: not a readable parquet file: {_short(exc)}") from None


def _pick_split(data: Any, path: str, split: str, field: str) -> Any:
    """Return ``data[split]`` for a DatasetDict, or ``data`` itself for a single Dataset."""
    import datasets

    if isinstance(data, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in data:
            raise DataError(
                f"{field}={path}: no split '{split}' (splits: {', '.join(data) or 'none'})")
        return data[split]
    return data


def _dataset_batches(data: Any) -> Iterator[list]:
    """Rows of a (possibly iterable) dataset, 256 at a time."""
    if not hasattr(data, "iter"):
        yield list(data)
        return
    for columns in data.iter(batch_size=256):
        names = list(columns)
        yield [dict(zip(names, values)) for values in zip(*(columns[n] for n in names))] if names else []


def _load_with_datasets(path: str, split: str, check: RowCheck, field: str, limit: int) -> list[dict]:
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
    return _check_table_rows(_dataset_batches(data), path, check, limit)


def _looks_like_file(path: str) -> bool:
    """True when ``path`` is plainly meant as a local path (a file suffix, an absolute or
    relative path, or a parent folder that exists here) rather than a dataset name."""
    parent = os.path.dirname(os.path.expanduser(path))
    return path.lower().endswith(FILE_SUFFIXES) or path.startswith(("/", ".", "~")) \
        or (bool(parent) and os.path.isdir(parent))


def load_rows(path: str, check: RowCheck, split: str = "train", field: str = "data.path",
              max_row_bytes: int = MAX_ROW_BYTES) -> list[dict]:
    """Load rows from a file, a saved dataset directory or a dataset name, checking each one.

    ``path`` may be a ``.jsonl``, ``.json`` (a list of objects) or ``.parquet`` file, a directory
    saved with ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (``split`` picks
    the split of a DatasetDict), or a dataset name for ``datasets.load_dataset``. Each raw row goes
    through ``check(row, where)`` and what it returns is kept; a row over ``max_row_bytes``
    (``data.max_row_bytes``) is an error. ``field`` is the config field the path came from; errors
    about the path as a whole name it (``data.path: no such file: X``).
    """
    if isinstance(max_row_bytes, bool) or not isinstance(max_row_bytes, int) or max_row_bytes < 1:
        raise ConfigError(f"data.max_row_bytes={max_row_bytes!r}: must be a positive integer")
    if not isinstance(path, str) or not path.strip():
        raise DataError(f"{field} is empty; give a .jsonl/.json/.parquet file or a dataset")
    expanded = os.path.expanduser(path)
    limit = max_row_bytes
    if os.path.isdir(expanded):
        rows = _load_with_datasets(expanded, split, check, field, limit)
    elif os.path.isfile(expanded):
        lower = expanded.lower()
        if lower.endswith(".jsonl"):
            rows = _load_jsonl(expanded, _text_row(check), limit)
        elif lower.endswith(".json"):
            rows = _load_json(expanded, _text_row(check), limit)
        elif lower.endswith(".parquet"):
            rows = _check_table_rows(_parquet_batches(expanded, limit), expanded, check, limit)
        else:
            raise DataError(f"{field}={path}: unsupported file type; use .jsonl, .json or "
                            ".parquet, a saved dataset directory, or a dataset name")
    elif _looks_like_file(path):
        raise DataError(f"{field}: no such file: {path}")
    else:
        rows = _load_with_datasets(path, split, check, field, limit)
    if not rows:
        raise DataError(f"{field}={path}: no rows (the dataset is empty)")
    return rows
