"""Hydra sweeps: per-trial output folders and names, the returned metric, Optuna, the Ray
launcher, the sweep summary, and bad sweep input."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from tests.conftest import compose_config, error_line, run_cli
from orchestrator import sweep
from orchestrator.errors import ConfigError

# GRPO (no critic) with transformers rollouts: the sweep machinery is under test here, and this run
# starts three actors, not five (vLLM and the PPO critic are tested by the pipeline tests)
QUICK = ("trainer.max_steps=2", "logger.progress_bar=false", "algorithm=grpo", "rollout=hf")


def _last_row(folder: Path) -> dict:
    return json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])


def _record(folder: Path) -> dict:
    return json.loads((folder / sweep.TRIAL_RECORD).read_text())


def _check_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = imread(str(path)).shape[:2]
    assert height > 200 and width > 200


def _wandb_run_record(output_dir: Path) -> bytes:
    """Bytes of the offline wandb run file written into ``output_dir``."""
    files = glob.glob(str(output_dir / "wandb" / "offline-run-*" / "*.wandb"))
    assert len(files) == 1, files
    return Path(files[0]).read_bytes()


def _proto_string(field_number: int, text: str) -> bytes:
    """A protobuf string field as serialised (wandb's RunRecord: run_group is 6, display_name is 8)."""
    data = text.encode()
    assert len(data) < 128
    return bytes([field_number << 3 | 2, len(data)]) + data


def _run_names(run: bytes) -> set[str]:
    """The rlhf run names (display_name fields) in a wandb run file."""
    tag, names, i = bytes([8 << 3 | 2]), set(), 0
    while (i := run.find(tag, i) + 1) > 0:
        text = run[i + 1:i + 1 + run[i]] if i < len(run) and run[i] < 128 else b""
        if text.startswith(b"rlhf-"):
            names.add(text.decode(errors="replace"))
    return names


# ---- without Ray -------------------------------------------------------------------------------
def test_single_run_keeps_its_defaults():
    """Outside a multirun the output folder, run name and group are those of a plain run."""
    cfg = compose_config()
    assert cfg.output_dir.startswith("outputs/")
    assert cfg.sweep.metric is None
    assert sweep.current_trial() is None
    assert sweep.trial_run_name("rlhf-ppo-tiny") == "rlhf-ppo-tiny"
    assert sweep.trial_group(None) is None and sweep.trial_group("g") == "g"


def test_pick_metric():
    """null prefers the held-out reward; a missing name is a one-line error listing what exists."""
    final = {"reward/mean": 0.5, "eval/reward/mean": 0.25, "kl": 0.1}
    assert sweep.pick_metric(final, None, required=True) == ("eval/reward/mean", 0.25)
    assert sweep.pick_metric({"reward/mean": 0.5}, None, required=True) == ("reward/mean", 0.5)
    assert sweep.pick_metric(final, "kl", required=True) == ("kl", 0.1)
    dpo = {"loss": 0.3, "rewards/accuracies": 0.75, "eval/rewards/accuracies": 0.5}
    assert sweep.pick_metric(dpo, None, required=True) == ("eval/rewards/accuracies", 0.5)
    assert sweep.pick_metric({"loss": 0.3, "accuracy": 0.875}, None, required=True) == ("accuracy", 0.875)
    assert sweep.pick_metric({"loss": 1.0}, None, required=False) == (None, None)
    with pytest.raises(ConfigError) as err:
        sweep.pick_metric(final, "nonexistent", required=False)
    assert str(err.value) == ("sweep.metric='nonexistent' is not among the run's final metrics: "
                              "eval/reward/mean, kl, reward/mean")
    with pytest.raises(ConfigError, match="set sweep.metric to one of: loss"):
        sweep.pick_metric({"loss": 1.0}, None, required=True)


def test_summary_shows_failed_and_unreported_trials(tmp_path):
    """summary.md lists every trial with its status; the callback exits 2 when one failed."""
    def trial(num, lr):
        return sweep.Trial(num, ["trainer.max_steps=2", f"trainer.lr={lr}"], tmp_path, tmp_path / str(num))

    sweep.write_trial_record(trial(0, 1e-5), "completed", str(tmp_path / "0"), "reward/mean", 0.25,
                             {"reward/mean": 0.25, "kl": 0.5})
    sweep.write_trial_record(trial(1, 1e-4), "completed", str(tmp_path / "1"), "reward/mean", 0.75,
                             {"reward/mean": 0.75, "kl": float("nan")})
    sweep.write_trial_record(trial(2, 1e-3), "failed", str(tmp_path / "2"), None, None, {},
                             "batch size 1000 (trainer.rollout_batch_size) is larger than the 64 prompt rows")
    (tmp_path / "3").mkdir()  # a trial killed before it could report

    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "sweep": {"metric": None}})
    with pytest.raises(SystemExit) as exit_:
        sweep.SweepSummary().on_multirun_end(config)
    assert exit_.value.code == 2

    text = (tmp_path / sweep.SUMMARY_MD).read_text()
    assert "- trials: 4 (2 completed, 2 failed)" in text
    assert "- best: trial 1 (reward/mean=0.75) trainer.lr=0.0001" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| trial")]
    assert [r.split(" | ")[:4] for r in rows] == [
        ["| 0", "completed", "trainer.lr=1e-05", "0.25"], ["| 1", "completed", "trainer.lr=0.0001", "0.75"],
        ["| 2", "failed", "trainer.lr=0.001", "-"], ["| 3", "no record", "-", "-"]]
    assert "is larger than the 64 prompt rows" in rows[2] and "nan" in rows[1]
    _check_png(tmp_path / sweep.SUMMARY_PNG)


@pytest.mark.parametrize("args", [
    ["no_such_field=1"],
    ["-m", "no_such_field=1,2"],
    ["-m", "hydra/sweeper=optuna", "no_such_field=interval(0,1)"],
], ids=["run", "multirun", "optuna"])
def test_unknown_key_is_hydras_error(tmp_path, args):
    """An override or a swept field the config does not have: Hydra's error, no trial runs."""
    proc = run_cli(*args, f"hydra.sweep.dir={tmp_path / 'sweep'}", f"output_dir={tmp_path / 'out'}")
    assert proc.returncode != 0
    assert "Could not override 'no_such_field'" in proc.stderr
    assert "Key 'no_such_field' not in 'TetherConfig'" in proc.stderr
    assert not (tmp_path / "out").exists() and not glob.glob(str(tmp_path / "sweep" / "*" / "metrics.jsonl"))


# ---- end to end --------------------------------------------------------------------------------
@pytest.mark.slow
def test_optuna_sweep_maximises_the_returned_metric(tmp_path):
    """Two Optuna trials (basic launcher): distinct folders and run names, one wandb group,
    the metric each trial returned is its last logged reward/mean, the best is the larger."""
    sweep_dir = tmp_path / "lr-search"
    proc = run_cli("-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.seed=0",
                   "trainer.lr=tag(log,interval(1e-6,1e-3))", *QUICK, f"hydra.sweep.dir={sweep_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]

    values = []
    for num in (0, 1):
        folder = sweep_dir / str(num)
        record = _record(folder)
        assert record["status"] == "completed" and record["metric"] == "reward/mean"
        assert record["output_dir"] == str(folder)
        assert yaml.safe_load((folder / "config.yaml").read_text())["output_dir"] == str(folder)
        assert record["value"] == pytest.approx(_last_row(folder)["reward/mean"])
        assert any(o.startswith("trainer.lr=") for o in record["overrides"])
        values.append(record["value"])
        run = _wandb_run_record(folder)
        assert _proto_string(6, "lr-search") in run  # the sweep folder's name is the group of each run
        names = _run_names(run)
        assert len(names) == 1 and names.pop().endswith(f"-trial{num}")
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(values))

    text = (sweep_dir / sweep.SUMMARY_MD).read_text()
    assert "- trials: 2 (2 completed, 0 failed)" in text
    assert f"sweep summary: {sweep_dir / sweep.SUMMARY_MD}" in proc.stdout
    _check_png(sweep_dir / sweep.SUMMARY_PNG)


@pytest.mark.slow
def test_ray_launcher_runs_trials_as_ray_tasks(tmp_path):
    """hydra/launcher=ray: a trial runs as a Ray task with its actors on the launcher's Ray;
    a trial with bad input is reported failed (with its error) and the multirun exits 2."""
    sweep_dir = tmp_path / "sweep"
    proc = run_cli("-m", "hydra/launcher=ray", "trainer.rollout_batch_size=8,1000", *QUICK, "logger.wandb=false",
                   f"hydra.sweep.dir={sweep_dir}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert error_line(proc) == (f"tether: error: 1 of 2 trials failed (1); see {sweep_dir / sweep.SUMMARY_MD}")
    assert "(_run_job pid=" in proc.stdout + proc.stderr  # the pipeline's output came from a Ray task

    done, failed = _record(sweep_dir / "0"), _record(sweep_dir / "1")
    assert done["status"] == "completed"
    assert done["value"] == pytest.approx(_last_row(sweep_dir / "0")["reward/mean"])
    assert (sweep_dir / "0" / "final" / "config.json").is_file()
    assert failed["status"] == "failed" and not (sweep_dir / "1" / "metrics.jsonl").exists()
    assert failed["error"].startswith("batch size 1000 (trainer.rollout_batch_size) is larger than the")

    text = (sweep_dir / sweep.SUMMARY_MD).read_text()
    assert "- trials: 2 (1 completed, 1 failed)" in text
    assert "| 1 | failed | trainer.rollout_batch_size=1000 |" in text
    _check_png(sweep_dir / sweep.SUMMARY_PNG)
