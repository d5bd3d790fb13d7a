"""Tests for orchestrator.tracking: metrics.jsonl, offline wandb and TensorBoard output."""

import glob
import json
import os

import numpy as np
import pytest
import torch

from orchestrator.tracking import Tracker, read_metrics, wandb_mode


@pytest.fixture(autouse=True)
def quiet_wandb(tmp_path, monkeypatch):
    """No key, no forced mode, and wandb's own config/cache kept inside tmp_path."""
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_wandb_mode_follows_api_key(monkeypatch):
    """wandb runs online only when WANDB_API_KEY is set, unless WANDB_MODE says otherwise."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode() == "offline"


def test_metrics_jsonl_only(tmp_path):
    """metrics.jsonl holds exactly what was logged, as plain numbers."""
    out = tmp_path / "run"
    logged = [
        (0, {"loss": 1.5, "reward": torch.tensor(0.25)}),
        (1, {"loss": np.float32(0.5), "kl": np.float64(0.125), "count": np.int64(3)}),
        (2, {"loss": torch.tensor([2.0]), "note": "text"}),
    ]
    with Tracker(str(out), {"lr": 1e-5}, "tiny", wandb=False, tensorboard=False) as tracker:
        for step, metrics in logged:
            tracker.log(step, metrics)
        # each line is flushed as soon as it is logged
        assert len(read_metrics(str(out / "metrics.jsonl"))) == 3
        assert tracker.locations() == {"metrics": str(out / "metrics.jsonl")}
    rows = read_metrics(str(out))
    assert rows == [
        {"step": 0, "loss": 1.5, "reward": 0.25},
        {"step": 1, "loss": 0.5, "kl": 0.125, "count": 3},
        {"step": 2, "loss": 2.0, "note": "text"},
    ]
    for line in (out / "metrics.jsonl").read_text().splitlines():
        assert isinstance(json.loads(line), dict)


def test_metrics_file_appends_across_trackers(tmp_path):
    """A second tracker on the same dir appends."""
    for step in range(2):
        with Tracker(str(tmp_path), {}, "a", wandb=False, tensorboard=False) as tracker:
            tracker.log(step, {"x": float(step)})
    assert read_metrics(str(tmp_path)) == [{"step": 0, "x": 0.0}, {"step": 1, "x": 1.0}]


def test_log_after_close_raises(tmp_path):
    """close() is idempotent and log() after it fails loudly."""
    tracker = Tracker(str(tmp_path), {}, "a", wandb=False, tensorboard=False)
    tracker.close()
    tracker.close()  # closing twice is harmless
    with pytest.raises(RuntimeError):
        tracker.log(0, {"x": 1.0})


def test_tensorboard_scalars_readable(tmp_path):
    """TensorBoard events hold the numeric scalars at their steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with Tracker(str(tmp_path), {}, "tb", wandb=False, tensorboard=True) as tracker:
        for step in range(3):
            tracker.log(step, {"loss": 1.0 / (step + 1), "name": "skip-me"})
        tb_dir = tracker.locations()["tensorboard"]
    assert tb_dir == str(tmp_path / "tensorboard")
    assert glob.glob(os.path.join(tb_dir, "events.out.tfevents.*"))
    acc = EventAccumulator(tb_dir)
    acc.Reload()
    assert acc.Tags()["scalars"] == ["loss"]
    events = acc.Scalars("loss")
    assert [e.step for e in events] == [0, 1, 2]
    assert [e.value for e in events] == pytest.approx([1.0, 0.5, 1.0 / 3])


def test_tensorboard_after_resume_shows_each_step_once(tmp_path):
    """An interrupted run logged steps 1-5 after its checkpoint at step 3; the resumed run logs 4-6
    again: TensorBoard shows steps 1-6 once each, 4-5 with the resumed run's values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with Tracker(str(tmp_path), {}, "a", wandb=False) as tracker:
        for step in range(1, 6):
            tracker.log(step, {"loss": float(step)})
    with Tracker(str(tmp_path), {}, "a", wandb=False, resume_step=3) as tracker:
        for step in range(4, 7):
            tracker.log(step, {"loss": 10.0 * step})
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("loss")
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in events] == [1.0, 2.0, 3.0, 40.0, 50.0, 60.0]


def test_wandb_offline_run_dir(tmp_path):
    """Without a key, wandb writes an offline run under output_dir."""
    out = tmp_path / "run"
    config = {"algorithm": "grpo", "lr": 1e-6}
    with Tracker(str(out), config, "offline-test", wandb=True, wandb_group="g",
                 tensorboard=False) as tracker:
        tracker.log(0, {"loss": 1.0})
        tracker.log(1, {"loss": torch.tensor(0.5)})
        where = tracker.locations()
    run_dir = where["wandb"]
    assert os.path.isdir(run_dir)
    assert os.path.commonpath([run_dir, str(out)]) == str(out)
    assert os.path.basename(run_dir).startswith("offline-run-")
    assert glob.glob(str(out / "wandb" / "offline-run-*"))
    assert glob.glob(os.path.join(run_dir, "*.wandb"))
    assert read_metrics(where["metrics"]) == [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}]


def test_wandb_run_continues_with_its_id(tmp_path):
    """A tracker given the id of an earlier wandb run continues that run (offline: a second run folder
    with the same id, which `wandb sync` uploads into one run)."""
    with Tracker(str(tmp_path), {}, "a", tensorboard=False) as first:
        first.log(1, {"loss": 1.0})
    with Tracker(str(tmp_path), {}, "a", tensorboard=False, wandb_id=first.wandb_id) as second:
        second.log(2, {"loss": 0.5})
        where = second.wandb_run_dir()
    assert first.wandb_id and second.wandb_id == first.wandb_id
    runs = sorted(glob.glob(str(tmp_path / "wandb" / "offline-run-*")))
    assert len(runs) == 2 and all(f"-{first.wandb_id}" in os.path.basename(r) for r in runs) and where in runs
