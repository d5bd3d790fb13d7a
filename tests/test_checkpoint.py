"""Checkpoint and output-folder rules without Ray: fabricated checkpoint folders (state.json + COMPLETE,
no trainer groups), the real PromptLoader, KL controller and config composition."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from orchestrator import checkpoint, outputs
from orchestrator.algorithms import make_kl_controller
from orchestrator.data import PromptLoader
from orchestrator.errors import CheckpointError, ConfigError
from tests.conftest import compose_config


def _metrics(out: Path, steps) -> None:
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in steps))


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _save(out: Path, step: int, cfg, keep: int = 0, **stateful) -> Path:
    state = {**{k: v.state_dict() for k, v in stateful.items()}, "rng": checkpoint.rng_state(),
             "config": OmegaConf.to_container(cfg, resolve=True)}
    return checkpoint.save(out, step, state, {}, keep)


def _ctx(cfg, out: Path):
    """A RunContext past its start-up (no tokenizer, no Ray): what restore() needs."""
    from orchestrator.run import RunContext

    ctx = RunContext.__new__(RunContext)
    ctx.cfg, ctx.output_dir, ctx.times, ctx.steps_logged = cfg, out, {}, 0
    return ctx


def _cfg(*overrides: str, **top):
    cfg = compose_config(*overrides)
    with open_dict(cfg):
        for k, v in top.items():
            cfg[k] = v
    return cfg


# ---- item 5: metrics.jsonl ---------------------------------------------------------------------
def test_truncate_metrics_drops_a_torn_last_line_and_names_a_bad_middle_one(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n{"step": 2}\n{"step": 3, "lo')  # killed mid-write
    checkpoint.truncate_metrics(path, 2)
    assert _steps(tmp_path) == [1, 2]
    assert any("metrics.jsonl:3" in r.getMessage() and "torn" in r.getMessage() for r in caplog.records)
    path.write_bytes(b'{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "loss": \xe2\x82')  # torn UTF-8 too
    checkpoint.truncate_metrics(path, 3)
    assert _steps(tmp_path) == [1, 2, 3]

    path.write_text('{"step": 1}\n\n{"step": 2\n{"step": 3}\n')
    with pytest.raises(CheckpointError) as err:
        checkpoint.truncate_metrics(path, 3)
    assert f"{path}:3:" in str(err.value) and "\n" not in str(err.value)
    assert path.read_text() == '{"step": 1}\n\n{"step": 2\n{"step": 3}\n'  # left as it was


# ---- item 4 and the {name: stateful} mapping ------------------------------------------------------
def test_resume_from_an_older_checkpoint_sets_the_newer_ones_aside(tmp_path, caplog):
    cfg = _cfg("pipeline=dpo", "algorithm=dpo", f"output_dir={tmp_path}", "trainer.mini_batch_size=2")
    rows = [{"i": i} for i in range(8)]
    loader, kl = PromptLoader(rows, 2, 0), make_kl_controller(0.1, 6.0, 100)
    for step in range(1, 13):
        next(loader)
        kl.update(float(step), 4)
        if step % 3 == 0:
            _save(tmp_path, step, cfg, loader=loader, kl_controller=kl)
            if step == 6:
                at6 = (loader.state_dict(), kl.coef)
    _metrics(tmp_path, range(1, 13))
    with open_dict(cfg):
        cfg.resume = str(checkpoint.root(tmp_path) / "step_000006")
    outputs.check_reuse(cfg, tmp_path)  # a checkpoint of the run the folder holds: accepted

    fresh_loader, fresh_kl = PromptLoader(rows, 2, 0), make_kl_controller(0.1, 6.0, 100)
    ctx = _ctx(cfg, tmp_path)
    assert ctx.restore({}, {"loader": fresh_loader, "kl_controller": fresh_kl}) == 6
    assert (fresh_loader.state_dict(), fresh_kl.coef) == at6
    assert _steps(tmp_path) == list(range(1, 7))
    live = sorted(p.name for p in checkpoint.root(tmp_path).glob("step_*"))
    aside = sorted(p.name for p in (checkpoint.root(tmp_path) / "abandoned").iterdir())
    assert live == ["step_000003", "step_000006"] and aside == ["step_000009", "step_000012"]
    assert any("abandoned" in r.getMessage() and "step_000012" in r.getMessage() for r in caplog.records)

    # the new timeline: step 9 again, pruning to 2 counts only live checkpoints, resume=auto picks it
    _save(tmp_path, 9, cfg, keep=2, loader=fresh_loader, kl_controller=fresh_kl)
    assert sorted(p.name for p in checkpoint.root(tmp_path).glob("step_*")) == ["step_000006", "step_000009"]
    assert checkpoint.latest(tmp_path)[0].name == "step_000009"
    with open_dict(cfg):
        cfg.resume = "auto"
    assert _ctx(cfg, tmp_path).restore({}, {"loader": PromptLoader(rows, 2, 0)}) == 9
    with open_dict(cfg):  # back to step 6 once more: the second step 9 is set aside next to the first
        cfg.resume = str(checkpoint.root(tmp_path) / "step_000006")
    assert _ctx(cfg, tmp_path).restore({}, {"loader": PromptLoader(rows, 2, 0)}) == 6
    assert (checkpoint.root(tmp_path) / "abandoned" / "step_000009.2").is_dir()

    with pytest.raises(CheckpointError, match="no state for critic_loader"):
        _ctx(cfg, tmp_path).restore({}, {"loader": PromptLoader(rows, 2, 0), "critic_loader": loader})


def test_resume_auto_with_no_usable_checkpoint_changes_nothing(tmp_path):
    cfg = _cfg("pipeline=dpo", "algorithm=dpo", f"output_dir={tmp_path}", resume="auto")
    _metrics(tmp_path, [1, 2])
    (checkpoint.root(tmp_path) / "step_000002").mkdir(parents=True)  # half-written: no COMPLETE
    with pytest.raises(ConfigError) as err:
        outputs.check_reuse(cfg, tmp_path)
    assert "overwrite=true" in str(err.value) and "no checkpoint" in str(err.value)
    _save(tmp_path, 2, cfg, loader=PromptLoader([1, 2], 1, 0))
    (checkpoint.root(tmp_path) / "step_000002" / "state.json").write_text("{}")  # readable, fails the hash check
    outputs.check_reuse(cfg, tmp_path)
    with pytest.raises(CheckpointError, match="nothing was changed"):
        _ctx(cfg, tmp_path).restore({}, {"loader": PromptLoader([1, 2], 1, 0)})
    assert _steps(tmp_path) == [1, 2] and (checkpoint.root(tmp_path) / "step_000002").is_dir()
    empty = tmp_path / "new"
    empty.mkdir()
    with open_dict(cfg):
        cfg.output_dir = str(empty)
    assert _ctx(cfg, empty).restore({}, {"loader": PromptLoader([1, 2], 1, 0)}) == 0  # nothing there: fresh


# ---- items 1 and 3: what a folder holding a run accepts ------------------------------------------
def test_check_reuse_rules(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    grpo = _cfg("algorithm=grpo", f"output_dir={out}")
    _metrics(out, [1, 2])
    OmegaConf.save(grpo, out / "config.yaml", resolve=True)

    with pytest.raises(ConfigError) as err:  # no resume: only what works is suggested
        outputs.check_reuse(grpo, out)
    assert "overwrite=true" in str(err.value) and "resume=auto" not in str(err.value)
    outputs.check_reuse(_cfg("algorithm=grpo", f"output_dir={out}", overwrite=True), out)
    with pytest.raises(ConfigError, match="contradict"):
        outputs.check_reuse(_cfg("algorithm=grpo", f"output_dir={out}", overwrite=True, resume="auto"), out)

    _save(out, 2, grpo, loader=PromptLoader([1, 2], 1, 0))
    with pytest.raises(ConfigError, match="continue it with resume=auto"):
        outputs.check_reuse(grpo, out)
    outputs.check_reuse(_cfg("algorithm=grpo", f"output_dir={out}", resume="auto"), out)
    cases = [(("pipeline=dpo", "algorithm=dpo"), "pipeline='rlhf'"), (("algorithm=rloo",), "algorithm.name='grpo'"),
             (("algorithm=grpo", "trainer.num_ranks=2", "trainer.mini_batch_size=8"), "trainer.num_ranks=1"),
             (("algorithm=grpo", "trainer.zero_stage=2"), "trainer.zero_stage=0"),
             (("algorithm=grpo", "model.tiny.hidden_size=64"), "model.tiny=")]
    for overrides, named in cases:
        with pytest.raises(CheckpointError) as err:
            outputs.check_reuse(_cfg(*overrides, f"output_dir={out}", resume="auto"), out)
        assert named in str(err.value) and "state.json" in str(err.value) and "\n" not in str(err.value), str(err.value)

    other = tmp_path / "other"  # resume=DIR of another folder into a folder holding a run: would mix two runs
    foreign = _save(other, 4, grpo, loader=PromptLoader([1, 2], 1, 0))
    with pytest.raises(ConfigError, match="mix the two runs"):
        outputs.check_reuse(_cfg("algorithm=grpo", f"output_dir={out}", resume=str(foreign)), out)
    with pytest.raises(CheckpointError, match="pipeline"):  # into a new folder: still the same pipeline only
        outputs.check_reuse(_cfg("pipeline=dpo", "algorithm=dpo", f"output_dir={tmp_path / 'branch'}",
                                 resume=str(foreign)), tmp_path / "branch")
    outputs.check_reuse(_cfg("algorithm=grpo", f"output_dir={tmp_path / 'branch'}", resume=str(foreign)), tmp_path / "branch")

    (out / "tensorboard").mkdir()
    (out / "notes.txt").write_text("mine")
    assert sorted(outputs.remove_run(out)) == ["checkpoints", "config.yaml", "metrics.jsonl", "tensorboard"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# ---- item 15a and item 2 at the start of RunContext ------------------------------------------------
def test_run_context_checks_the_folder_and_takes_the_lock_before_anything_starts(tmp_path):
    from orchestrator.run import RunContext

    loaded = []

    def load_data(cfg):  # the pipeline's input check: must not be reached
        loaded.append(cfg)
        raise AssertionError("data loaded")

    a_file = tmp_path / "file"
    a_file.write_text("x")
    for bad, why in ((a_file, "is a file"), (a_file / "sub", "cannot be written"), (Path("/proc/tether"), "cannot be written")):
        with pytest.raises(ConfigError) as err:
            RunContext(_cfg(f"output_dir={bad}"), load_data=load_data)
        assert f"output_dir='{bad}'" in str(err.value) and why in str(err.value), str(err.value)

    out = tmp_path / "busy"
    out.mkdir()
    held = outputs.OutputLock(out)
    with pytest.raises(ConfigError) as err:
        RunContext(_cfg(f"output_dir={out}"), load_data=load_data)
    assert f"pid {os.getpid()} on " in str(err.value) and str(out) in str(err.value)
    held.release()
    assert not loaded and os.listdir(out) == [outputs.LOCK_FILE]

    with pytest.raises(AssertionError, match="data loaded"):  # lock free again: the run gets as far as its data
        RunContext(_cfg(f"output_dir={tmp_path / 'created'}"), load_data=load_data)
    assert not (tmp_path / "created").exists()  # a failed start leaves nothing behind, the lock is released
    outputs.OutputLock(tmp_path).release()


def test_the_kernel_releases_the_lock_of_a_killed_run(tmp_path):
    code = ("import sys, time; from orchestrator.outputs import OutputLock; "
            "l = OutputLock(sys.argv[1]); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"pid {holder.pid} on "):
            outputs.OutputLock(tmp_path)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    time.sleep(0.1)
    outputs.OutputLock(tmp_path).release()


# ---- storage beside output_dir: checkpoints, final/ and run.json there, the rest in output_dir -------
def test_checkpoints_in_a_storage_folder_beside_output_dir(tmp_path):
    out, shared = tmp_path / "driver", tmp_path / "shared"
    out.mkdir()
    cfg = _cfg("pipeline=dpo", "algorithm=dpo", f"output_dir={out}", f"storage={shared}")
    ctx = _ctx(cfg, out)
    assert ctx.storage == shared
    rows = [{"i": i} for i in range(4)]
    state = {"loader": PromptLoader(rows, 1, 0).state_dict(), "rng": checkpoint.rng_state(),
             "config": OmegaConf.to_container(cfg, resolve=True), "run_id": outputs.run_id(shared)}
    checkpoint.save(shared, 2, state, {}, 2)
    assert (shared / "run.json").is_file() and not (out / "run.json").exists() and not (out / "checkpoints").exists()
    with pytest.raises(ConfigError, match="continue it with resume=auto") as err:  # the storage holds a run
        outputs.check_reuse(cfg, out, shared)
    assert f"{shared / 'checkpoints'}/" in str(err.value)
    with open_dict(cfg):
        cfg.resume = "auto"
    outputs.check_reuse(cfg, out, shared)
    assert _ctx(cfg, out).restore({}, {"loader": PromptLoader(rows, 1, 0)}) == 2  # run id read from storage
    with open_dict(cfg):
        cfg.resume, cfg.overwrite = None, True
    outputs.check_reuse(cfg, out, shared)
    assert outputs.remove_run(out, shared) == [str(shared / "checkpoints"), str(shared / "run.json")]
    assert list(shared.iterdir()) == []
