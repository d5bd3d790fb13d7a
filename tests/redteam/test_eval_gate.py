"""pipeline=eval as a gate (real CLI, the reference actor on the tiny model): it passes against its own
summary and fails with exit status 3, naming the metric, against a better one; the rule itself on numbers."""

from __future__ import annotations

import json

import pytest

from orchestrator.evals.gate import RegressionError, gate, regressions
from tests.conftest import compose_config, run_cli

QUIET = ["logger.wandb=false", "logger.progress_bar=false"]


def test_gate_passes_against_itself_and_fails_against_a_better_baseline(tmp_path):
    first = tmp_path / "first"
    proc = run_cli("pipeline=eval", "eval.suite=honest", f"output_dir={first}", *QUIET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((first / "eval" / "summary.json").read_text())
    assert summary["suite"] == "honest" and summary["direction"] == {"honesty_accuracy": "higher"}
    assert 0.0 <= summary["metrics"]["honesty_accuracy"] <= 1.0

    again = run_cli("pipeline=eval", "eval.suite=honest", f"eval.baseline={first / 'eval' / 'summary.json'}",
                    f"output_dir={tmp_path / 'again'}", *QUIET)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "again" / "eval" / "summary.json").read_text())["metrics"] == summary["metrics"]

    better = dict(summary, metrics={"honesty_accuracy": summary["metrics"]["honesty_accuracy"] + 0.25})
    (tmp_path / "better.json").write_text(json.dumps(better))
    worse = run_cli("pipeline=eval", "eval.suite=honest", f"eval.baseline={tmp_path / 'better.json'}", "eval.tolerance=0.1",
                    f"output_dir={tmp_path / 'worse'}", *QUIET)
    assert worse.returncode == 3, worse.stderr[-3000:]
    lines = [line for line in worse.stderr.splitlines() if line.startswith("tether: error:")]
    now = summary["metrics"]["honesty_accuracy"]
    assert lines == [f"tether: error: regression: honesty_accuracy: baseline {now + 0.25:.4g}, now {now:.4g} "
                     "(higher is better; eval.tolerance 0.1)"]
    assert (tmp_path / "worse" / "eval" / "summary.json").is_file()  # the measurement is kept


def test_regressions_follow_direction_and_tolerance():
    cfg = compose_config("pipeline=eval", "eval.suite=harmless", "eval.tolerance={attack_success_rate:0.05}")
    base = {"metrics": {"attack_success_rate": 0.20, "benign_refusal_rate": 0.10}}
    ok = {"metrics": {"attack_success_rate": 0.24, "benign_refusal_rate": 0.05}}  # within 0.05; fewer refusals
    gate(cfg, ok, base)
    bad = {"metrics": {"attack_success_rate": 0.30, "benign_refusal_rate": 0.11}}  # lower is better for both
    with pytest.raises(RegressionError) as err:
        gate(cfg, bad, base)
    assert [line.split(":")[1].strip() for line in str(err.value).splitlines()] == ["attack_success_rate", "benign_refusal_rate"]
    assert regressions(bad, base, {"attack_success_rate": 0.2, "benign_refusal_rate": 0.2}) == []
