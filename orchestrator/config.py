"""Structured config schema (Hydra ConfigStore). YAML in ``conf/`` only chooses and overrides.

Every field is type-checked by OmegaConf when Hydra composes the config; ``validate`` checks the
values whose valid set is only known at run time (registries) and raises a one-line
:class:`ConfigError` naming the field and the valid choices.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import List, Optional

from hydra.core.config_store import ConfigStore

from orchestrator.errors import ConfigError


@dataclass
class TinyModelConfig:
    """Shape of the tiny random Llama built when ``model.path`` is null (no download)."""

    vocab_size: int = 512  # BPE vocabulary trained on the shipped prompts
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 2  # head_dim = hidden_size / num_heads (64 here; vLLM CPU needs >= 32)
    max_positions: int = 512
    seed: int = 0  # weight-init seed of the tiny model


@dataclass
class ModelConfig:
    """The policy's initial weights; the reference and critic start from the same folder."""

    name: str = "tiny"  # label for logs
    path: Optional[str] = None  # local HF folder; null builds the tiny model
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    dtype: str = "float32"  # float32 | bfloat16 | float16: trainer compute dtype and engine dtype
    trust_remote_code: bool = False  # allow model code shipped inside the folder


@dataclass
class DataConfig:
    """Prompt data for the RLHF pipeline."""

    path: str = "orchestrator/assets/prompts/tiny.jsonl"  # JSONL / JSON / parquet / dataset dir / HF name
    eval_path: Optional[str] = None  # held-out prompts, scored every ``trainer.eval_every`` steps
    prompt_key: str = "prompt"  # column holding a string or a list of chat messages
    split: str = "train"  # split for HF dataset names
    max_prompt_tokens: int = 128  # longer prompts are truncated from the left


@dataclass
class RolloutConfig:
    """Rollout generation: vLLM engines or transformers ``generate``."""

    backend: str = "vllm"  # vllm | hf
    num_workers: int = 1  # rollout actors; a step's prompts are split between them
    num_cpus: float = 0.5  # CPUs per rollout actor
    num_gpus: float = 0.0  # GPUs per rollout actor
    max_new_tokens: int = 16  # response length bound
    temperature: float = 1.0  # sampling temperature (> 0); training log-probs use the same temperature
    top_p: float = 1.0
    max_model_len: int = 512  # vLLM context length
    gpu_memory_utilization: float = 0.5  # vLLM, GPU only
    kv_cache_gib: float = 1.0  # vLLM, CPU only (VLLM_CPU_KVCACHE_SPACE)
    tensor_parallel_size: int = 1  # vLLM, GPU only
    enforce_eager: bool = True  # vLLM: skip graph capture / compilation (fast start)


@dataclass
class RewardConfig:
    """Reward: a Python function, a sequence-classification model, a remote server, or a weighted sum."""

    function: Optional[str] = "orchestrator/rewards/examples.py:letter_frequency"  # FILE.py:NAME or null
    function_weight: float = 1.0
    model_path: Optional[str] = None  # local HF sequence-classification folder, or null
    model_weight: float = 1.0
    remote_url: Optional[str] = None  # http(s)://HOST:PORT/score of a reward server, or null
    remote_weight: float = 1.0
    remote_token_env: str = "TETHER_REWARD_TOKEN"  # variable holding the server's bearer token (required)
    remote_timeout_s: float = 60.0
    num_cpus: float = 0.25
    num_gpus: float = 0.0
    batch_size: int = 32  # reward-model forward batch


@dataclass
class ReferenceConfig:
    """Frozen copy of the initial policy, giving per-token log-probs for the KL term."""

    num_cpus: float = 0.25
    num_gpus: float = 0.0
    batch_size: int = 16  # forward micro-batch


@dataclass
class AlgorithmConfig:
    """RL algorithm: advantage estimator, losses and KL handling (see orchestrator/algorithms)."""

    name: str = "ppo"  # label for logs
    estimator: str = "gae"  # gae | grpo | rloo | reinforce_pp (gae trains a critic)
    policy_loss: str = "ppo"  # clipped surrogate
    n_samples: int = 1  # responses per prompt (group size for grpo / rloo, >= 2 there)
    clip_eps: float = 0.2  # policy ratio clip
    value_clip_eps: float = 0.2  # critic value clip
    entropy_coef: float = 0.0  # entropy bonus weight
    gamma: float = 1.0
    lam: float = 0.95  # GAE lambda
    whiten_advantages: bool = True  # normalise gae advantages over the batch
    kl_estimator: str = "k1"  # k1 | k2 | k3
    kl_mode: str = "reward"  # reward (per-token penalty) | loss (term in the policy loss)
    kl_coef: float = 0.05  # initial KL coefficient
    kl_target: Optional[float] = None  # adaptive controller target; null = fixed coefficient
    kl_horizon: int = 10000  # adaptive controller horizon (samples)
    ppo_epochs: int = 1  # passes over each rollout batch


@dataclass
class TrainerConfig:
    """Policy (and critic) training: DeepSpeed ZeRO ranks as Ray actors."""

    num_ranks: int = 1  # data-parallel ranks of the policy group (the critic uses the same)
    num_cpus: float = 0.25  # CPUs per rank
    num_gpus: float = 0.0  # GPUs per rank
    zero_stage: int = 0  # 0 | 1 | 2 | 3
    lr: float = 1e-5
    critic_lr: float = 1e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_steps: int = 10  # RL steps (one rollout batch each)
    rollout_batch_size: int = 8  # prompts per step (x algorithm.n_samples responses)
    mini_batch_size: int = 8  # samples per optimizer step (across ranks)
    micro_batch_size: int = 8  # samples per forward on one rank
    lr_warmup_steps: int = 0  # linear learning-rate warm-up over this many optimizer steps (0: none)
    max_nonfinite_steps: int = 3  # stop after this many consecutive steps whose every update was non-finite
    save_steps: int = 0  # checkpoint every N steps (0: never); see orchestrator/checkpoint.py
    keep_checkpoints: int = 2  # newest checkpoints kept
    eval_every: int = 0  # score data.eval_path prompts every N steps (0: only after the last step)
    save_final: bool = True  # write <output_dir>/final in HF format
    dist_timeout_s: int = 300  # torch.distributed collective timeout


@dataclass
class ClusterConfig:
    """Where the actors run."""

    address: Optional[str] = None  # Ray address; null = $RAY_ADDRESS or a local Ray started here
    num_cpus: Optional[int] = None  # CPUs of the local Ray (null = all)
    placement_strategy: str = "PACK"  # PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    colocate: List[List[str]] = field(default_factory=list)  # role groups sharing bundles, e.g. [[reference, reward]]
    placement_timeout_s: float = 30.0  # fail if the placement group is not ready by then
    call_timeout_s: float = 600.0  # bound on any single remote call
    torch_threads: int = 1  # intra-op threads per actor on CPU
    max_restarts: int = 3  # Ray restarts of a dead rollout / reward actor (weights re-sent, call redone)
    dashboard: bool = False  # start the Ray dashboard with a local Ray (bound to 127.0.0.1)


@dataclass
class LoggerConfig:
    """Where metrics go: metrics.jsonl always, plus wandb and TensorBoard."""

    run_name: Optional[str] = None  # default: <pipeline>-<algorithm>-<timestamp>
    wandb: bool = True  # online when WANDB_API_KEY is set, offline otherwise
    wandb_project: str = "tether"
    wandb_group: Optional[str] = None
    tensorboard: bool = True
    progress_bar: bool = True  # tqdm bar over steps on the driver


@dataclass
class TetherConfig:
    """Top-level config; ``pipeline`` picks the driver loop."""

    pipeline: str = "rlhf"
    device: str = "cpu"  # cpu | cuda: where workers compute
    seed: int = 0  # seeds every random generator (python, numpy, torch, vLLM sampling)
    output_dir: str = "outputs/run"
    resume: Optional[str] = None  # auto: newest good checkpoint in output_dir (fresh if none) | a checkpoint dir
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def register_configs() -> None:
    """Register the schema so ``conf/config.yaml`` can extend it."""
    ConfigStore.instance().store(name="tether_schema", node=TetherConfig)


def _choice(field_name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{field_name}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}")


def _positive(cfg, names: list[str]) -> None:
    for name in names:
        section, key = name.split(".")
        if getattr(getattr(cfg, section), key) <= 0:
            raise ConfigError(f"{name}={getattr(getattr(cfg, section), key)!r} must be > 0")


def validate(cfg) -> None:
    """Check values that the schema's types cannot; raise ConfigError naming the field."""
    from orchestrator.algorithms import ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, POLICY_LOSSES
    from orchestrator.pipelines import PIPELINES

    _choice("pipeline", cfg.pipeline, sorted(PIPELINES))
    _choice("device", cfg.device, ["cpu", "cuda"])
    if cfg.resume not in (None, "auto"):
        from pathlib import Path

        from orchestrator.checkpoint import problem

        why = problem(Path(cfg.resume))
        if why:
            raise ConfigError(f"resume={cfg.resume!r}: not a usable checkpoint: {why}")
    _choice("model.dtype", cfg.model.dtype, ["float32", "bfloat16", "float16"])
    _choice("rollout.backend", cfg.rollout.backend, ["vllm", "hf"])
    _choice("trainer.zero_stage", cfg.trainer.zero_stage, [0, 1, 2, 3])
    _choice("algorithm.kl_mode", cfg.algorithm.kl_mode, ["reward", "loss"])
    _choice("cluster.placement_strategy", cfg.cluster.placement_strategy,
            ["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"])
    ADVANTAGE_ESTIMATORS.get(cfg.algorithm.estimator)
    KL_ESTIMATORS.get(cfg.algorithm.kl_estimator)
    POLICY_LOSSES.get(cfg.algorithm.policy_loss)
    _positive(cfg, ["trainer.max_steps", "trainer.rollout_batch_size", "trainer.mini_batch_size",
                    "trainer.micro_batch_size", "trainer.num_ranks", "rollout.num_workers",
                    "rollout.max_new_tokens", "rollout.temperature", "algorithm.n_samples", "algorithm.ppo_epochs"])
    if cfg.algorithm.estimator in ("grpo", "rloo") and cfg.algorithm.n_samples < 2:
        raise ConfigError(f"algorithm.n_samples={cfg.algorithm.n_samples} must be >= 2 for "
                          f"algorithm.estimator={cfg.algorithm.estimator} (it compares samples of one prompt)")
    samples = cfg.trainer.rollout_batch_size * cfg.algorithm.n_samples
    if samples % cfg.trainer.mini_batch_size:
        raise ConfigError(f"trainer.mini_batch_size={cfg.trainer.mini_batch_size} must divide "
                          f"rollout_batch_size*n_samples={samples}")
    if cfg.trainer.mini_batch_size % cfg.trainer.num_ranks:
        raise ConfigError(f"trainer.mini_batch_size={cfg.trainer.mini_batch_size} must be a multiple of "
                          f"trainer.num_ranks={cfg.trainer.num_ranks}")
    roles = {"rollout", "reward", "reference", "policy", "critic"}
    for group in cfg.cluster.colocate:
        unknown = [r for r in group if r not in roles]
        if unknown:
            raise ConfigError(f"cluster.colocate: unknown role {unknown[0]!r}; roles are: {', '.join(sorted(roles))}")
    if cfg.rollout.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError("rollout.backend=vllm but vLLM is not installed: install '.[cpu]' or '.[gpu]', or use rollout=hf")
    per_rank_mini = cfg.trainer.mini_batch_size // cfg.trainer.num_ranks
    if per_rank_mini % min(cfg.trainer.micro_batch_size, per_rank_mini):
        raise ConfigError(f"trainer.micro_batch_size={cfg.trainer.micro_batch_size} must divide the per-rank "
                          f"mini-batch (mini_batch_size / num_ranks = {per_rank_mini})")
    if cfg.device == "cuda" and cfg.rollout.backend == "vllm" and cfg.rollout.num_gpus < cfg.rollout.tensor_parallel_size:
        raise ConfigError(f"rollout.num_gpus={cfg.rollout.num_gpus:g} must be >= rollout.tensor_parallel_size="
                          f"{cfg.rollout.tensor_parallel_size} (each engine's GPUs are its actor's)")
    if cfg.reward.function is None and cfg.reward.model_path is None and cfg.reward.remote_url is None:
        raise ConfigError("reward: set reward.function=FILE.py:NAME, reward.model_path=DIR or reward.remote_url=URL "
                          "(all are null)")
    if cfg.reward.remote_url:
        import os

        from orchestrator.rewards.remote import check_remote_config

        check_remote_config(cfg.reward.remote_url, os.environ.get(cfg.reward.remote_token_env), cfg.reward.remote_token_env)
