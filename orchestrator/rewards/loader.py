"""Load a reward function named ``path/to/file.py:name`` (only from the path the config names), and
check what it returns.

Importing the file is bounded in time (``reward.import_timeout_s``): the import runs in a daemon
thread, so a file that blocks at import (a sleep, a network call) fails with one line instead of
hanging the caller, and the stuck thread never keeps the process from exiting. The driver's input
check (:func:`check_reward_file`) imports it in a forked child instead, so a file that ends the
process at import (``os._exit``, a crash) fails with one line rather than ending the run silently.
"""

from __future__ import annotations

import importlib.util
import math
import multiprocessing
import numbers
import signal
import threading
from pathlib import Path
from typing import Any, Callable

from orchestrator.errors import ConfigError, RewardError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_IMPORT_TIMEOUT_S = 60.0


def resolve_file(path: str) -> Path:
    """A relative path is taken from the current directory, else from the project root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    alt = PROJECT_ROOT / p
    return alt if alt.exists() else p


def _import_bounded(path: Path, spec: str, timeout_s: float):
    """The module at ``path``, executed in a daemon thread that may take at most ``timeout_s``."""
    module_name = f"tether_reward_{abs(hash(str(path)))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loader_spec)
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            loader_spec.loader.exec_module(module)
        except BaseException as exc:  # noqa: BLE001 (user code: reported on one line below)
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=f"import {path.name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise ConfigError(f"reward.function={spec!r}: importing {path} did not finish within {timeout_s:g}s "
                          "(reward.import_timeout_s); does the file block at import?")
    exc = outcome.get("error")
    if exc is not None:
        detail = (str(exc).splitlines() or [""])[0]
        raise ConfigError(f"reward.function={spec!r}: importing {path.name} failed: {type(exc).__name__}: {detail}") from exc
    return module


def _resolve_spec(spec: str) -> tuple[Path, str]:
    """``(file, function name)`` of ``FILE.py:NAME``; ConfigError unless the file exists."""
    if ":" not in spec:
        raise ConfigError(f"reward.function={spec!r} must look like path/to/file.py:function_name")
    file_part, name = spec.rsplit(":", 1)
    path = resolve_file(file_part)
    if not path.is_file():
        raise ConfigError(f"reward.function={spec!r}: no such file: {file_part}")
    return path, name


def load_reward_function(spec: str, timeout_s: float = DEFAULT_IMPORT_TIMEOUT_S) -> Callable:
    """Import ``FILE.py:NAME`` (waiting at most ``timeout_s``) and return the callable; ConfigError on
    any problem."""
    path, name = _resolve_spec(spec)
    module = _import_bounded(path, spec, timeout_s)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"reward.function={spec!r}: {path.name} has no function named {name!r}")
    return fn


def _check_in_child(spec: str, conn) -> None:
    """In the forked child: import the file and send back "ok" or the one-line error."""
    try:
        load_reward_function(spec, timeout_s=10**9)  # the parent bounds the time
        conn.send("ok")
    except BaseException as exc:  # noqa: BLE001 (user code, SystemExit included: reported by the parent)
        conn.send(str(exc).splitlines()[0] if isinstance(exc, ConfigError) else
                  f"reward.function={spec!r}: importing failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
    conn.close()


def check_reward_file(spec: str, timeout_s: float = DEFAULT_IMPORT_TIMEOUT_S) -> None:
    """Check that ``FILE.py:NAME`` imports and names a function, importing it in a forked child
    process (nothing is imported again) bounded by ``timeout_s``: a file that exits, crashes, raises
    or blocks at import is a one-line ConfigError naming the file and what happened."""
    path, _ = _resolve_spec(spec)
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_check_in_child, args=(spec, send), name=f"import {path.name}")
    child.start()
    send.close()
    try:
        if not receive.poll(timeout_s):
            raise ConfigError(f"reward.function={spec!r}: importing {path} did not finish within {timeout_s:g}s "
                              "(reward.import_timeout_s); does the file block at import?")
        try:
            answer = receive.recv()
        except EOFError:  # the child ended without a word
            child.join(5)
            code = child.exitcode
            how = (f"was killed by signal {-code} ({signal.Signals(-code).name})" if code is not None and code < 0
                   else f"exited with status {code}" if code is not None else "closed its pipe")
            raise ConfigError(f"reward.function={spec!r}: the process importing {path} {how} before the import "
                              "finished; does the file call os._exit/sys.exit or crash at import?") from None
        if answer != "ok":
            raise ConfigError(answer)
    finally:
        receive.close()
        if child.is_alive():
            child.kill()
        child.join(5)


def _is_real(x: Any) -> bool:
    """A real number (Python, numpy or 0-d torch), not a bool, string or bytes."""
    if isinstance(x, (bool, str, bytes)) or type(x).__name__ == "bool_":
        return False
    return isinstance(x, numbers.Real)


def check_scores(scores: Any, n: int, who: str) -> list[float]:
    """``scores`` as a list of ``n`` finite floats, or RewardError naming ``who`` and what was wrong.

    Accepted: a list or tuple of real numbers (int, float, numpy numbers), or a 1-D numpy array or
    torch tensor of a real dtype. Refused: dicts, sets, strings, bools, nested sequences, the wrong
    length, NaN and infinities.
    """
    kind = type(scores).__name__
    if hasattr(scores, "tolist") and hasattr(scores, "ndim") and hasattr(scores, "dtype"):  # numpy / torch
        if scores.ndim != 1:
            raise RewardError(f"{who} must return a list of numbers (one per response), got a {scores.ndim}-D {kind}")
        dtype = str(scores.dtype)
        if "bool" in dtype or "complex" in dtype or not any(t in dtype for t in ("int", "float")):
            raise RewardError(f"{who} must return a list of numbers (one per response), got a {kind} of dtype {dtype}")
        scores = scores.tolist()
    elif not isinstance(scores, (list, tuple)):
        raise RewardError(f"{who} must return a list of numbers (one per response), got {kind}")
    if len(scores) != n:
        raise RewardError(f"{who} returned {len(scores)} scores for {n} responses")
    for i, s in enumerate(scores):
        if not _is_real(s):
            raise RewardError(f"{who} must return a list of numbers (one per response), got a "
                              f"{type(s).__name__} at index {i}: {s!r:.40}")
    values = [float(s) for s in scores]
    bad = [i for i, s in enumerate(values) if not math.isfinite(s)]
    if bad:
        raise RewardError(f"{who} returned a non-finite score ({values[bad[0]]}) at index {bad[0]}")
    return values


def call_reward_function(fn: Callable, spec: str, prompts: list[str], responses: list[str]) -> list[float]:
    """Call a reward function and check it returned one finite real number per response."""
    try:
        scores = fn(prompts, responses)
    except Exception as exc:
        detail = (str(exc).splitlines() or [""])[0]
        raise RewardError(f"reward function {spec} raised {type(exc).__name__}: {detail}") from exc
    return check_scores(scores, len(responses), f"reward function {spec}")
