"""What a reward function may return (a sequence of finite real numbers, one per response), and a
reward file that blocks at import failing within reward.import_timeout_s."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from orchestrator.errors import ConfigError, RewardError
from orchestrator.rewards.loader import call_reward_function, check_scores, load_reward_function
from tests.conftest import ROOT

GOOD = [[1, 2.5], (0, -1.0), np.array([0.5, 1.0], dtype=np.float32), torch.tensor([1.0, 2.0]),
        [np.float64(1.0), np.int64(2)], torch.tensor([1, 2])]


@pytest.mark.parametrize("scores", GOOD, ids=["list", "tuple", "numpy", "torch", "numpy-scalars", "int-tensor"])
def test_sequences_of_real_numbers_are_accepted(scores):
    out = check_scores(scores, 2, "reward function f.py:score")
    assert len(out) == 2 and all(type(x) is float for x in out)


BAD = [
    ({"a": 1.0, "b": 2.0}, "got dict"),
    (["1.0", "2.0"], "got a str at index 0"),
    ([b"1", b"2"], "got a bytes at index 0"),
    ([1.0], "returned 1 scores for 2 responses"),
    ([[1.0], [2.0]], "got a list at index 0"),
    ([1.0, float("nan")], "non-finite score (nan) at index 1"),
    ([float("inf"), 1.0], "non-finite score (inf) at index 0"),
    ([True, False], "got a bool at index 0"),
    (np.array([True, False]), "dtype bool"),
    (np.array([[1.0, 2.0]]), "2-D ndarray"),
    (torch.tensor([[1.0], [2.0]]), "2-D Tensor"),
    ({1.0, 2.0}, "got set"),
    ("12", "got str"),
    (1.5, "got float"),
    (None, "got NoneType"),
    ([1.0, None], "got a NoneType at index 1"),
    ([1 + 2j, 1.0], "got a complex at index 0"),
]


@pytest.mark.parametrize("scores,expected", BAD, ids=[e for _, e in BAD])
def test_anything_else_is_a_one_line_error_naming_the_function(scores, expected):
    with pytest.raises(RewardError) as info:
        call_reward_function(lambda p, r: scores, "f.py:score", ["p1", "p2"], ["r1", "r2"])
    message = str(info.value)
    assert expected in message and "reward function f.py:score" in message and "\n" not in message


def test_a_blocking_reward_file_fails_within_the_timeout(tmp_path):
    slow = tmp_path / "slow.py"
    slow.write_text("import time\ntime.sleep(10**6)\n\ndef score(prompts, responses):\n    return [0.0] * len(responses)\n")
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_reward_function(f"{slow}:score", timeout_s=0.5)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert str(slow) in message and "0.5s" in message and "reward.import_timeout_s" in message and "\n" not in message


def test_a_blocking_import_leaves_nothing_hanging_at_exit(tmp_path):
    """The process that gave up on the import exits at once (the stuck import is a daemon thread)."""
    slow = tmp_path / "slow.py"
    slow.write_text("import time\ntime.sleep(10**6)\n")
    code = ("from orchestrator.rewards.loader import load_reward_function\n"
            f"try:\n    load_reward_function({str(slow) + ':score'!r}, timeout_s=0.5)\n"
            "except Exception as exc:\n    print(type(exc).__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ConfigError", proc.stderr[-2000:]


def test_an_import_error_is_still_one_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('first line\\nsecond line')\n")
    with pytest.raises(ConfigError) as info:
        load_reward_function(f"{bad}:score", timeout_s=5)
    assert "RuntimeError: first line" in str(info.value) and "\n" not in str(info.value)
