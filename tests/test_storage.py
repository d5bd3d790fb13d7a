"""Storage in a bucket: a real S3-compatible server (``moto_server``, a separate process on a free
127.0.0.1 port) reached through s3fs with ``AWS_ENDPOINT_URL``. The checkpoint rules on ``s3://`` with
fabricated checkpoints (no Ray), the config checks, and a DPO run whose checkpoints and ``final/`` go to
the bucket and which a second run, from another output_dir, resumes from the bucket."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator import checkpoint, outputs, storage
from orchestrator.errors import CheckpointError, ConfigError
from tests.conftest import compose_config, run_cli

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server process for the module, this process's environment pointed at it; yields a
    function making a fresh bucket and returning its ``s3://`` URI."""
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        made = []

        def bucket(name: str) -> str:
            fs.mkdir(name)
            made.append(name)
            return f"s3://{name}"

        yield bucket
    finally:
        server.terminate()
        server.wait(10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_storage_settings_are_checked_in_one_line():
    from orchestrator.validation import validate

    for value, expected in (("ftp://host/x", "unknown storage scheme 'ftp://'"), ("s3://", "name a bucket"),
                            ("gs://bucket/run", "pip install gcsfs")):
        with pytest.raises(ConfigError) as err:
            validate(compose_config(f"storage={value}"))
        assert f"storage='{value}'" in str(err.value) and expected in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="output_dir is a folder on the driver's node"):
        validate(compose_config("output_dir=s3://bucket/run"))
    validate(compose_config("storage=s3://bucket/run"))
    validate(compose_config("storage=/shared/runs/a"))


class _Ranks:
    """Stands in for a trainer group: each 'rank' writes its files on its own disk and publishes them
    as a TrainerRank does (storage.publish_rank)."""

    def __init__(self, tmp: Path, n: int = 2):
        self.tmp, self.n = tmp, n

    def save_checkpoint(self, path: str) -> None:
        for rank in range(self.n):
            with storage.scratch("save") as local:
                (local / "ds").mkdir()
                (local / "ds" / f"part{rank}.pt").write_bytes(os.urandom(64))
                storage.publish_rank(local, path, rank)


def test_checkpoint_rules_in_a_bucket(s3, tmp_path, caplog):
    where = s3("rules") + "/run"
    group = _Ranks(tmp_path)
    for step in (2, 4, 6):
        checkpoint.save(where, step, {"loader": step}, {"policy": group}, keep=2)
    assert [storage.name(f) for f in checkpoint.step_folders(where)] == ["step_000004", "step_000006"]  # pruned
    folder, state = checkpoint.latest(where)
    assert state["step"] == 6 and folder == f"{where}/checkpoints/step_000006"
    marker = json.loads(storage.read_text(f"{folder}/COMPLETE"))
    assert marker["groups"] == ["policy"] and {"policy/ds/part0.pt", "policy/ds/part1.pt", "state.json"} <= set(marker["files"])

    # what a rank loads is checked on its own disk: all files there and equal, or one line naming the stored file
    with storage.scratch("load") as local:
        storage.fetch_verified(f"{folder}/policy", local, checkpoint.expected_files(f"{folder}/policy"))
        assert sorted(p.name for p in (local / "ds").iterdir()) == ["part0.pt", "part1.pt"]
    storage.write_text(f"{folder}/policy/ds/part1.pt", "x" * 64)  # same size, other bytes
    assert checkpoint.problem(folder, hashes=False) is None  # the driver reads no rank's file...
    with storage.scratch("load") as local, pytest.raises(CheckpointError, match="part1.pt: does not match"):
        storage.fetch_verified(f"{folder}/policy", local, checkpoint.expected_files(f"{folder}/policy"))
    assert "corrupt" in checkpoint.problem(folder)  # ...a full check (a tool, a test) still finds it

    # a checkpoint without its marker is absent; resuming older sets newer ones aside, nothing deleted
    storage.remove(f"{where}/checkpoints/step_000006/COMPLETE")
    assert checkpoint.latest(where, hashes=False)[1]["step"] == 4
    assert checkpoint.newest_state(where)[1]["step"] == 4
    assert any("step_000006" in r.getMessage() and "half-written" in r.getMessage() for r in caplog.records)
    checkpoint.set_aside_newer(where, 4)
    assert storage.list_names(f"{where}/checkpoints") == ["abandoned", "step_000004"]
    assert storage.list_names(f"{where}/checkpoints/abandoned/step_000006/policy/ds") == ["part0.pt", "part1.pt"]


def test_run_files_and_run_id_live_in_the_bucket(s3, tmp_path):
    where = s3("runid") + "/run"
    out = tmp_path / "out"
    out.mkdir()
    cfg = compose_config(f"output_dir={out}", f"storage={where}")
    assert outputs.run_files(out, where) == []
    first = outputs.run_id(where)
    assert outputs.read_run_id(where) == first == outputs.run_id(where)
    checkpoint.save(where, 2, {"config": {}}, {}, keep=2)
    assert outputs.run_files(out, where) == [f"{where}/checkpoints/"]
    with pytest.raises(ConfigError, match="continue it with resume=auto"):  # the bucket holds a run
        outputs.check_reuse(cfg, out, where)
    removed = outputs.remove_run(out, where)
    assert removed == [f"{where}/checkpoints", f"{where}/run.json"] and storage.list_names(where) == []


@pytest.mark.slow
def test_dpo_run_checkpoints_and_final_in_a_bucket_resumed_from_another_output_dir(s3, tmp_path, monkeypatch):
    """A DPO run writes its checkpoints and final/ to s3://; the newest checkpoint loses its marker (a
    save cut short); a second run on another machine's output_dir (a fresh folder) resumes from the
    bucket at the checkpoint before it; final/ downloads and loads with transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = s3("runs") + "/dpo-a"
    dpo = ["pipeline=dpo", "algorithm=dpo", "logger.progress_bar=false", "logger.wandb=false",
           "logger.tensorboard=false", "trainer.save_steps=2", "trainer.keep_checkpoints=2", f"storage={where}"]
    first, second, scratch = tmp_path / "first", tmp_path / "second", tmp_path / "scratch"
    monkeypatch.setenv(storage.SCRATCH_ENV, str(scratch))  # the local Ray's actors inherit it
    proc = run_cli(*dpo, "trainer.max_steps=4", f"output_dir={first}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert storage.list_names(f"{where}/checkpoints") == ["step_000002", "step_000004"]
    assert storage.folder_published(f"{where}/final") and f"final model: {where}/final" in proc.stdout
    assert not (first / "checkpoints").exists() and not (first / "final").exists()
    assert scratch.is_dir() and list(scratch.iterdir()) == []  # the ranks' disk was used, and nothing left there

    storage.remove(f"{where}/checkpoints/step_000004/COMPLETE")
    proc = run_cli(*dpo, "trainer.max_steps=6", "resume=auto", f"output_dir={second}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "step_000004: no valid COMPLETE marker" in log and f"resumed from {where}/checkpoints/step_000002" in log
    assert [json.loads(r)["step"] for r in (second / "metrics.jsonl").read_text().splitlines()] == [3, 4, 5, 6]
    assert storage.list_names(f"{where}/checkpoints") == ["abandoned", "step_000004", "step_000006"]

    local = tmp_path / "final"
    storage.fetch_verified(f"{where}/final", local, json.loads(storage.read_text(f"{where}/final/COMPLETE"))["files"])
    model = AutoModelForCausalLM.from_pretrained(local, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(local)
    ids = tokenizer("Name a tree", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] == model.config.vocab_size
    shutil.rmtree(local)
