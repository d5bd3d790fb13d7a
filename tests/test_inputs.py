"""Tests for orchestrator.inputs: every reader bounds its rows (data.max_row_bytes); encodings."""

import json
import os
import re

import pytest

from orchestrator.data import load_prompt_rows
from orchestrator.errors import ConfigError, DataError
from tests.test_data import data_error, offline, write_lines  # noqa: F401  (offline: autouse fixture)


# ---- bounded rows (data.max_row_bytes) and encodings -----------------------------------------

def test_200mb_jsonl_line_fails_fast_with_bounded_memory(tmp_path):
    """One 200 MB line (a sparse file) is a one-line error naming file:line and the limit, found
    after reading about the limit: Python never holds the line."""
    import tracemalloc

    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as fh:
        fh.write(b'{"prompt": "fine"}\n{"prompt": "')
        fh.truncate(200 * 2**20)  # sparse: no disk used, one 200 MB line of NUL bytes
    tracemalloc.start()
    try:
        message = data_error(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message == (f"{path}:2: row is longer than data.max_row_bytes=1048576 bytes; "
                       "shorten it or raise data.max_row_bytes")
    assert peak < 16 * 2**20, peak


def test_row_limit_in_jsonl_is_exact(tmp_path):
    """A row of exactly max_row_bytes bytes (line ends not counted) loads; one byte more fails."""
    row = json.dumps({"prompt": "x" * 20})
    limit = len(row.encode())
    path = tmp_path / "p.jsonl"
    path.write_bytes(f"{row}\r\n{row}\n{row}".encode())
    assert len(load_prompt_rows(str(path), max_row_bytes=limit)) == 3
    path.write_bytes(f"{row}\n{row}\n{row} \n".encode())
    assert data_error(path, max_row_bytes=limit).startswith(f"{path}:3: row is longer than data.max_row_bytes={limit} bytes")
    with pytest.raises(ConfigError, match="data.max_row_bytes=0: must be a positive integer"):
        load_prompt_rows(str(path), max_row_bytes=0)


def test_json_list_rows_are_bounded(tmp_path):
    """A JSON list is read element by element: an over-long element names file:line and its row,
    an over-long top-level value too, and a syntax error deep in a long list stays a syntax error."""
    path = tmp_path / "p.json"
    rows = [{"prompt": "short"}, {"prompt": "y" * 500}, {"prompt": "short"}]
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]")
    assert len(load_prompt_rows(str(path), max_row_bytes=600)) == 3
    assert data_error(path, max_row_bytes=100).startswith(
        f"{path}:3 (row 1): row is longer than data.max_row_bytes=100 bytes")
    huge = tmp_path / "huge.json"
    huge.write_bytes(b'{"prompt": "' + b"a" * 3 * 2**20 + b'"}')
    assert data_error(huge).startswith(f"{huge}:1 (row 0): row is longer than data.max_row_bytes=1048576 bytes")
    broken = tmp_path / "broken.json"
    broken.write_text("[" + ",\n".join(['{"prompt": "p"}'] * 5000 + ['{"prompt": }'] + ['{"prompt": "p"}'] * 5000) + "]")
    assert data_error(broken, max_row_bytes=100) == f"{broken}:5001: invalid JSON: Expecting value (column 12)"


def test_json_list_read_in_chunks_matches_json_loads(tmp_path):
    """Rows that straddle the read chunks (numbers, escapes, non-ASCII text) come out as json.loads
    reads them; a JSON file of several top-level objects is read as JSON Lines, as before."""
    from orchestrator.data import load_rows

    rows = [{"prompt": f"é\\\"{i}" * (i % 7), "n": i * 1234567.25, "ok": i % 2 == 0, "no": None,
             "chat": [{"role": "user", "content": "ü" * (i % 50)}]} for i in range(4000)]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8-sig")
    assert path.stat().st_size > 4 * 2**16
    assert load_rows(str(path), lambda row, where: row) == json.loads(path.read_text(encoding="utf-8-sig"))
    lines = tmp_path / "lines.json"
    lines.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    assert load_prompt_rows(str(lines)) == [{"prompt": "a"}, {"prompt": "b"}]
    (tmp_path / "empty.json").write_text("[ ]")
    assert "no rows" in data_error(tmp_path / "empty.json")
    trailing = tmp_path / "trailing.json"
    trailing.write_text('[{"prompt": "a"}] x')
    assert data_error(trailing) == f"{trailing}:1: invalid JSON: Extra data (column 19)"


def test_table_rows_are_bounded(tmp_path):
    """Parquet files and saved datasets: an over-long row is an error naming file:row N; a parquet
    row group too large for its rows fails before it is read."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"prompt": ["short", "z" * 300, "short"]}), table)
    assert len(load_prompt_rows(str(table))) == 3
    assert data_error(table, max_row_bytes=100).startswith(f"{table}:row 1: row is longer than data.max_row_bytes=100")
    big = tmp_path / "big.parquet"
    pq.write_table(pa.table({"prompt": [os.urandom(50_000).hex() for _ in range(40)]}), big)
    assert data_error(big, max_row_bytes=1000).startswith(f"{big}:rows 0-39: hold ")
    saved = tmp_path / "saved"
    datasets.Dataset.from_list([{"prompt": "p1"}, {"prompt": "p" * 300}]).save_to_disk(str(saved))
    assert [r["prompt"] for r in load_prompt_rows(str(saved))] == ["p1", "p" * 300]
    assert data_error(saved, max_row_bytes=100).startswith(f"{saved}:row 1: row is longer than data.max_row_bytes=100")


def test_non_utf8_names_file_and_line(tmp_path):
    """Bytes that are not UTF-8 are reported as file:line (JSONL: and the byte of the line); a
    byte-order mark is fine."""
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "ok"}\n\n{"prompt": "caf\xe9 au lait"}\n')
    assert data_error(path) == f"{path}:3: not UTF-8 text (invalid continuation byte at byte 16 of the line)"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "ok"}\n')
    assert load_prompt_rows(str(path)) == [{"prompt": "ok"}]
    listed = tmp_path / "p.json"
    listed.write_bytes(b'[\n{"prompt": "ok"},\n{"prompt": "\xff"}\n]')
    assert data_error(listed) == f"{listed}:3: not UTF-8 text (invalid start byte)"


def test_run_config_bounds_rows(tmp_path):
    """data.max_row_bytes reaches the reader through the pipelines' input loading."""
    from orchestrator.prompts import load_prompt_data
    from tests.conftest import compose_config

    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"prompt": f"prompt {i}"}) for i in range(70)]
                       + [json.dumps({"prompt": "w" * 200})])
    cfg = compose_config(f"data.path={path}", "data.max_row_bytes=100")
    with pytest.raises(DataError, match=re.escape(f"{path}:71: row is longer than data.max_row_bytes=100 bytes")):
        load_prompt_data(cfg)
    assert len(load_prompt_data(compose_config(f"data.path={path}"))[0]) == 71
