"""pipeline=collect through the real CLI: bad input, pairs sampled on vLLM, the page driven in headless
Chromium by keyboard and clicks (stopped by SIGTERM and resumed), and DPO trained on its labels."""

from __future__ import annotations

import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading

import pytest

from tests.cluster.test_tensorboard_page import browser  # noqa: F401 - the headless Chromium fixture
from tests.collect.conftest import XSS_A, XSS_B, write_pairs
from tests.conftest import ROOT, error_line, run_cli

QUIET = ["logger.progress_bar=false"]


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bad_input_is_one_line_and_leaves_no_folder(tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 3)
    with pairs.open("a") as fh:
        fh.write(json.dumps({"prompt": "Q?", "response_a": "same", "response_b": "same"}) + "\n")
    out = tmp_path / "out"
    proc = run_cli("pipeline=collect", f"collect.pairs_path={pairs}", f"output_dir={out}", *QUIET)
    assert proc.returncode == 2 and f"{pairs}:4: 'response_a' and 'response_b' are the same" in error_line(proc)
    proc = run_cli("pipeline=collect", f"collect.pairs_path={pairs}", "collect.overlap=2", f"output_dir={out}")
    assert proc.returncode == 2 and "collect.overlap=2 must be <= the number of collect.annotators (1)" in error_line(proc)
    proc = run_cli("pipeline=collect", "collect.selection=uncertainty", f"output_dir={out}")
    assert proc.returncode == 2 and "collect.reward_model_path" in error_line(proc)
    assert not out.exists()


def _start(*overrides: str) -> tuple[subprocess.Popen, str]:
    """A serving ``pipeline=collect`` process and the URL it printed for its first annotator (its output
    is read by a thread into ``proc.lines``)."""
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "pipeline=collect", "collect.port=0", *overrides],
                            cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    proc.lines = queue.Queue()
    threading.Thread(target=lambda: [proc.lines.put(line) for line in proc.stdout], daemon=True).start()
    seen = []
    while True:
        try:
            line = proc.lines.get(timeout=120)
        except queue.Empty:
            proc.kill()
            raise AssertionError("no annotator URL within 120 s:\n" + "".join(seen)) from None
        seen.append(line)
        if line.startswith("collect: annotator "):
            return proc, line.split(": ", 2)[2].strip()
        assert proc.poll() is None or not proc.lines.empty(), "".join(seen)


def _output(proc) -> str:
    return "".join(iter(lambda: proc.lines.get(timeout=5) if not proc.lines.empty() else "", ""))


def _label(browser, url: str, actions: list[str]) -> list[tuple[str, str]]:  # noqa: F811
    """Open the page and work through ``actions``: ``key:<k>`` and ``click:<button id>`` judge the pair
    shown, ``note:<text>`` types a note (``n`` to enter the box, Escape to leave), ``tag:<name>`` ticks
    an HHH box; returns the (pair id, left text) of each pair judged."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    wait = WebDriverWait(browser, 30, poll_frequency=0.1)
    body = lambda: browser.find_element(By.TAG_NAME, "body")  # noqa: E731
    done = []
    for action in actions:
        pid = wait.until(lambda d: body().get_attribute("data-pair-id"))
        kind, what = action.split(":")
        if kind == "note":
            body().send_keys("n")
            browser.switch_to.active_element.send_keys(what, Keys.ESCAPE)
            continue
        if kind == "tag":
            browser.find_element(By.CSS_SELECTOR, f'input[value="{what}"]').click()
            continue
        done.append((pid, browser.find_element(By.ID, "left").text))
        body().send_keys(what) if kind == "key" else browser.find_element(By.ID, what).click()
        wait.until(lambda d: body().get_attribute("data-pair-id") != pid or d.find_element(By.ID, "done").is_displayed())
        assert not browser.find_element(By.ID, "error").text
    return done


@pytest.mark.slow
def test_browser_labels_pairs_resumes_after_sigterm_and_dpo_trains_on_them(tmp_path, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    pairs, out = write_pairs(tmp_path / "pairs.jsonl", 8), tmp_path / "out"
    common = [f"collect.pairs_path={pairs}", f"output_dir={out}", "collect.log_every=2", "collect.annotators=[alice]", *QUIET]
    proc, url = _start(*common)
    try:
        first = _label(browser, url, ["note:kind <b>but</b> vague", "tag:helpful", "key:1", "key:2", "click:choose-tie"])
        shown = {pid for pid, _ in first}
        assert first[0][1] in (XSS_A, XSS_B)  # the markup pair (served first) shown as its text
        assert browser.execute_script("return window.__xss === undefined")  # and it ran nothing
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, _output(proc)
    finally:
        proc.kill()
    assert len(_jsonl(out / "collect" / "preferences.jsonl")) == 2  # left, right; the tie is stored only

    proc, url = _start(*common)  # resumes: the five pairs left, then it ends by itself
    try:
        browser.delete_all_cookies()
        second = _label(browser, url, ["click:choose-left", "key:s", "key:2", "click:choose-right", "key:1"])
        assert browser.find_element(By.ID, "done").is_displayed()
        assert proc.wait(timeout=60) == 0, _output(proc)
    finally:
        proc.kill()
    assert not shown & {pid for pid, _ in second} and len(shown | {pid for pid, _ in second}) == 8
    with sqlite3.connect(out / "collect" / "labels.db") as db:
        rows = db.execute("select annotator, choice, note, tags from judgements order by id").fetchall()
    assert len(rows) == 8 and {r[0] for r in rows} == {"alice"} and [r[1] for r in rows].count("skip") == 1
    assert rows[0][2:] == ("kind <b>but</b> vague", "helpful") and all(r[2:] == ("", "") for r in rows[1:])
    prefs = _jsonl(out / "collect" / "preferences.jsonl")
    assert len(prefs) == 6 and all(p["annotators"] == ["alice"] for p in prefs)
    metrics = _jsonl(out / "collect" / "metrics.jsonl")
    assert metrics[-1]["step"] == 8 and metrics[-1]["collect/labels"] == 8 and metrics[-1]["collect/exported_pairs"] == 6
    assert list((out / "collect" / "tensorboard").glob("events.*"))
    runs = list((out / "collect" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({r.name.rsplit("-", 1)[1] for r in runs}) == 1  # the second session continued the run

    dpo = tmp_path / "dpo"
    proc = run_cli("pipeline=dpo", f"data.path={out / 'collect' / 'preferences.jsonl'}", "trainer.max_steps=3",
                   "trainer.mini_batch_size=2", "trainer.micro_batch_size=2", "trainer.lr=1e-3", "logger.wandb=false",
                   f"output_dir={dpo}", *QUIET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _jsonl(dpo / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["loss"] > 0 for r in rows)
    assert rows[-1]["rewards/margins"] != rows[0]["rewards/margins"]  # the policy moved on the labels


def _reward_model(tiny_model_path, folder):
    """A random tiny Llama reward model (one output) beside the tiny model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_pairs_sampled_on_vllm_are_ordered_by_reward_model_uncertainty_and_kept(tmp_path, tiny_model_path):
    """Two samples per prompt from the vLLM engine; the reward model on the reward actor scores both
    responses, each pair's priority is |sigmoid(r_a - r_b) - 0.5| (checked against the model's own
    forward pass) and the closest call is served first; the next start finds the pairs in the database."""
    import math

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from orchestrator.collect.store import LabelStore
    from orchestrator.preference_data import reward_text

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me about the number {i}."}) + "\n" for i in range(6)))
    out, rm = tmp_path / "out", _reward_model(tiny_model_path, tmp_path / "rm")
    common = [f"data.path={prompts}", f"output_dir={out}", "collect.serve=false", "rollout.max_new_tokens=12",
              "collect.selection=uncertainty", f"collect.reward_model_path={rm}", *QUIET]
    proc = run_cli("pipeline=collect", *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = LabelStore(f"sqlite:///{out / 'collect' / 'labels.db'}")
    stored = store.pairs()
    assert 2 <= len(stored) <= 6 and {p["source"] for p in stored} == {"two_samples"}
    assert all(p["response_a"] and p["response_b"] and p["response_a"] != p["response_b"] for p in stored)
    assert {p["prompt"] for p in stored} <= {f"Tell me about the number {i}." for i in range(6)}

    tok, model = AutoTokenizer.from_pretrained(rm), AutoModelForSequenceClassification.from_pretrained(rm).eval()
    with torch.no_grad():
        for pair in stored:
            a, b = (model(**tok(reward_text(pair["prompt"], pair[k]), return_tensors="pt")).logits[0, 0].item()
                    for k in ("response_a", "response_b"))
            assert pair["priority"] == pytest.approx(abs(1 / (1 + math.exp(b - a)) - 0.5), abs=1e-4)
    assert len({round(p["priority"], 6) for p in stored}) > 1
    assert store.next_pair("annotator").pair_id == min(stored, key=lambda p: p["priority"])["id"]

    again = run_cli("pipeline=collect", *common)
    assert again.returncode == 0 and f"{len(stored)} pairs already in the label database" in again.stdout + again.stderr
