"""Issue 13's "20 more hostile cases": the ones that failed, each as a test that fails without its fix
(the full list, with the commands and outcomes, is bench/hostile/REPORT.md)."""

from __future__ import annotations

import http.server
import socketserver
import threading
import time
from pathlib import Path

import pytest

from orchestrator import checkpoint
from orchestrator.errors import ConfigError, RewardError
from orchestrator.rewards import remote
from orchestrator.rewards.remote import check_remote_config, remote_scores
from orchestrator.validation import validate
from tests.conftest import compose_config


# ---- the reward server client ------------------------------------------------------------------
def _serve(handler) -> socketserver.ThreadingTCPServer:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, body: bytes, delay: float = 0.0) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for i in range(0, len(body), 1 if delay else len(body)):
            self.wfile.write(body[i:i + (1 if delay else len(body))])
            self.wfile.flush()
            time.sleep(delay)


def test_a_redirect_is_not_followed_so_the_token_reaches_no_other_host():
    seen = []

    class Other(_Quiet):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            self.reply(b'{"rewards": [0.5]}')

        do_POST = do_GET

    other = _serve(Other)

    class Redirect(_Quiet):
        def do_POST(self):
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{other.server_address[1]}/steal")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = _serve(Redirect)
    try:
        with pytest.raises(RewardError, match=r"answered 302 .*redirects are not followed"):
            remote_scores(f"http://127.0.0.1:{server.server_address[1]}/score", "s3cret", ["p"], ["r"], 5)
        assert seen == []  # urllib's default opener sent "Bearer s3cret" to the other host
    finally:
        server.shutdown()
        other.shutdown()


def test_the_whole_reply_is_bounded_in_time_and_size(monkeypatch):
    class Trickle(_Quiet):
        def do_POST(self):
            self.reply(b'{"rewards": [0.5]}' + b" " * 40, delay=0.1)  # ~6 s in all, each byte well in time

    class Big(_Quiet):
        def do_POST(self):
            self.reply(b'{"rewards": [0.5], "pad": "' + b"x" * 5000 + b'"}')

    trickle, big = _serve(Trickle), _serve(Big)
    try:
        start = time.monotonic()
        with pytest.raises(RewardError, match=r"did not answer \(within 1s\)"):
            remote_scores(f"http://127.0.0.1:{trickle.server_address[1]}/score", "t", ["p"], ["r"], 1.0)
        assert time.monotonic() - start < 3
        monkeypatch.setattr(remote, "MAX_REPLY_BYTES", 1000)
        with pytest.raises(RewardError, match=r"sent a reply over 1000 bytes"):
            remote_scores(f"http://127.0.0.1:{big.server_address[1]}/score", "t", ["p"], ["r"], 5)
    finally:
        trickle.shutdown()
        big.shutdown()


def test_a_token_that_cannot_be_a_header_is_refused_without_echoing_it():
    with pytest.raises(ConfigError) as err:
        check_remote_config("http://127.0.0.1:1/score", "s3cret\nX-Evil: 1", "TETHER_REWARD_TOKEN")
    assert "TETHER_REWARD_TOKEN" in str(err.value) and "s3cret" not in str(err.value)
    check_remote_config("http://127.0.0.1:1/score", "a-normal_token.123~", "TETHER_REWARD_TOKEN")


def test_credentials_in_the_reward_url_are_refused_without_echoing_them():
    with pytest.raises(ConfigError) as err:
        check_remote_config("http://alice:hunter2@127.0.0.1:1/score", "tok", "TETHER_REWARD_TOKEN")
    assert "user name or password" in str(err.value) and "hunter2" not in str(err.value)


# ---- output_dir and resume ----------------------------------------------------------------------
def test_an_empty_output_dir_is_refused():
    with pytest.raises(ConfigError, match=r"^output_dir is empty"):  # Path("") is the current folder
        validate(compose_config("pipeline=sft", "output_dir="))


def test_an_output_dir_symlink_loop_is_one_line(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(ConfigError, match=r"output_dir=.*loop.*Symlink loop"):
        validate(compose_config("pipeline=sft", f"output_dir={loop}"))


def test_resume_with_a_tilde_path_is_expanded(tmp_path, monkeypatch):
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    (ckpt / checkpoint.COMPLETE_FILE).write_text('{"groups": [], "files": {}}')
    (ckpt / checkpoint.STATE_FILE).write_text('{"step": 3}')
    monkeypatch.setenv("HOME", str(tmp_path))
    validate(compose_config("pipeline=sft", "resume='~/ck'"))  # was: "no valid COMPLETE marker"


# ---- checkpoints past step 999,999 ---------------------------------------------------------------
class _Group:
    def save_checkpoint(self, path: str) -> None:
        Path(path).mkdir(parents=True)
        (Path(path) / "weights").write_text(path)


def test_checkpoints_are_ordered_by_step_number_not_by_name(tmp_path):
    for step in (999_998, 999_999, 1_000_000):
        checkpoint.save(tmp_path, step, {}, {"policy": _Group()}, keep=2)
    names = [p.name for p in checkpoint.step_folders(tmp_path)]
    assert names == ["step_999999", "step_1000000"]  # by name, step_1000000 was pruned as the oldest
    assert checkpoint.newest_state(tmp_path)[1]["step"] == 1_000_000
    assert checkpoint.latest(tmp_path)[1]["step"] == 1_000_000


# ---- a local Ray that cannot start ---------------------------------------------------------------
def test_a_local_ray_that_cannot_start_is_one_line(tmp_path, monkeypatch):
    import ray

    from orchestrator.errors import ResourceError
    from orchestrator.runtime import start_ray

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("RAY_TMPDIR", str(blocker))  # as a full disk or `ulimit -f` would, Ray cannot write its files
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = compose_config("pipeline=sft").cluster
    with pytest.raises(ResourceError, match=r"^the local Ray did not start: .*Not a directory"):
        start_ray(cfg)
    assert not ray.is_initialized()


# ---- inputs: data rows and constitutions -----------------------------------------------------------
def test_a_lone_surrogate_in_a_json_row_is_a_file_line_error(tmp_path):
    from orchestrator.data import load_prompt_rows
    from orchestrator.errors import DataError

    for name, text in (("p.jsonl", '{"prompt": "ok"}\n{"prompt": "hi \\ud800 there"}\n'),
                       ("p.json", '[{"prompt": "ok"},\n {"prompt": [{"role": "user", "content": "\\udfff"}]}]')):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(DataError, match=r":(2|row 1): holds a lone UTF-16 surrogate"):  # was: tokenizers' TypeError
            load_prompt_rows(str(path))
    (tmp_path / "pair.jsonl").write_text('{"prompt": "a \\ud83d\\ude00 b"}\n')  # a proper pair is an emoji
    assert load_prompt_rows(str(tmp_path / "pair.jsonl"))[0]["prompt"] == "a \U0001F600 b"


def test_a_huge_constitution_is_refused_by_size(tmp_path):
    from orchestrator import constitution
    from orchestrator.errors import DataError

    path = tmp_path / "c.yaml"
    path.write_text("principles:\n" + "  - {name: a, critique: c, revision: r, comparison: q}\n" * 30000)  # ~1.6 MB
    with pytest.raises(DataError, match=r"bytes, more than the 1048576 bytes a constitution may hold"):
        constitution.load_constitution(path)  # was: ~1 s per MB of YAML and ~30x its size in memory


def test_a_key_given_twice_in_a_json_row_is_a_file_line_error(tmp_path):
    from orchestrator.data import load_prompt_rows
    from orchestrator.errors import DataError
    from orchestrator.preference_data import load_pair_rows

    cases = (("p.jsonl", '{"prompt": "ok"}\n{"prompt": "Write a kind reply.", "prompt": "Write an insult."}\n', ":2: key 'prompt'"),
             ("p.json", '[{"prompt": "ok"},\n {"prompt": "a",\n  "prompt": "b"}]', ":2 (row 1): key 'prompt'"),
             ("n.json", '[{"prompt": [{"role": "user", "content": "a", "content": "b"}]}]', ":1 (row 0): key 'content'"))
    for name, text, where in cases:  # was: accepted, the last value silently winning
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError) as err:
            load_prompt_rows(str(tmp_path / name))
        assert f"{tmp_path / name}{where}" in str(err.value) and "twice" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "p", "chosen": "good", "rejected": "bad", "chosen": "bad"}\n')
    with pytest.raises(DataError, match=r"pairs.jsonl:1: key 'chosen' appears twice"):
        load_pair_rows(str(tmp_path / "pairs.jsonl"))
    (tmp_path / "ok.json").write_text('[{"prompt": "a", "meta": {"prompt": "b"}}]')  # the same key in another object
    assert load_prompt_rows(str(tmp_path / "ok.json")) == [{"prompt": "a", "meta": {"prompt": "b"}}]


# ---- a reward file that ends the process at import --------------------------------------------------
@pytest.mark.parametrize("body, expected", [
    ("import os\nos._exit(0)\n", "exited with status 0"),  # was: the run ended rc 0 in 1 s, silently
    ("import os\nos._exit(3)\n", "exited with status 3"),
    ("import os\nos.kill(os.getpid(), 9)\n", "killed by signal 9 (SIGKILL)"),
    ("raise ValueError('no model here\\nsecond line')\n", "failed: ValueError: no model here"),
    ("import time\ntime.sleep(60)\n", "did not finish within 0.5s (reward.import_timeout_s)"),
])
def test_a_reward_file_that_exits_crashes_raises_or_blocks_at_import_is_one_line(tmp_path, body, expected):
    from orchestrator.rewards.loader import check_reward_file

    path = tmp_path / "bad_reward.py"
    path.write_text(body + "def score(prompts, responses):\n    return [0.0] * len(responses)\n")
    start = time.monotonic()
    with pytest.raises(ConfigError) as err:
        check_reward_file(f"{path}:score", timeout_s=0.5)
    message = str(err.value)
    assert expected in message and "bad_reward.py" in message and "\n" not in message, message
    assert time.monotonic() - start < 10


def test_the_driver_checks_the_reward_file_in_a_child_process(tmp_path):
    import os

    from orchestrator.prompts import load_prompt_data
    from orchestrator.rewards.loader import check_reward_file

    good = tmp_path / "good.py"
    good.write_text(f"import os\nopen({str(tmp_path / 'pid')!r}, 'w').write(str(os.getpid()))\n"
                    "def score(prompts, responses):\n    return [0.0] * len(responses)\n")
    check_reward_file(f"{good}:score", timeout_s=30)
    assert int((tmp_path / "pid").read_text()) != os.getpid()  # imported in a child: nothing of it stays here
    with pytest.raises(ConfigError, match=r"has no function named 'other'"):
        check_reward_file(f"{good}:other", timeout_s=30)
    exits = tmp_path / "exits.py"
    exits.write_text("import os\nos._exit(0)\n")
    with pytest.raises(ConfigError, match=r"exits.py exited with status 0"):  # the driver's input check survives it
        load_prompt_data(compose_config(f"reward.function={exits}:score"))


# ---- rewards too large for the advantages -------------------------------------------------------------
def test_advantages_that_overflow_from_finite_rewards_name_the_rewards():
    import torch

    from orchestrator.algorithms import ADVANTAGE_ESTIMATORS
    from orchestrator.algorithms.advantages import check_finite_advantages
    from orchestrator.errors import NumericalError

    mask, zeros = torch.ones(4, 3), torch.zeros(4, 3)
    rewards = [1e308, -1e308, 1.0, 2.0]  # finite, each one accepted by check_scores
    for name in ("grpo", "rloo", "reinforce_pp", "gae"):  # was: every update skipped, "non-finite loss or gradient"
        adv, ret = ADVANTAGE_ESTIMATORS.get(name)(torch.tensor(rewards), zeros, mask, zeros, 2, 1.0, 0.95)
        with pytest.raises(NumericalError) as err:
            check_finite_advantages(adv, ret, rewards, 3)
        assert str(err.value).startswith("advantages and returns are not finite: the rewards of step 3 range over "
                                         "[-1e+308, 1e+308]; rewards this large overflow float32")
        assert "scale the reward down" in str(err.value) and "\n" not in str(err.value)
    adv, ret = ADVANTAGE_ESTIMATORS.get("grpo")(torch.tensor([1.0, 2.0]), zeros[:2], mask[:2], None, 2, 1.0, 0.95)
    check_finite_advantages(adv, ret, [1.0, 2.0], 1)  # finite: nothing to say
    with pytest.raises(NumericalError, match=r"^returns are not finite: .*\[1, 2\]; the rewards are moderate, so the KL"):
        check_finite_advantages(adv, ret * float("nan"), [1.0, 2.0], 1)


# ---- a checkpoint of another run ------------------------------------------------------------------------
def test_resume_auto_skips_a_checkpoint_of_another_run(tmp_path, caplog):
    from omegaconf import OmegaConf, open_dict

    from orchestrator import outputs
    from orchestrator.data import PromptLoader
    from orchestrator.errors import CheckpointError
    from orchestrator.run import RunContext

    cfg = compose_config("pipeline=dpo", "algorithm=dpo", "trainer.save_steps=1", "trainer.keep_checkpoints=9")

    def ctx(out, resume, run_id=None):
        with open_dict(cfg):
            cfg.output_dir, cfg.resume = str(out), resume
        c = RunContext.__new__(RunContext)  # past its start-up (no tokenizer, no Ray): what restore() needs
        c.cfg, c.output_dir, c.times, c.steps_logged, c.wandb_id, c.run_id = cfg, out, {}, 0, None, run_id
        return c

    def restore(out, resume="auto"):
        return ctx(out, resume).restore({}, {"loader": PromptLoader([1, 2], 1, 0)})

    def save(out, step, run_id):  # what maybe_checkpoint writes
        ctx(out, None, run_id).maybe_checkpoint(step, {}, {"loader": PromptLoader([1, 2], 1, 0)})

    a, b, c = (tmp_path / name for name in "abc")
    for folder in (a, b, c):
        folder.mkdir()
    mine, other = outputs.run_id(a), "f" * 32
    assert outputs.run_id(a) == mine and len(mine) == 32 and outputs.read_run_id(b) is None
    save(a, 2, mine)
    assert checkpoint.read_state(a / "checkpoints" / "step_000002")[1]["run_id"] == mine
    save(a, 4, other)  # run B's checkpoint copied into A's checkpoints/
    assert restore(a) == 2  # was: resumed from step 4 silently
    assert any("step_000004" in r.getMessage() and other in r.getMessage() and mine in r.getMessage()
               for r in caplog.records)
    foreign = a / "checkpoints" / "abandoned" / "step_000004"
    assert foreign.is_dir()  # set aside, not deleted

    legacy = {"loader": PromptLoader([1, 2], 1, 0).state_dict(), "rng": checkpoint.rng_state(),
              "config": OmegaConf.to_container(cfg)}
    checkpoint.save(a, 6, legacy, {}, 9)  # written before run ids: taken
    assert restore(a) == 6

    assert restore(b, str(foreign)) == 4  # resume=DIR into a new folder: a branch, with a run id of its own
    assert outputs.run_id(b) not in (mine, other)

    outputs.run_id(c)  # only another run's checkpoint: nothing to resume, nothing changed
    save(c, 2, other)
    with pytest.raises(CheckpointError, match="no checkpoint .* could be used"):
        restore(c)
    assert (c / "checkpoints" / "step_000002").is_dir()

    assert "run.json" in outputs.remove_run(a) and outputs.read_run_id(a) is None  # overwrite=true: a new run
    (a / "run.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"run.json: unreadable .* restore it, or delete it"):
        outputs.read_run_id(a)


# ---- end to end: a model folder without a tokenizer ---------------------------------------------------
@pytest.mark.slow
def test_a_model_folder_without_tokenizer_files_is_one_line_before_any_actor(tmp_path, tiny_model_path):
    import shutil

    from tests.conftest import error_line, run_cli

    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(Path(tiny_model_path) / "config.json", model)
    out = tmp_path / "out"
    proc = run_cli("pipeline=sft", "rollout=hf", f"model.path={model}", f"output_dir={out}", timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert error_line(proc).startswith(f"tether: error: model: the tokenizer in {model} did not load")
    assert "Traceback" not in proc.stderr and not out.exists()  # before any actor; the folder it created is removed


@pytest.mark.slow
def test_an_input_error_found_while_ray_starts_stops_that_ray(tmp_path, tiny_model_path, monkeypatch):
    """The tokenizer loads while Ray starts (orchestrator/run.py); its error stops the Ray that started."""
    import shutil

    import ray

    from orchestrator import run

    assert not ray.is_initialized()
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(Path(tiny_model_path) / "config.json", model)
    started = []

    def start_ray(cluster):  # the real start, noting that Ray came up
        url = real_start(cluster)
        started.append(ray.is_initialized())
        return url

    real_start = run.start_ray
    monkeypatch.setattr(run, "start_ray", start_ray)
    cfg = compose_config("pipeline=sft", f"model.path={model}", f"output_dir={tmp_path / 'out'}", "cluster.num_cpus=1",
                         "cluster.dashboard=false")
    with pytest.raises(ConfigError, match=r"^model: the tokenizer in .* did not load"):
        run.RunContext(cfg, lambda c: ([], []))
    assert started == [True] and not ray.is_initialized()
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sigterm_stops_the_driver_with_one_line_and_status_143():
    import signal
    import subprocess
    import sys

    script = ("import time\nfrom orchestrator.runtime import start_ray\nfrom tests.conftest import compose_config\n"
              "start_ray(compose_config('cluster.num_cpus=1').cluster)\n"
              "try:\n    print('up', flush=True)\n    time.sleep(120)\nfinally:\n    print('cleanup ran', flush=True)\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]  # was 134: Ray's handler aborted with a stack dump
    assert "cleanup ran" in out and "tether: stopped by SIGTERM" in err and "SIGTERM received" not in err


@pytest.mark.slow
def test_a_stopped_run_says_where_it_stopped_and_how_to_resume(tmp_path):
    """SIGTERM (`launch.sh stop`, `kill`) during a run: exit 143 and one line naming the last step
    logged and the resume command (from the newest checkpoint)."""
    import json
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "pipeline=sft", "trainer.max_steps=500",
                             "trainer.save_steps=1", "logger.progress_bar=false", "logger.wandb=false",
                             f"output_dir={out}"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    logged = len((out / "metrics.jsonl").read_text().splitlines())
    stop = [line for line in err.splitlines() if line.startswith("tether: stopped at step")]
    assert len(stop) == 1, err[-2000:]
    # the newest published checkpoint (a step folder without COMPLETE is one the stop interrupted)
    published = [f for f in sorted((out / "checkpoints").glob("step_*")) if (f / "COMPLETE").is_file()]
    saved = json.loads(published[-1].joinpath("state.json").read_text())["step"]
    assert stop[0] == (f"tether: stopped at step {logged}; resume with resume=auto output_dir={out} "
                       f"(from step {saved})"), stop[0]
