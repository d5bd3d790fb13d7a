"""What each worker role receives from the driver: one small typed spec per role.

The driver builds every spec from the run's config here (``*.of(cfg)``), so a worker never sees the
whole config and a field keeps its config name on the way (``data.max_length`` arrives as
``FeedbackSpec.max_length``). Specs are frozen dataclasses: plain data that Ray pickles to the actor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import OmegaConf


@dataclass(frozen=True)
class ProcessSpec:
    """How every actor's process is set up."""

    seed: int = 0  # seed
    device: str = "cpu"  # device
    dtype: str = "float32"  # model.dtype
    trust_remote_code: bool = False  # model.trust_remote_code
    torch_threads: int | None = None  # cluster.torch_threads (None: auto, orchestrator/threads.py)
    keep_freed_memory: bool = True  # cluster.keep_freed_memory (workers/common.py)

    @classmethod
    def of(cls, cfg) -> "ProcessSpec":
        c = cfg.cluster
        return cls(cfg.seed, cfg.device, cfg.model.dtype, cfg.model.trust_remote_code, c.torch_threads,
                   c.keep_freed_memory)


@dataclass(frozen=True)
class TrainerSpec:
    """A DeepSpeed rank (``workers/trainer.py``): the ``trainer`` section it trains with, its objective,
    and the ``algorithm`` section its objective reads (empty for sft / rm)."""

    process: ProcessSpec = field(default_factory=ProcessSpec)
    objective: str = "sft"  # ppo | value | dpo | reward_model | sft (workers/objectives.py)
    lr: float = 1e-5  # trainer.lr, or trainer.critic_lr for the critic
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    zero_stage: int = 0
    mini_batch_size: int = 8  # across ranks
    micro_batch_size: int = 8
    shuffle_groups: bool = True  # rows sharing a prompt stay together when shuffled into micro-batches
    lr_warmup_steps: int = 0
    dist_timeout_s: int = 300
    algorithm: dict = field(default_factory=dict)

    @classmethod
    def of(cls, cfg, objective: str) -> "TrainerSpec":
        t = cfg.trainer
        algorithm = OmegaConf.to_container(cfg.algorithm) if cfg.algorithm is not None else {}
        return cls(ProcessSpec.of(cfg), objective, t.critic_lr if objective == "value" else t.lr, t.weight_decay,
                   t.grad_clip, t.zero_stage, t.mini_batch_size, t.micro_batch_size, t.shuffle_groups, t.lr_warmup_steps,
                   t.dist_timeout_s, algorithm)


@dataclass(frozen=True)
class RolloutSpec:
    """A rollout engine (``workers/rollout.py``): the ``rollout`` section's engine and sampling fields."""

    process: ProcessSpec = field(default_factory=ProcessSpec)
    backend: str = "vllm"
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    max_model_len: int = 512
    gpu_memory_utilization: float = 0.5
    kv_cache_gib: float = 1.0
    tensor_parallel_size: int = 1
    enforce_eager: bool = True
    sampling_logprobs: bool = False  # return each sampled token's log-prob (rollout.asynchronous)

    @classmethod
    def of(cls, cfg) -> "RolloutSpec":
        r = cfg.rollout
        return cls(ProcessSpec.of(cfg), r.backend, r.max_new_tokens, r.temperature, r.top_p, r.max_model_len,
                   r.gpu_memory_utilization, r.kv_cache_gib, r.tensor_parallel_size, r.enforce_eager,
                   bool(r.get("asynchronous", False)) and cfg.pipeline == "rlhf")


@dataclass(frozen=True)
class RewardSpec:
    """The reward actor (``workers/reward.py``): the ``reward`` section's sources and weights; texts are
    cut to ``max_length`` tokens (``rollout.max_model_len``)."""

    process: ProcessSpec = field(default_factory=ProcessSpec)
    function: str | None = None
    function_weight: float = 1.0
    model_path: str | None = None
    model_weight: float = 1.0
    remote_url: str | None = None
    remote_weight: float = 1.0
    remote_token_env: str = "TETHER_REWARD_TOKEN"
    remote_timeout_s: float = 60.0
    import_timeout_s: float = 60.0
    batch_size: int = 32
    max_length: int = 512

    @classmethod
    def of(cls, cfg) -> "RewardSpec":
        w = cfg.reward
        return cls(ProcessSpec.of(cfg), w.function, w.function_weight, w.model_path, w.model_weight, w.remote_url,
                   w.remote_weight, w.remote_token_env, w.remote_timeout_s, w.import_timeout_s, w.batch_size,
                   cfg.rollout.max_model_len)


@dataclass(frozen=True)
class ForwardSpec:
    """A frozen model answering forward passes: the reference (``reference.batch_size``) or CAI's
    feedback model (``cai.feedback.batch_size``; questions cut to ``data.max_length`` tokens)."""

    process: ProcessSpec = field(default_factory=ProcessSpec)
    batch_size: int = 16
    max_length: int = 512

    @classmethod
    def reference(cls, cfg) -> "ForwardSpec":
        return cls(ProcessSpec.of(cfg), cfg.reference.batch_size, cfg.data.max_length)

    @classmethod
    def feedback(cls, cfg) -> "ForwardSpec":
        return cls(ProcessSpec.of(cfg), cfg.cai.feedback.batch_size, cfg.data.max_length)
