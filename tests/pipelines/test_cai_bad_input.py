"""Malformed constitutions and bad cai settings through the CLI: one error line naming the file and line
(or the field), exit status 2, no output folder; all before any actor starts."""

from __future__ import annotations

import pytest

from tests.conftest import error_line, run_cli

ONE = "  - {name: a, critique: ca, revision: ra, comparison: qa}\n"
TWO = ONE.replace("name: a", "name: b")

# (id, file text, 1-based line the error names, phrases the error line must hold)
FILE_CASES = [
    ("unclosed bracket", "principles: [\n" + ONE.strip(" -") + "foo: 1\n", 3, ["not valid YAML"]),
    ("bad indentation", "principles:\n  - name: a\n    critique: c\n   revision: r\n    comparison: q\n", 4,
     ["not valid YAML"]),
    ("empty file", "", 1, ["the file is empty"]),
    ("top-level list", "- name: a\n  critique: c\n", 1, ["expected a mapping with a 'principles' list"]),
    ("no principles key", "{}\n", 1, ["no 'principles' list"]),
    ("unknown top-level key", "principles:\n" + ONE + "version: 2\n", 3, ["unknown key 'version'"]),
    ("empty principles list", "principles: []\n", 1, ["'principles' must be a non-empty list"]),
    ("principle is a string", "principles:\n" + ONE + "  - be nice\n", 3, ["principle 2 must be a mapping"]),
    ("missing revision", "principles:\n" + ONE + "  - name: b\n    critique: c\n    comparison: q\n", 3,
     ["principle 2 has no 'revision'"]),
    ("typo critque", "principles:\n  - name: a\n    critque: c\n    revision: r\n    comparison: q\n", 3,
     ["unknown key 'critque'"]),
    ("number value", "principles:\n  - name: a\n    critique: 3\n    revision: r\n    comparison: q\n", 3,
     ["'critique' must be a non-empty string"]),
    ("list value", "principles:\n  - name: a\n    critique: c\n    revision: [r]\n    comparison: q\n", 4,
     ["'revision' must be a non-empty string"]),
    ("empty string value", "principles:\n  - name: a\n    critique: ''\n    revision: r\n    comparison: q\n", 3,
     ["'critique' must be a non-empty string"]),
    ("duplicate names", "principles:\n" + ONE + TWO + ONE, 4, ["name 'a' is already used by principle 1"]),
]


def _run(tmp_path, *overrides):
    out = tmp_path / "out"
    proc = run_cli("pipeline=cai", *overrides, f"output_dir={out}", timeout=180)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert not out.exists()
    return error_line(proc)


@pytest.mark.parametrize("text,line,expected", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_bad_constitution_names_file_and_line(tmp_path, text, line, expected):
    """A malformed constitution: exit 2, one error line ``FILE:LINE: ...`` with its phrase, no output."""
    path = tmp_path / "constitution.yaml"
    path.write_text(text)
    message = _run(tmp_path, f"cai.constitution={path}")
    assert f"{path}:{line}:" in message, message
    for text in expected:
        assert text in message, message


PATH_CASES = [
    ("missing file", "/nonexistent/c.yaml", ["cai.constitution='/nonexistent/c.yaml'", "no such file"]),
    ("wrong suffix", "{tmp}/constitution.txt", ["cai.constitution=", "constitution.txt", ".yaml, .yml or .json"]),
]


@pytest.mark.parametrize("value,expected", [c[1:] for c in PATH_CASES], ids=[c[0] for c in PATH_CASES])
def test_bad_constitution_path_names_field(tmp_path, value, expected):
    """A missing file or a non-YAML/JSON suffix: the error names cai.constitution (and the path)."""
    (tmp_path / "constitution.txt").write_text("principles:\n" + ONE)
    message = _run(tmp_path, f"cai.constitution={value.format(tmp=tmp_path)}")
    for text in expected:
        assert text in message, message


CONFIG_CASES = [
    (["cai.revision_rounds=0"], ["cai.revision_rounds=0", "must be >= 1"]),
    (["cai.feedback_samples=1"], ["cai.feedback_samples=1", "must be >= 2"]),
    (["cai.feedback.batch_size=0"], ["cai.feedback.batch_size=0", "must be >= 1"]),
    (["cai.feedback.model_path=/nonexistent/judge"], ["cai.feedback.model_path='/nonexistent/judge'", "no config.json"]),
]


@pytest.mark.parametrize("overrides,expected", CONFIG_CASES, ids=[" ".join(c[0]) for c in CONFIG_CASES])
def test_bad_cai_config(tmp_path, overrides, expected):
    """Out-of-range cai settings: exit 2, one error line naming the field and value, no output."""
    message = _run(tmp_path, *overrides)
    for text in expected:
        assert text in message, message
