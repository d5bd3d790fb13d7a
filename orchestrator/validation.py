"""Config checks that run before anything starts: ranges, choices, and each pipeline's own rules.

``validate(cfg)`` raises a one-line :class:`ConfigError` naming the field (and the allowed range or
the valid choices). Ranges live in the schema (``bounded`` fields of ``orchestrator/config.py``);
the rules that tie fields together live here, one function per pipeline (``PIPELINE_CHECKS``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

from omegaconf import OmegaConf

from orchestrator.config import PreferenceAlgorithmConfig, RLAlgorithmConfig, TetherConfig
from orchestrator.errors import ConfigError

# which algorithm schema a pipeline takes (None: no algorithm section)
ALGORITHM_KIND = {"rlhf": "rl", "dpo": "preference", "rm": None, "sft": None, "cai": None, "redteam": None, "eval": None,
                  "collect": None}
ROLES = {"rollout", "reward", "reference", "policy", "critic"}


def _choice(field_name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{field_name}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}")


def describe_range(limits: dict) -> str:
    """``{"ge": 0, "lt": 0.5}`` -> ``in [0, 0.5)``; ``{"gt": 0}`` -> ``> 0``."""
    low = ("[", limits["ge"]) if "ge" in limits else ("(", limits["gt"]) if "gt" in limits else None
    high = ("]", limits["le"]) if "le" in limits else (")", limits["lt"]) if "lt" in limits else None
    if low and high:
        return f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]:g}"
    return f"{'<=' if high[0] == ']' else '<'} {high[1]:g}"


def in_range(value, limits: dict) -> bool:
    """Whether ``value`` satisfies every limit of ``limits`` (None always does)."""
    if value is None:
        return True
    return ((limits.get("gt") is None or value > limits["gt"]) and (limits.get("ge") is None or value >= limits["ge"])
            and (limits.get("lt") is None or value < limits["lt"]) and (limits.get("le") is None or value <= limits["le"]))


def _bounded_fields(schema, prefix: str):
    """``(dotted name, limits)`` of every ``bounded`` field of a dataclass schema, nested ones included."""
    for f in dataclasses.fields(schema):
        name = f"{prefix}{f.name}"
        if "range" in f.metadata:
            yield name, f.metadata["range"]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            yield from _bounded_fields(type(default), f"{name}.")


def algorithm_kind(algorithm) -> str | None:
    """``rl`` / ``preference`` / None for an ``algorithm`` section (typed or plain)."""
    if algorithm is None:
        return None
    return "rl" if "estimator" in algorithm else "preference" if "preference_loss" in algorithm else "unknown"


def check_ranges(cfg) -> None:
    """Every bounded field of the schema (and of the chosen algorithm schema) is in its range."""
    schemas = [(TetherConfig, "")]
    kind = algorithm_kind(cfg.algorithm)
    if kind in ("rl", "preference"):
        schemas.append((RLAlgorithmConfig if kind == "rl" else PreferenceAlgorithmConfig, "algorithm."))
    for schema, prefix in schemas:
        for name, limits in _bounded_fields(schema, prefix):
            value = OmegaConf.select(cfg, name, default=None)
            if not in_range(value, limits):
                raise ConfigError(f"{name}={value!r} is out of range: it must be {describe_range(limits)}")


def check_algorithm(cfg) -> None:
    """The algorithm section is of the kind the pipeline takes (``pipeline=rlhf algorithm=dpo`` fails)."""
    wanted, got = ALGORITHM_KIND[cfg.pipeline], algorithm_kind(cfg.algorithm)
    if wanted == got:
        return
    name = cfg.algorithm.get("name", "?") if cfg.algorithm is not None else None
    takes = (f"algorithm={'|'.join(cfg.pipeline_algorithms)}" if cfg.pipeline_algorithms
             else "no algorithm (drop the algorithm= override)")
    raise ConfigError(f"pipeline={cfg.pipeline} takes {takes}; got algorithm={name}")


def validate(cfg) -> None:
    """Check everything the schema's types cannot; raise ConfigError naming the field."""
    from orchestrator.pipelines import PIPELINES

    _choice("pipeline", cfg.pipeline, sorted(PIPELINES))
    check_algorithm(cfg)
    check_ranges(cfg)
    _choice("device", cfg.device, ["cpu", "cuda"])
    if not str(cfg.output_dir).strip():  # Path("") is the current folder: the run would write (and overwrite) there
        raise ConfigError("output_dir is empty; name the folder the run writes to (output_dir=outputs/NAME)")
    if "://" in str(cfg.output_dir):  # the lock, metrics and trackers need a POSIX folder on the driver's node
        raise ConfigError(f"output_dir={cfg.output_dir!r} is a URI; output_dir is a folder on the driver's node: put "
                          f"checkpoints and final/ there with storage={cfg.output_dir!r} and keep output_dir a folder")
    try:
        Path(cfg.output_dir).expanduser().resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop
        raise ConfigError(f"output_dir={cfg.output_dir!r}: {exc}") from None
    from orchestrator import storage

    if cfg.get("storage") is not None:
        if not str(cfg.storage).strip():
            raise ConfigError("storage is empty; name a folder or a bucket URI (storage=s3://BUCKET/PREFIX), or null")
        storage.check(cfg.storage, "storage")
    if cfg.resume not in (None, "auto"):
        from orchestrator.checkpoint import problem

        storage.check(cfg.resume, "resume")
        why = problem(storage.resolve(cfg.resume), hashes=False)  # the ranks check the rest when they load
        if why:
            raise ConfigError(f"resume={cfg.resume!r}: not a usable checkpoint: {why}")
    _choice("model.dtype", cfg.model.dtype, ["float32", "bfloat16", "float16"])
    _choice("rollout.backend", cfg.rollout.backend, ["vllm", "hf"])
    _choice("trainer.zero_stage", cfg.trainer.zero_stage, [0, 1, 2, 3])
    _choice("cluster.placement_strategy", cfg.cluster.placement_strategy,
            ["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"])
    t = cfg.trainer
    if t.mini_batch_size % t.num_ranks:
        raise ConfigError(f"trainer.mini_batch_size={t.mini_batch_size} must be a multiple of trainer.num_ranks={t.num_ranks}")
    per_rank_mini = t.mini_batch_size // t.num_ranks
    if per_rank_mini % min(t.micro_batch_size, per_rank_mini):
        raise ConfigError(f"trainer.micro_batch_size={t.micro_batch_size} must divide the per-rank "
                          f"mini-batch (mini_batch_size / num_ranks = {per_rank_mini})")
    PIPELINE_CHECKS[cfg.pipeline](cfg)
    if cfg.pipeline != "eval" and cfg.get("eval") is not None and cfg.eval.suite is not None:
        from orchestrator.evals.gate import check_eval_config

        check_eval_config(cfg)  # the suite that runs after the last step


def check_offline(cfg) -> None:
    """dpo / rm / sft (and cai's SFT stage): data lengths."""
    _choice("data.overlong", cfg.data.overlong, ["truncate", "drop"])
    if cfg.data.max_prompt_tokens >= cfg.data.max_length and cfg.pipeline != "rm":
        raise ConfigError(f"data.max_prompt_tokens={cfg.data.max_prompt_tokens} must be < data.max_length="
                          f"{cfg.data.max_length} (room is needed for the response)")


def check_dpo(cfg) -> None:
    """pipeline=dpo: the preference loss and how reference log-probs are computed."""
    from orchestrator.algorithms import PREFERENCE_LOSSES

    check_offline(cfg)
    PREFERENCE_LOSSES.get(cfg.algorithm.preference_loss)
    _choice("algorithm.reference_mode", cfg.algorithm.reference_mode, ["online", "overlap", "precompute"])


def check_rollout(cfg) -> None:
    """Pipelines that sample from rollout engines: the engine exists and the lengths fit it."""
    r = cfg.rollout
    if r.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError("rollout.backend=vllm but vLLM is not installed: install '.[cpu]' or '.[gpu]', or use rollout=hf")
    if cfg.device == "cuda" and r.backend == "vllm" and r.num_gpus < r.tensor_parallel_size:
        raise ConfigError(f"rollout.num_gpus={r.num_gpus:g} must be >= rollout.tensor_parallel_size="
                          f"{r.tensor_parallel_size} (each engine's GPUs are its actor's)")
    if cfg.data.max_prompt_tokens + r.max_new_tokens > r.max_model_len:
        raise ConfigError(f"data.max_prompt_tokens + rollout.max_new_tokens = {cfg.data.max_prompt_tokens + r.max_new_tokens} "
                          f"must be <= rollout.max_model_len={r.max_model_len} (the engine would cut responses short)")


def check_cai(cfg) -> None:
    """pipeline=cai: SFT on revisions (offline checks) with generation on the rollout engines."""
    check_offline(cfg)
    _choice("cai.then", cfg.cai.then, [None, "dpo"])
    check_rollout(cfg)


def check_rlhf(cfg) -> None:
    """pipeline=rlhf: registries, group sizes, KL settings, roles and the reward source."""
    from orchestrator.algorithms import ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, POLICY_LOSSES

    a = cfg.algorithm
    ADVANTAGE_ESTIMATORS.get(a.estimator)
    KL_ESTIMATORS.get(a.kl_estimator)
    POLICY_LOSSES.get(a.policy_loss)
    _choice("algorithm.kl_mode", a.kl_mode, ["reward", "loss"])
    if a.kl_mode == "loss" and a.kl_estimator == "k1":
        raise ConfigError("algorithm.kl_mode=loss with algorithm.kl_estimator=k1 anchors nothing (the expected gradient "
                          "of k1 on the policy's own samples is zero); use kl_estimator=k2 (gradient of KL(pi||ref)) or "
                          "k3 (gradient of KL(ref||pi), as GRPO uses it), or kl_mode=reward")
    check_rollout(cfg)
    if cfg.rollout.asynchronous and cfg.rollout.backend != "vllm":
        raise ConfigError("rollout.asynchronous=true needs rollout.backend=vllm (the ratio is taken against the "
                          "engine's own sampling log-probs, which the hf backend does not return)")
    if a.estimator in ("grpo", "rloo") and a.n_samples < 2:
        raise ConfigError(f"algorithm.n_samples={a.n_samples} must be >= 2 for algorithm.estimator={a.estimator} "
                          "(it compares samples of one prompt)")
    samples = cfg.trainer.rollout_batch_size * a.n_samples
    if samples % cfg.trainer.mini_batch_size:
        raise ConfigError(f"trainer.mini_batch_size={cfg.trainer.mini_batch_size} must divide "
                          f"rollout_batch_size*n_samples={samples}")
    for group in cfg.cluster.colocate:
        unknown = [r for r in group if r not in ROLES]
        if unknown:
            raise ConfigError(f"cluster.colocate: unknown role {unknown[0]!r}; roles are: {', '.join(sorted(ROLES))}")
    for role, asks in cfg.cluster.role_resources.items():
        for name, amount in asks.items():
            where = f"cluster.role_resources.{role}.{name}={amount:g}"
            if name in ("CPU", "GPU"):
                raise ConfigError(f"{where}: set CPUs / GPUs with the role's num_cpus / num_gpus, not here")
            if amount <= 0 or (amount > 1 and amount != int(amount)):
                raise ConfigError(f"{where} must be > 0, and a whole number when above 1 (Ray's rule)")
    rw = cfg.reward
    if rw.function is None and rw.model_path is None and rw.remote_url is None:
        raise ConfigError("reward: set reward.function=FILE.py:NAME, reward.model_path=DIR or reward.remote_url=URL "
                          "(all are null)")
    if rw.remote_url:
        from orchestrator.rewards.remote import check_remote_config

        check_remote_config(rw.remote_url, os.environ.get(rw.remote_token_env), rw.remote_token_env)


def check_collect(cfg) -> None:
    """pipeline=collect: annotators, overlap, selection, the model folders, the database URL."""
    import re

    c = cfg.collect
    _choice("collect.selection", c.selection, ["order", "uncertainty"])
    names = list(c.annotators)
    if not names:
        raise ConfigError("collect.annotators is empty; name at least one annotator, e.g. collect.annotators=[alice]")
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", str(n))]
    if bad:
        raise ConfigError(f"collect.annotators: {bad[0]!r} is not a valid name (letters, digits, _ . -; at most 64)")
    if len(set(names)) != len(names):
        raise ConfigError("collect.annotators names an annotator twice")
    if c.overlap > len(names):
        raise ConfigError(f"collect.overlap={c.overlap} must be <= the number of collect.annotators ({len(names)})")
    if not str(c.host).strip():
        raise ConfigError("collect.host is empty; use 127.0.0.1 (this machine) or 0.0.0.0 (the network)")
    if c.selection == "uncertainty" and not c.reward_model_path:
        raise ConfigError("collect.selection=uncertainty needs collect.reward_model_path (a reward model folder)")
    for name in ("model_b_path", "reward_model_path"):
        path = c.get(name)
        if path and not (Path(path).expanduser() / "config.json").is_file():
            raise ConfigError(f"collect.{name}={path!r}: not a model folder (no config.json)")
    if c.database_url:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(c.database_url)
        except ArgumentError:
            raise ConfigError("collect.database_url is not a SQLAlchemy URL (dialect://user@host/db)") from None
    if not c.pairs_path:
        check_rollout(cfg)


def check_redteam(cfg) -> None:
    """pipeline=redteam: generation on the rollout engines, the judge's form (orchestrator/redteam/judges.py)."""
    from orchestrator.redteam.judges import judge_kind

    check_rollout(cfg)
    judge_kind(cfg.redteam.judge)
    if cfg.redteam.retrain:
        check_offline(cfg)


def check_eval(cfg) -> None:
    """pipeline=eval: a suite, its tolerance, and what its red-team part needs."""
    from orchestrator.evals.gate import check_eval_config

    check_redteam(cfg)
    check_eval_config(cfg)


PIPELINE_CHECKS = {"rlhf": check_rlhf, "dpo": check_dpo, "rm": check_offline, "sft": check_offline, "cai": check_cai,
                   "redteam": check_redteam, "eval": check_eval, "collect": check_collect}
