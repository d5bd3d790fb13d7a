"""Preference pairs (DPO, reward models) and SFT rows: loading, checking, tokenizing, packing.

Rows come from the same sources as prompt rows (``.jsonl``, ``.json`` lists, ``.parquet``,
``save_to_disk`` folders, dataset names; see :func:`orchestrator.inputs.load_rows`; each row at
most ``data.max_row_bytes``), and every
malformed row stops the load with a one-line :class:`~orchestrator.errors.DataError` that starts
with ``file:N`` (JSONL, 1-based line) or ``file:row N`` (JSON lists, parquet, datasets).

- A **pair row** holds a prompt (a string or a list of ``{role, content}`` messages) and two
  responses, ``chosen`` and ``rejected``, each a string or a message list. In a message list
  the response is the content of its assistant messages joined by newlines (so when a list holds
  a whole conversation, earlier assistant turns are part of the response text).
- An **SFT row** is either ``prompt`` + ``response`` (a string) or ``messages``: a chat whose
  last message is the assistant's response and whose earlier messages are the prompt. Only that
  last message is trained on; earlier assistant turns are prompt context.

Over-long rows (``data.max_length``) are cut from the right of the response (``truncate``,
keeping at least one token, so the end-of-sequence token goes first) or left out (``drop``), and
the encoders say how many. Truncating both responses of a pair can leave two equal token lists;
such a pair then carries no preference signal (it is kept, not reported).
"""

from __future__ import annotations

from typing import Any

import torch

from orchestrator.batching import pack_samples
from orchestrator.data import (CHARS_PER_TOKEN, check_object, check_prompt, json_type_name, last_tokens, load_rows,
                               render_prompt)
from orchestrator.inputs import MAX_ROW_BYTES
from orchestrator.errors import ConfigError, DataError

OVERLONG_CHOICES = ("truncate", "drop")


# ---- text of prompts and responses ---------------------------------------------------------

def response_text(value: str | list[dict]) -> str:
    """A chosen / rejected / response value as text: a string as is, a message list as the
    content of its assistant messages joined by ``"\\n"``."""
    if isinstance(value, str):
        return value
    parts = [m["content"] for m in value if m.get("role") == "assistant"]
    if not parts:
        raise DataError("a response given as chat messages needs an assistant message")
    return "\n".join(parts)


def reward_text(prompt: str, response: str) -> str:
    """The text a reward model scores: prompt and response on two lines. RM training and the RLHF
    reward actor both use it, so a trained reward model sees during RLHF what it was trained on."""
    return f"{prompt}\n{response}"


def prompt_text(prompt: str | list[dict]) -> str:
    """The prompt as a reward model or reward function sees it: the string itself, or the content
    of the last user message of a chat (the last message's content when no message is a user's)."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else prompt[-1]["content"]


# ---- row checks ----------------------------------------------------------------------------

def _check_messages(messages: list, where: str, key: str) -> None:
    """Raise DataError unless ``messages`` is a non-empty list of ``{role, content}`` strings."""
    if not messages:
        raise DataError(f"{where}: '{key}' is an empty message list")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not all(isinstance(msg.get(f), str) for f in ("role", "content")):
            got = f"keys {sorted(msg)}" if isinstance(msg, dict) else json_type_name(msg)
            raise DataError(f"{where}: '{key}' message {i} must be an object with string 'role' and "
                            f"'content', got {got}")


def _check_response(value: Any, where: str, key: str) -> None:
    """Raise DataError unless ``value`` is a non-empty string or a message list with a non-empty
    assistant message."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: empty string in '{key}'")
        return
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: '{key}' must be a non-empty string or a list of {{role, content}} "
                        f"messages, got {json_type_name(value)}")
    _check_messages(value, where, key)
    if not any(m["role"] == "assistant" for m in value):
        roles = ", ".join(dict.fromkeys(m["role"] for m in value))
        raise DataError(f"{where}: '{key}' has no assistant message (roles: {roles})")
    if not response_text(value).strip():
        raise DataError(f"{where}: empty response in '{key}' (its assistant messages have no content)")


def check_pair_row(row: Any, where: str, prompt_key: str = "prompt", chosen_key: str = "chosen",
                   rejected_key: str = "rejected") -> dict:
    """Check one preference pair; return it with the three values under ``prompt``, ``chosen``
    and ``rejected`` (other columns kept). Chosen and rejected must differ as text (compared
    without surrounding whitespace)."""
    keys = (prompt_key, chosen_key, rejected_key)
    check_object(row, where, keys)
    check_prompt(row[prompt_key], where, prompt_key)
    _check_response(row[chosen_key], where, chosen_key)
    _check_response(row[rejected_key], where, rejected_key)
    if response_text(row[chosen_key]).strip() == response_text(row[rejected_key]).strip():
        raise DataError(f"{where}: '{chosen_key}' and '{rejected_key}' are the same response; a pair "
                        "needs two different responses")
    out = {k: v for k, v in row.items() if k not in keys}
    out.update(prompt=row[prompt_key], chosen=row[chosen_key], rejected=row[rejected_key])
    return out


def check_sft_row(row: Any, where: str, prompt_key: str = "prompt", response_key: str = "response",
                  messages_key: str = "messages") -> dict:
    """Check one SFT row and return it as ``{"prompt": str | messages, "response": str}``.

    A row with ``prompt_key`` or ``response_key`` is a prompt/response row (both needed); otherwise
    it needs ``messages_key``: a chat ending in a non-empty assistant message after at least one
    other message."""
    check_object(row, where, ())
    if prompt_key in row or response_key in row:
        check_object(row, where, (prompt_key, response_key))
        check_prompt(row[prompt_key], where, prompt_key)
        response = row[response_key]
        if not isinstance(response, str):
            raise DataError(f"{where}: '{response_key}' must be a non-empty string, got "
                            f"{json_type_name(response)}")
        if not response.strip():
            raise DataError(f"{where}: empty string in '{response_key}'")
        return {"prompt": row[prompt_key], "response": response}
    if messages_key not in row:
        present = ", ".join(repr(k) for k in row) or "none"
        raise DataError(f"{where}: missing keys: an SFT row needs '{prompt_key}' + '{response_key}' or "
                        f"'{messages_key}' (keys present: {present})")
    messages = row[messages_key]
    if not isinstance(messages, (list, tuple)):
        raise DataError(f"{where}: '{messages_key}' must be a list of {{role, content}} messages, got "
                        f"{json_type_name(messages)}")
    _check_messages(messages, where, messages_key)
    last = messages[-1]
    if last["role"] != "assistant":
        raise DataError(f"{where}: '{messages_key}' must end with an assistant message (the last one "
                        f"has role '{last['role']}')")
    if len(messages) < 2:
        raise DataError(f"{where}: '{messages_key}' needs at least one message before the final "
                        "assistant message")
    if not last["content"].strip():
        raise DataError(f"{where}: empty response in '{messages_key}' (the final assistant message "
                        "has no content)")
    prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
    check_prompt(prompt, where, messages_key)
    return {"prompt": prompt, "response": last["content"]}


# ---- loading -------------------------------------------------------------------------------

def load_pair_rows(path: str, split: str = "train", prompt_key: str = "prompt", chosen_key: str = "chosen",
                   rejected_key: str = "rejected", field: str = "data.path",
                   max_row_bytes: int = MAX_ROW_BYTES) -> list[dict]:
    """Load and check preference pairs (see :func:`check_pair_row`); ``field`` is the config
    field ``path`` came from (``data.path`` / ``data.eval_path``), named in path errors."""
    return load_rows(path, lambda row, where: check_pair_row(row, where, prompt_key, chosen_key,
                                                             rejected_key), split, field, max_row_bytes)


def load_sft_rows(path: str, split: str = "train", prompt_key: str = "prompt", response_key: str = "response",
                  messages_key: str = "messages", field: str = "data.path",
                  max_row_bytes: int = MAX_ROW_BYTES) -> list[dict]:
    """Load and check SFT rows, normalised to ``{"prompt", "response"}`` (see :func:`check_sft_row`)."""
    return load_rows(path, lambda row, where: check_sft_row(row, where, prompt_key, response_key,
                                                            messages_key), split, field, max_row_bytes)


# ---- tokenizing ----------------------------------------------------------------------------

def _check_limits(max_length: Any, overlong: Any, max_prompt_tokens: Any = None) -> None:
    """Raise ConfigError for an unknown overlong mode or lengths that leave no room."""
    if overlong not in OVERLONG_CHOICES:
        raise ConfigError(f"data.overlong={overlong!r}: must be one of {', '.join(OVERLONG_CHOICES)}")
    limits = {"data.max_length": max_length}
    if max_prompt_tokens is not None:
        limits["data.max_prompt_tokens"] = max_prompt_tokens
    for name, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r}: must be a positive integer")
    if max_prompt_tokens is not None and max_length <= max_prompt_tokens:
        raise ConfigError(f"data.max_length={max_length} must be larger than data.max_prompt_tokens="
                          f"{max_prompt_tokens} (room for at least one response token)")


def _token_ids(tokenizer: Any, texts: list[str], **kwargs) -> list[list[int]]:
    """Token ids of each text."""
    return [list(ids) for ids in tokenizer(texts, **kwargs)["input_ids"]] if texts else []


def _eos(tokenizer: Any) -> list[int]:
    """``[eos_token_id]``, or ``[]`` for a tokenizer without one."""
    eos = getattr(tokenizer, "eos_token_id", None)
    return [] if eos is None else [int(eos)]


def _fit(prompt_ids: list[int], responses: list[list[int]], max_length: int, overlong: str):
    """Fit prompt + each response into ``max_length``: ``(responses, truncated?)``, with
    ``responses`` None when the row is dropped. The prompt always leaves >= 1 token of room."""
    room = max_length - len(prompt_ids)
    if all(len(r) <= room for r in responses):
        return responses, False
    if overlong == "drop":
        return None, False
    return [r[:room] for r in responses], True


def _finish(out: list[dict], n_rows: int, truncated: int, what: str, max_length: int) -> tuple[list[dict], dict]:
    """Return the encoded rows and their counts; raise DataError when every row was dropped."""
    if not out:
        raise DataError(f"all {n_rows} {what} are longer than data.max_length={max_length} tokens and were "
                        "dropped (data.overlong=drop); raise data.max_length or set data.overlong=truncate")
    return out, {"rows": n_rows, "truncated": truncated, "dropped": n_rows - len(out)}


def _encode_prompted(tokenizer: Any, rows: list[dict], keys: tuple[str, ...], max_prompt_tokens: int,
                     max_length: int, overlong: str, what: str) -> tuple[list[dict], dict]:
    """Encode rows of a prompt and the responses under ``keys`` for causal-LM training."""
    _check_limits(max_length, overlong, max_prompt_tokens)
    if not rows:
        raise DataError(f"no {what} to encode")
    prompts, _ = last_tokens(tokenizer, [render_prompt(tokenizer, r["prompt"]) for r in rows], max_prompt_tokens)
    tail = _eos(tokenizer)
    bound = max_length * CHARS_PER_TOKEN  # no more text than can fill max_length tokens is tokenised
    responses = [_token_ids(tokenizer, [response_text(r[k])[:bound] for r in rows], add_special_tokens=False)
                 for k in keys]
    out, truncated = [], 0
    for i, prompt_ids in enumerate(prompts):
        fitted, cut = _fit(prompt_ids, [ids[i] + tail for ids in responses], max_length, overlong)
        if fitted is not None:
            truncated += cut
            out.append({"prompt_ids": prompt_ids, **{f"{k}_ids": ids for k, ids in zip(keys, fitted)}})
    return _finish(out, len(rows), truncated, what, max_length)


def encode_pairs(tokenizer: Any, rows: list[dict], max_prompt_tokens: int, max_length: int,
                 overlong: str) -> tuple[list[dict], dict]:
    """Tokenize pairs for DPO: ``[{"prompt_ids", "chosen_ids", "rejected_ids"}]`` and the counts
    ``{"rows", "truncated", "dropped"}``.

    ``prompt_ids`` are the tokens of :func:`~orchestrator.data.render_prompt` (chat template when
    the tokenizer has one), left-truncated to ``max_prompt_tokens``; each response is its text's
    tokens plus the end-of-sequence token (no special tokens added by the tokenizer). A pair
    where prompt + chosen or prompt + rejected is over ``max_length`` is truncated (both responses
    cut to fit) or dropped, per ``overlong``.
    """
    return _encode_prompted(tokenizer, rows, ("chosen", "rejected"), max_prompt_tokens, max_length,
                            overlong, "pairs")


def encode_sft(tokenizer: Any, rows: list[dict], max_prompt_tokens: int, max_length: int,
               overlong: str) -> tuple[list[dict], dict]:
    """Tokenize SFT rows: ``[{"prompt_ids", "response_ids"}]`` (ready for
    :func:`~orchestrator.batching.pack_samples`) and the counts, with the rules of
    :func:`encode_pairs`."""
    return _encode_prompted(tokenizer, rows, ("response",), max_prompt_tokens, max_length, overlong,
                            "SFT rows")


def encode_reward_pairs(tokenizer: Any, rows: list[dict], max_length: int,
                        overlong: str) -> tuple[list[dict], dict]:
    """Tokenize pairs for reward-model training: ``[{"chosen_ids", "rejected_ids"}]`` and counts.

    The text is ``reward_text(prompt_text(prompt), response_text(response))`` with the
    tokenizer's own special tokens (``[CLS] ... [SEP]`` for BERT-style encoders): what the reward
    worker scores during RLHF. Over ``max_length``, ``truncate`` uses the tokenizer's truncation
    (which keeps closing special tokens), ``drop`` leaves the pair out.
    """
    _check_limits(max_length, overlong)
    if not rows:
        raise DataError("no pairs to encode")
    bound = max_length * CHARS_PER_TOKEN  # no more text than can fill max_length tokens is tokenised
    texts = {k: [reward_text(prompt_text(r["prompt"]), response_text(r[k]))[:bound] for r in rows]
             for k in ("chosen", "rejected")}
    ids = {k: _token_ids(tokenizer, t, add_special_tokens=True) for k, t in texts.items()}
    out, truncated = [], 0
    for i in range(len(rows)):
        pair = {k: ids[k][i] for k in texts}
        long = [k for k, v in pair.items() if len(v) > max_length]
        if long and overlong == "drop":
            continue
        for k in long:
            pair[k] = _token_ids(tokenizer, [texts[k][i]], add_special_tokens=True, truncation=True,
                                 max_length=max_length)[0]
        truncated += bool(long)
        out.append({"chosen_ids": pair["chosen"], "rejected_ids": pair["rejected"]})
    return _finish(out, len(rows), truncated, "pairs", max_length)


# ---- packing -------------------------------------------------------------------------------

def pack_pairs(encoded: list[dict], pad_id: int) -> dict:
    """Pack DPO pairs: pair ``i``'s chosen and rejected become rows ``2i`` and ``2i+1`` of
    :func:`~orchestrator.batching.pack_samples`, and every tensor is viewed as ``[B, 2, ...]``
    (``input_ids`` / ``attention_mask`` / ``position_ids`` ``[B, 2, P+T]``, ``response_mask``
    ``[B, 2, T]``; ``[:, 0]`` chosen, ``[:, 1]`` rejected). Splitting dim 0 keeps pairs whole."""
    if not encoded:
        raise ValueError("pack_pairs needs at least one pair")
    samples = []
    for pair in encoded:
        samples.append({"prompt_ids": pair["prompt_ids"], "response_ids": pair["chosen_ids"]})
        samples.append({"prompt_ids": pair["prompt_ids"], "response_ids": pair["rejected_ids"]})
    batch = pack_samples(samples, pad_id)
    n = len(encoded)
    return {k: v.view(n, 2, *v.shape[1:]) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def pack_reward_pairs(encoded: list[dict], pad_id: int) -> dict:
    """Pack reward-model pairs: ``input_ids`` ``[B, 2, L]`` right-padded with ``pad_id`` and
    ``attention_mask`` ``[B, 2, L]`` (1 on real tokens); ``[:, 0]`` chosen, ``[:, 1]`` rejected."""
    if not encoded:
        raise ValueError("pack_reward_pairs needs at least one pair")
    length = max(len(pair[k]) for pair in encoded for k in ("chosen_ids", "rejected_ids"))
    input_ids = torch.full((len(encoded), 2, length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), 2, length), dtype=torch.long)
    for i, pair in enumerate(encoded):
        for j, key in enumerate(("chosen_ids", "rejected_ids")):
            ids = pair[key]
            input_ids[i, j, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[i, j, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention}
