"""Constitutions: the principles a Constitutional AI run critiques, revises and judges by.

A constitution is a YAML (or JSON) file::

    principles:
      - name: harmless                 # unique label, written next to every row it was used for
        critique: Identify specific ways in which the assistant's last response is harmful ...
        revision: Rewrite the assistant's response to remove everything harmful ...
        comparison: Which of these assistant responses is less harmful? ...

``critique`` and ``revision`` are requests put to the policy as the next user turn of the
conversation (stage 1: respond -> critique -> revise); ``comparison`` is the question the feedback
model answers with (A) or (B) about two responses (stage 2). Every problem is reported as
``FILE:LINE: what is wrong`` before any actor starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from orchestrator.errors import DataError

FIELDS = ("name", "critique", "revision", "comparison")
MAX_BYTES = 1 << 20  # ~5,000 principles


@dataclass(frozen=True)
class Principle:
    """One principle of a constitution."""

    name: str
    critique: str
    revision: str
    comparison: str


def _at(path: Path, node) -> str:
    return f"{path}:{node.start_mark.line + 1}"


def _principle(path: Path, index: int, node) -> Principle:
    if not isinstance(node, yaml.MappingNode):
        raise DataError(f"{_at(path, node)}: principle {index} must be a mapping with keys {', '.join(FIELDS)}")
    values = {}
    for key, value in node.value:
        name = key.value if isinstance(key, yaml.ScalarNode) else None
        if name not in FIELDS:
            raise DataError(f"{_at(path, key)}: principle {index}: unknown key {name!r} (expected: {', '.join(FIELDS)})")
        if name in values:
            raise DataError(f"{_at(path, key)}: principle {index}: key {name!r} given twice")
        if not isinstance(value, yaml.ScalarNode) or value.tag != "tag:yaml.org,2002:str" or not value.value.strip():
            raise DataError(f"{_at(path, value)}: principle {index}: {name!r} must be a non-empty string")
        values[name] = value.value.strip()
    missing = [f for f in FIELDS if f not in values]
    if missing:
        raise DataError(f"{_at(path, node)}: principle {index} has no {missing[0]!r} (every principle needs "
                        f"{', '.join(FIELDS)})")
    return Principle(**values)


def load_constitution(path: str | Path, field: str = "cai.constitution") -> list[Principle]:
    """The principles in ``path``; raises DataError (``FILE:LINE: ...``, or naming ``field``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{field}={str(path)!r}: no such file")
    if path.suffix not in (".yaml", ".yml", ".json"):
        raise DataError(f"{field}={str(path)!r}: a constitution is a .yaml, .yml or .json file")
    size = path.stat().st_size
    if size > MAX_BYTES:  # PyYAML composes ~1 MB/s and ~30x the file in memory: a large file is an error, not a wait
        raise DataError(f"{field}={str(path)!r}: {size} bytes, more than the {MAX_BYTES} bytes a constitution may hold")
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        why = " ".join(part for part in (exc.context, exc.problem) if part)
        raise DataError(f"{path}:{line}: not valid YAML: {why}") from None
    if root is None:
        raise DataError(f"{path}:1: the file is empty; it needs a 'principles' list")
    if not isinstance(root, yaml.MappingNode):
        raise DataError(f"{_at(path, root)}: expected a mapping with a 'principles' list")
    node = None
    for key, value in root.value:
        if not isinstance(key, yaml.ScalarNode) or key.value != "principles":
            shown = key.value if isinstance(key, yaml.ScalarNode) else "a non-text key"
            raise DataError(f"{_at(path, key)}: unknown key {shown!r} (a constitution holds 'principles')")
        if node is not None:
            raise DataError(f"{_at(path, key)}: 'principles' given twice")
        node = value
    if node is None:
        raise DataError(f"{_at(path, root)}: no 'principles' list")
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise DataError(f"{_at(path, node)}: 'principles' must be a non-empty list")
    principles, seen = [], {}
    for i, item in enumerate(node.value, start=1):
        p = _principle(path, i, item)
        if p.name in seen:
            raise DataError(f"{_at(path, item)}: principle {i}: name {p.name!r} is already used by principle {seen[p.name]}")
        seen[p.name] = i
        principles.append(p)
    return principles


def critique_request(prompt, response: str, principle: Principle) -> list[dict]:
    """The conversation that asks the policy to critique its own response."""
    return [*as_messages(prompt), {"role": "assistant", "content": response},
            {"role": "user", "content": principle.critique}]


def revision_request(prompt, response: str, critique: str, principle: Principle) -> list[dict]:
    """The conversation that asks the policy to rewrite its response after the critique."""
    return [*critique_request(prompt, response, principle), {"role": "assistant", "content": critique},
            {"role": "user", "content": principle.revision}]


def comparison_question(prompt_text: str, first: str, second: str, principle: Principle) -> str:
    """The multiple-choice question the feedback model answers with the option letter after '('."""
    return (f"Consider the following conversation between a human and an assistant:\n"
            f"Human: {prompt_text}\n{principle.comparison}\n"
            f"Options:\n(A) {first}\n(B) {second}\nThe answer is: (")


def as_messages(prompt) -> list[dict]:
    """A prompt (string or chat messages) as chat messages."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]
