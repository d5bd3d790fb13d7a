"""Malformed preference / SFT input through the CLI: one error line naming the file and line (or the
field), exit status 2, no output folder; all before any actor starts."""

from __future__ import annotations

import json

import pytest

from tests.conftest import error_line, run_cli

GOOD = {"prompt": "Name a tree", "chosen": "An elm.", "rejected": "A rock."}

PAIR_CASES = [
    ("missing chosen", {"prompt": "Name a tree", "rejected": "A rock."}, ["missing key 'chosen'", "rejected"]),
    ("empty chosen", dict(GOOD, chosen="  "), ["empty", "chosen"]),
    ("empty prompt", dict(GOOD, prompt=""), ["empty", "prompt"]),
    ("number rejected", dict(GOOD, rejected=3), ["rejected", "number"]),
    ("null chosen", dict(GOOD, chosen=None), ["chosen", "null"]),
    ("chosen equals rejected", dict(GOOD, rejected="An elm."), ["same"]),
    ("chat chosen without assistant", dict(GOOD, chosen=[{"role": "user", "content": "hi"}]), ["assistant"]),
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# every case through dpo; rm reads pairs through the same loader, so two cases are enough there
PAIR_RUNS = [("dpo", *c) for c in PAIR_CASES] + [("rm", *c) for c in PAIR_CASES if c[0] in ("missing chosen", "chosen equals rejected")]


@pytest.mark.parametrize("pipeline,name,bad,expected", PAIR_RUNS, ids=[f"{r[0]}-{r[1]}" for r in PAIR_RUNS])
def test_bad_pair_row_names_file_and_line(tmp_path, pipeline, name, bad, expected):
    data = _write(tmp_path / "pairs.jsonl", [GOOD] * 3 + [bad])
    out = tmp_path / "out"
    proc = run_cli(f"pipeline={pipeline}", f"data.path={data}", f"output_dir={out}", timeout=180)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = error_line(proc)
    assert f"pairs.jsonl:4:" in line, line
    for text in expected:
        assert text in line, line
    assert not out.exists()


OTHER_CASES = [
    (["pipeline=dpo", "data.path=/nonexistent/pairs.jsonl"], ["data.path", "no such file", "/nonexistent/pairs.jsonl"]),
    (["pipeline=dpo", "data.eval_path=/nonexistent/eval.jsonl"], ["data.eval_path", "no such file"]),
    (["pipeline=sft", "data.path=/nonexistent/sft.jsonl"], ["data.path", "no such file"]),
    (["pipeline=dpo", "data.overlong=wrap"], ["data.overlong='wrap'", "truncate", "drop"]),
    (["pipeline=dpo", "algorithm.preference_loss=kto"], ["algorithm.preference_loss='kto'", "sigmoid", "simpo"]),
    (["pipeline=dpo", "algorithm.reference_mode=lazy"], ["algorithm.reference_mode='lazy'", "precompute"]),
    (["pipeline=dpo", "algorithm.label_smoothing=0.7"], ["algorithm.label_smoothing", "[0, 0.5)"]),
    (["pipeline=dpo", "trainer.mini_batch_size=128"], ["trainer.mini_batch_size=128", "64 preference pairs"]),
    (["pipeline=sft", "data.max_prompt_tokens=600"], ["data.max_prompt_tokens=600", "data.max_length=512"]),
    (["pipeline=dpo", "data.max_length=20", "data.max_prompt_tokens=8", "data.overlong=drop"],
     ["all 64 pairs", "data.max_length=20", "dropped"]),
    (["pipeline=dpo", "data.max_length=30", "data.max_prompt_tokens=8", "data.overlong=drop"],
     ["only 8 train rows are left", "trainer.mini_batch_size=16"]),
]


@pytest.mark.parametrize("overrides,expected", OTHER_CASES, ids=[" ".join(c[0]) for c in OTHER_CASES])
def test_bad_offline_config_or_path(tmp_path, overrides, expected):
    out = tmp_path / "out"
    proc = run_cli(*overrides, f"output_dir={out}", timeout=180)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = error_line(proc)
    for text in expected:
        assert text in line, line
    assert not out.exists()


def test_sft_chat_row_must_end_with_assistant(tmp_path):
    rows = [{"prompt": "Say hi", "response": "Hi."}] * 3
    rows.append({"messages": [{"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Bye"}]})
    data = _write(tmp_path / "sft.jsonl", rows)
    proc = run_cli("pipeline=sft", f"data.path={data}", f"output_dir={tmp_path / 'out'}", timeout=180)
    assert proc.returncode == 2
    line = error_line(proc)
    assert "sft.jsonl:4:" in line and "assistant" in line
