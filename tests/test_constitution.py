"""Constitution files (orchestrator/constitution.py): the shipped one loads, JSON loads, every malformed
file is a DataError ``FILE:LINE: ...``, and the prompt builders give exactly the expected conversations."""

from __future__ import annotations

import json

import pytest

from orchestrator.constitution import (Principle, as_messages, comparison_question, critique_request,
                                       load_constitution, revision_request)
from orchestrator.errors import DataError
from tests.conftest import ROOT

ONE = "  - {name: a, critique: ca, revision: ra, comparison: qa}\n"

# (id, file text, 1-based line of the offending node, phrases the message must hold)
BAD = [
    ("unclosed bracket", "principles: [\n  {name: a, critique: b, revision: c, comparison: d}\nfoo: 1\n", 3,
     ["not valid YAML"]),
    ("unclosed brace", "principles:\n  - {name: a, critique: b, revision: c, comparison: d\n" + ONE, 3,
     ["not valid YAML"]),
    ("bad indentation", "principles:\n  - name: a\n    critique: b\n   revision: c\n    comparison: d\n", 4,
     ["not valid YAML"]),
    ("tab indentation", "principles:\n\t- name: a\n", 2, ["not valid YAML", "'\\t'"]),
    ("empty file", "", 1, ["the file is empty", "'principles'"]),
    ("only a comment", "# nothing here\n\n", 1, ["the file is empty"]),
    ("top-level list", "- name: a\n  critique: b\n", 1, ["expected a mapping with a 'principles' list"]),
    ("top-level string", "hello\n", 1, ["expected a mapping"]),
    ("empty mapping", "{}\n", 1, ["no 'principles' list"]),
    ("unknown top-level key", "principles:\n" + ONE + "version: 2\n", 3, ["unknown key 'version'"]),
    ("other key instead of principles", "# c\nrules:\n" + ONE, 2, ["unknown key 'rules'"]),
    ("empty principles list", "principles: []\n", 1, ["'principles' must be a non-empty list"]),
    ("null principles", "principles:\n", 1, ["'principles' must be a non-empty list"]),
    ("principles is a mapping", "principles:\n  name: a\n", 2, ["'principles' must be a non-empty list"]),
    ("principle is a string", "principles:\n" + ONE + "  - just be nice\n", 3,
     ["principle 2 must be a mapping", "name, critique, revision, comparison"]),
    ("missing revision", "principles:\n" + ONE + "  - name: b\n    critique: c\n    comparison: q\n", 3,
     ["principle 2 has no 'revision'"]),
    ("missing name", "principles:\n  - critique: c\n    revision: r\n    comparison: q\n", 2,
     ["principle 1 has no 'name'"]),
    ("typo critque", "principles:\n  - name: a\n    critque: c\n    revision: r\n    comparison: q\n", 3,
     ["principle 1: unknown key 'critque'", "expected: name, critique, revision, comparison"]),
    ("key given twice", "principles:\n  - name: a\n    critique: c\n    critique: d\n", 4,
     ["principle 1: key 'critique' given twice"]),
    ("number value", "principles:\n  - name: a\n    critique: 3\n    revision: r\n    comparison: q\n", 3,
     ["principle 1: 'critique' must be a non-empty string"]),
    ("list value", "principles:\n  - name: a\n    critique: c\n    revision:\n      - r\n    comparison: q\n", 5,
     ["'revision' must be a non-empty string"]),
    ("null value", "principles:\n  - name: a\n    critique:\n    revision: r\n    comparison: q\n", 3,
     ["'critique' must be a non-empty string"]),
    ("boolean name", "principles:\n  - name: yes\n    critique: c\n    revision: r\n    comparison: q\n", 2,
     ["'name' must be a non-empty string"]),
    ("blank value", "principles:\n  - name: a\n    critique: c\n    revision: '   '\n    comparison: q\n", 4,
     ["'revision' must be a non-empty string"]),
    ("principles given twice", "principles:\n" + ONE + "principles:\n" + ONE, 3, ["'principles' given twice"]),
    ("non-text top-level key", "? [a]\n: b\nprinciples:\n" + ONE, 1, ["unknown key 'a non-text key'"]),
    ("second document", "principles:\n" + ONE + "---\nfoo: 1\n", 3, ["expected a single document", "another document"]),
    ("duplicate name", "principles:\n" + ONE + ONE.replace("name: a", "name: b") + ONE, 4,
     ["principle 3: name 'a' is already used by principle 1"]),
]


@pytest.mark.parametrize("text,line,phrases", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_malformed_constitution_names_file_and_line(tmp_path, text, line, phrases):
    """Each malformed file raises DataError ``FILE:LINE: ...`` at the offending node, with its phrase."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        load_constitution(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}:"), message
    for phrase in phrases:
        assert phrase in message, message


def test_shipped_constitution_loads():
    """The default constitution has four principles with non-empty, stripped texts."""
    principles = load_constitution(ROOT / "orchestrator/assets/constitutions/harmless.yaml")
    assert [p.name for p in principles] == ["harmless", "honest", "helpful", "respectful"]
    for p in principles:
        assert isinstance(p, Principle)
        for text in (p.critique, p.revision, p.comparison):
            assert text and text == text.strip()
    assert principles[0].comparison.startswith("Which of these assistant responses is less harmful?")


def test_json_constitution_loads_and_strips(tmp_path):
    """A .json file loads (JSON is YAML); values are stripped of surrounding whitespace."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"principles": [
        {"name": "kind", "critique": " Be critical. ", "revision": "Fix it.", "comparison": "Which is kinder?"},
        {"name": "brief", "critique": "Too long?", "revision": "Shorten it.", "comparison": "Which is shorter?"}]}))
    assert load_constitution(path) == [Principle("kind", "Be critical.", "Fix it.", "Which is kinder?"),
                                       Principle("brief", "Too long?", "Shorten it.", "Which is shorter?")]


def test_json_error_has_line(tmp_path):
    """Errors in a pretty-printed JSON file point at the line of the bad value."""
    path = tmp_path / "c.json"
    path.write_text('{\n "principles": [\n  {"name": "a", "critique": 3, "revision": "r", "comparison": "q"}\n ]\n}\n')
    with pytest.raises(DataError, match="'critique' must be a non-empty string") as info:
        load_constitution(path)
    assert str(info.value).startswith(f"{path}:3:")


def test_yml_suffix_and_quoted_number_name(tmp_path):
    """``.yml`` is accepted, and a quoted number is a string name."""
    path = tmp_path / "c.yml"
    path.write_text("principles:\n  - {name: '3', critique: c, revision: r, comparison: q}\n")
    assert load_constitution(path) == [Principle("3", "c", "r", "q")]


def test_missing_file_names_field(tmp_path):
    """A missing file names the config field (default and custom) and the path."""
    with pytest.raises(DataError) as info:
        load_constitution("/nonexistent/c.yaml")
    assert str(info.value) == "cai.constitution='/nonexistent/c.yaml': no such file"
    with pytest.raises(DataError, match=r"^my\.field='/nonexistent/c.yaml': no such file$"):
        load_constitution("/nonexistent/c.yaml", field="my.field")


def test_wrong_suffix_names_field(tmp_path):
    """A .txt file (even a well-formed one) is refused, naming the field and the accepted suffixes."""
    path = tmp_path / "c.txt"
    path.write_text("principles:\n" + ONE)
    with pytest.raises(DataError) as info:
        load_constitution(path)
    assert str(info.value) == f"cai.constitution={str(path)!r}: a constitution is a .yaml, .yml or .json file"


def test_not_utf8(tmp_path):
    """Bytes that are not UTF-8 are a DataError naming the file."""
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfeprinciples")
    with pytest.raises(DataError, match="not UTF-8 text") as info:
        load_constitution(path)
    assert str(info.value).startswith(f"{path}:")


P = Principle(name="kind", critique="Was that unkind?", revision="Rewrite it kindly.", comparison="Which is kinder?")
CHAT = [{"role": "system", "content": "Be brief.", "extra": 1}, {"role": "user", "content": "Insult me."}]


def test_as_messages():
    """A string prompt becomes one user turn; chat prompts keep role/content only, as copies."""
    assert as_messages("Hi") == [{"role": "user", "content": "Hi"}]
    messages = as_messages(CHAT)
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Insult me."}]
    messages[0]["content"] = "changed"
    assert CHAT[0]["content"] == "Be brief."


def test_critique_request_string_and_chat():
    """prompt, response (assistant), then the principle's critique request (user)."""
    assert critique_request("Insult me.", "You fool.", P) == [
        {"role": "user", "content": "Insult me."},
        {"role": "assistant", "content": "You fool."},
        {"role": "user", "content": "Was that unkind?"}]
    assert critique_request(CHAT, "You fool.", P) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Insult me."},
        {"role": "assistant", "content": "You fool."},
        {"role": "user", "content": "Was that unkind?"}]


def test_revision_request_string_and_chat():
    """The critique conversation, then the critique (assistant) and the revision request (user)."""
    tail = [{"role": "assistant", "content": "You fool."},
            {"role": "user", "content": "Was that unkind?"},
            {"role": "assistant", "content": "Yes, it was rude."},
            {"role": "user", "content": "Rewrite it kindly."}]
    assert revision_request("Insult me.", "You fool.", "Yes, it was rude.", P) == [
        {"role": "user", "content": "Insult me."}, *tail]
    assert revision_request(CHAT, "You fool.", "Yes, it was rude.", P) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Insult me."}, *tail]


def test_comparison_question():
    """The exact multiple-choice text, ending in '(' so the next token is the option letter."""
    assert comparison_question("Insult me.", "You fool.", "I'd rather not.", P) == (
        "Consider the following conversation between a human and an assistant:\n"
        "Human: Insult me.\n"
        "Which is kinder?\n"
        "Options:\n"
        "(A) You fool.\n"
        "(B) I'd rather not.\n"
        "The answer is: (")
