"""Write the shipped tiny preference and SFT sets from the tiny prompt sets.

    python orchestrator/assets/make_tiny_sets.py

Reads ``prompts/tiny.jsonl`` and ``prompts/tiny_eval.jsonl`` and writes, next to them:

- ``preferences/tiny.jsonl`` / ``tiny_eval.jsonl``: one pair per prompt. ``chosen`` is made only
  of words rich in the letter "e" ("Eerie geese see the green trees ..."), ``rejected`` only of
  words with no "e" at all, both 6-12 words, drawn with the same length so length carries no
  signal. The preference is systematic and easy to learn, and it agrees with the default RLHF
  reward ``orchestrator/rewards/examples.py:letter_frequency`` (fraction of e's).
- ``sft/tiny.jsonl`` / ``tiny_eval.jsonl``: one row per prompt with an e-rich response; even
  rows are ``{"prompt", "response"}``, odd rows ``{"messages": [...]}`` chats (every fourth row
  with a system message first).

The texts are nonsense on purpose: they exist to show that training moves a tiny model toward a
measurable property, not to teach it anything true. Output is deterministic (fixed seed), so
running the script again rewrites the same files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
E_WORDS = ("eerie eel see tree trees free keep seem here there even ever sleep green sweet breeze cheese "
           "deep feel need never these three we be yes eleven seven bees geese feet seed teeth wheel queen "
           "steep evening freeze keen eager gentle evergreen").split()
NO_E_WORDS = ("a cat dog sun rain is on it not so warm calm soft slow big dry cold hill road sky at up "
              "bright good day old tall fish cloud wind and or but with from you if much city town lamp "
              "map book cup hat boat lion owl fox").split()
SYSTEM = "You answer in one short sentence."


def sentence(rng: random.Random, words: tuple[str, ...] | list[str], n_words: int) -> str:
    """A capitalised sentence of ``n_words`` words drawn from ``words``, ending in a full stop."""
    text = " ".join(rng.choice(words) for _ in range(n_words))
    return text[0].upper() + text[1:] + "."


def read_prompts(name: str) -> list[str]:
    """The prompt strings of ``prompts/<name>``."""
    lines = (HERE / "prompts" / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["prompt"] for line in lines if line.strip()]


def preference_rows(prompts: list[str], rng: random.Random) -> list[dict]:
    """One pair per prompt: an e-rich chosen and an e-free rejected response of equal length."""
    rows = []
    for prompt in prompts:
        n_words = rng.randint(6, 12)
        rows.append({"prompt": prompt, "chosen": sentence(rng, E_WORDS, n_words),
                     "rejected": sentence(rng, NO_E_WORDS, n_words)})
    return rows


def sft_rows(prompts: list[str], rng: random.Random) -> list[dict]:
    """One row per prompt with an e-rich response, alternating prompt/response and chat rows."""
    rows = []
    for i, prompt in enumerate(prompts):
        response = sentence(rng, E_WORDS, rng.randint(6, 12))
        if i % 2 == 0:
            rows.append({"prompt": prompt, "response": response})
            continue
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        if i % 4 == 3:
            messages.insert(0, {"role": "system", "content": SYSTEM})
        rows.append({"messages": messages})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` as JSON Lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    """Write the four files."""
    for name, seed in (("tiny.jsonl", 0), ("tiny_eval.jsonl", 1)):
        prompts = read_prompts(name)
        write_jsonl(HERE / "preferences" / name, preference_rows(prompts, random.Random(seed)))
        write_jsonl(HERE / "sft" / name, sft_rows(prompts, random.Random(seed + 100)))


if __name__ == "__main__":
    main()
