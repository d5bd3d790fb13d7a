"""TrainerRank: one DeepSpeed ZeRO rank of the policy or critic, as a Ray actor.

A group of ``num_ranks`` actors forms one torch.distributed world that the actors set up
themselves (MASTER_ADDR/PORT, RANK, WORLD_SIZE; gloo on CPU, NCCL on GPU). The driver gives each
rank an equal shard of the step's batch; each rank walks its shard in mini-batches (one optimizer
step each, gradients averaged across ranks by DeepSpeed) and micro-batches (gradient accumulation).
What a rank minimises is its ``objective`` (``workers/objectives.py``): ``ppo`` (RLHF policy), ``value``
(RLHF critic: ``AutoModelForTokenClassification`` with one label, a value per token), ``dpo``,
``reward_model`` (``AutoModelForSequenceClassification`` with one label) or ``sft``.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch

from orchestrator import quiet
from orchestrator.specs import TrainerSpec
from workers.common import (DTYPES, ThreadShare, batched_logprobs, device_for, disable_dropout, setup_process,
                            shuffled_order, split_batch, to_device)
from workers.objectives import OBJECTIVES, values
from workers.safe_torch_load import use_safe_loading


def warmup_schedule(warmup_steps: int):
    """``optimizer -> LambdaLR``: optimizer step k (1-based) uses lr * min(1, k / warmup_steps), so the
    first step already learns (lr / N) and step N reaches lr; constant after. DeepSpeed steps it after
    every optimizer step."""

    def make(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: min(1.0, (done + 1) / warmup_steps))

    return make


def deepspeed_config(spec: TrainerSpec, per_rank_mini: int) -> dict:
    """DeepSpeed config for one optimizer step per mini-batch of ``per_rank_mini`` rows per rank."""
    micro = min(spec.micro_batch_size, per_rank_mini)
    zero = {"stage": spec.zero_stage}
    if spec.zero_stage == 3:
        zero.update(stage3_param_persistence_threshold=0, stage3_prefetch_bucket_size=0)
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": max(1, per_rank_mini // micro),
        "gradient_clipping": spec.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": spec.process.dtype == "bfloat16"},
        "fp16": {"enabled": spec.process.dtype == "float16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def own_memory(model) -> None:
    """Give every parameter memory of this process's own. Loaded from safetensors on CPU, the weights can
    stay views of the mapped checkpoint file; the first optimizer step then writes into them and the kernel
    copies the file's pages one by one as they are written (SmolLM2-135M: a first ``step()`` of 1.1 s and
    2 s of kernel time instead of 0.05 s). One copy up front takes 0.13 s. Tied weights stay tied (one
    parameter object, new data)."""
    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.clone()


class TrainerRank(ThreadShare):
    """One rank of a policy or critic training group."""

    def __init__(self, role: str, model_path: str, spec: TrainerSpec, rank: int, world_size: int):
        self.alone_threads = setup_process(spec.process)
        self.role, self.model_path, self.spec, self.rank, self.world_size = role, model_path, spec, rank, world_size
        self.device = device_for(spec.process.device)

    def rendezvous_address(self) -> tuple[str, int]:
        """This node's IP and a free port (asked of rank 0 before ``setup``)."""
        import ray

        from workers.nccl_weight_sender import free_port

        return ray.util.get_node_ip_address(), free_port()

    def setup(self, address: tuple[str, int]) -> int:
        """Join the process group at rank 0's ``(ip, port)`` and build the DeepSpeed engine (all ranks
        call this together)."""
        (master_addr, master_port), spec, rank = address, self.spec, self.rank
        local_rank = str(torch.cuda.current_device()) if spec.process.device == "cuda" else "0"
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK=local_rank)
        import deepspeed

        with quiet.hide_prints():  # DeepSpeed prints that its shm op was built
            deepspeed.init_distributed(dist_backend="nccl" if spec.process.device == "cuda" else "gloo",
                                       timeout=timedelta(seconds=spec.dist_timeout_s))
        self._share_node_cpus()
        self.per_rank_mini = spec.mini_batch_size // self.world_size
        lr = spec.lr
        ds_config = deepspeed_config(spec, self.per_rank_mini)
        if spec.zero_stage == 3:  # must exist before the model is built, or HF init is skipped
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds = HfDeepSpeedConfig(ds_config)
        model = self._build_model(self.model_path)
        if spec.process.device == "cpu" and spec.zero_stage < 3:  # ZeRO-3 has copied its partitions already
            own_memory(model)
        # the fused kernel (CPU and CUDA) updates all tensors in one pass: 0.04 s instead of 0.15 s a step on
        # SmolLM2-135M, 2 cores; the HF Trainer's default (adamw_torch_fused) too
        optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=spec.weight_decay, fused=True)
        schedule = warmup_schedule(spec.lr_warmup_steps) if spec.lr_warmup_steps > 0 else None
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optim, config=ds_config,
                                                                 lr_scheduler=schedule)
        use_safe_loading(self.engine)  # checkpoint files are read with torch.load(weights_only=True)
        return rank

    def _share_node_cpus(self) -> None:
        """With auto threads on CPU, the ranks of this group on one node split its CPUs (they compute at
        the same time); the node of every rank is learnt with one all-gather."""
        if self.spec.process.torch_threads or self.spec.process.device != "cpu":
            return
        import torch.distributed as dist

        nodes: list = [None] * self.world_size
        me = self.node_cpus()
        dist.all_gather_object(nodes, me[0])
        self.alone_threads = self.use_threads(max(1, me[1] // nodes.count(me[0])))

    def _build_model(self, path: str):
        from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                                  AutoModelForTokenClassification)

        kwargs = dict(dtype=DTYPES[self.spec.process.dtype], use_safetensors=True,
                      trust_remote_code=self.spec.process.trust_remote_code)
        heads = {"value": AutoModelForTokenClassification, "reward_model": AutoModelForSequenceClassification}
        objective = self.spec.objective
        if objective in heads:
            from transformers import AutoTokenizer

            from orchestrator.batching import pad_token_id

            model = heads[objective].from_pretrained(path, num_labels=1, **kwargs)
            # batches are padded with this id; a sequence-classification head scores the last other token
            model.config.pad_token_id = pad_token_id(AutoTokenizer.from_pretrained(path))
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        return disable_dropout(model)  # RL ratios and value targets assume a deterministic forward

    # ---- forward-only calls -------------------------------------------------------------
    def logprobs(self, batch: dict) -> torch.Tensor:
        """Policy log-probs ``[B, T]`` of this rank's shard (the "old" log-probs of PPO)."""
        self.engine.eval()
        return batched_logprobs(self.engine.module, batch, self.spec.micro_batch_size)

    @torch.no_grad()
    def values(self, batch: dict) -> torch.Tensor:
        """Critic values ``[B, T]`` for this rank's shard."""
        self.engine.eval()
        parts = []
        for chunk in split_batch(batch, self.spec.micro_batch_size):
            parts.append((values(self.engine, to_device(chunk, self.device)) * chunk["response_mask"].to(self.device)).cpu())
        return torch.cat(parts)

    @torch.no_grad()
    def evaluate(self, batch: dict) -> dict:
        """The objective's stats on this rank's shard without training: ``{"sums": {name: sum of stat x
        weight}, "weight": total weight}`` (weights: rows, or tokens for sft)."""
        self.engine.eval()
        sums: dict[str, float] = {}
        total = 0.0
        for chunk in split_batch(batch, self.spec.micro_batch_size):
            _, stats = OBJECTIVES[self.spec.objective](self.engine, to_device(chunk, self.device), self.spec.algorithm)
            weight = stats.pop("weight", float(chunk["input_ids"].shape[0]))
            total += weight
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v * weight
        return {"sums": sums, "weight": total}

    # ---- training -------------------------------------------------------------------------
    def train(self, batch: dict, epochs: int, seed: int) -> dict[str, float]:
        """Run ``epochs`` passes of mini-batch updates over this rank's shard; returns mean metrics.

        One update = one mini-batch = ``gas`` micro-batches whose gradients accumulate; the
        accumulation boundary is set explicitly for each micro-batch. If the loss of any
        micro-batch (any ZeRO stage), or the reduced gradient (ZeRO-0, where it is whole), is not
        finite on any rank, every rank drops that update: its gradients are cleared and no
        optimizer step is taken. ``nonfinite_skips`` and ``updates`` count them.
        """
        self.engine.train()
        sums: dict[str, float] = {}
        count = skipped = updates = 0
        gen = torch.Generator().manual_seed(seed)
        n = batch["input_ids"].shape[0]
        micro = min(self.spec.micro_batch_size, self.per_rank_mini)
        gas = max(1, self.per_rank_mini // micro)
        for _ in range(epochs):
            order = shuffled_order(batch, gen, self.spec.shuffle_groups)
            shuffled = {k: (v[order] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            chunks = split_batch(shuffled, micro)
            for start in range(0, len(chunks), gas):
                window, window_stats, ok = chunks[start : start + gas], [], True
                updates += 1
                for j, chunk in enumerate(window):
                    chunk = to_device(chunk, self.device)
                    self.engine.set_gradient_accumulation_boundary(j == len(window) - 1)
                    loss, stats = OBJECTIVES[self.spec.objective](self.engine, chunk, self.spec.algorithm)
                    stats.pop("weight", None)
                    if self._any_rank(not torch.isfinite(loss).item()):
                        ok = False
                        break
                    self.engine.backward(loss)
                    window_stats.append({**stats, "loss": float(loss.detach())})
                if ok and self._any_rank(not self._grads_finite()):
                    ok = False
                if not ok:
                    self.engine.optimizer.zero_grad()
                    self.engine.zero_grad()
                    skipped += 1
                    continue
                lr = self.engine.get_lr()[0]  # the rate this update uses (the schedule moves after the step)
                self.engine.step()
                norm = self.engine.get_global_grad_norm()
                for stats in window_stats:
                    stats["lr"] = lr
                    if norm is not None:
                        stats["grad_norm"] = float(norm)
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0.0) + v
                    count += 1
        out = {k: v / count for k, v in sums.items()} if count else {"loss": float("nan")}
        return {**out, "nonfinite_skips": skipped, "updates": updates}

    def _any_rank(self, flag: bool) -> bool:
        """True if ``flag`` is true on any rank (all ranks must call this together)."""
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def _grads_finite(self) -> bool:
        """Whether this rank's gradients are finite where they are whole (ZeRO-0, not fp16: DeepSpeed's
        loss scaler handles fp16 overflow); other set-ups answer True and rely on the loss check."""
        if self.spec.zero_stage > 0 or self.spec.process.dtype == "float16":
            return True
        return all(torch.isfinite(p.grad).all().item() for p in self.engine.module.parameters() if p.grad is not None)

    # ---- weights out ------------------------------------------------------------------------
    def _gathered(self):
        import deepspeed

        params = list(self.engine.module.parameters())
        if self.spec.zero_stage == 3:
            return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        from contextlib import nullcontext

        return nullcontext()

    def state_dict_for_sync(self, dtype: str | None = None, bucket_mib: float | None = None):
        """Full weights on rank 0, packed into a few flat CPU buffers in ``dtype`` (the engines'; None: this
        rank's own), iterable as ``(name, tensor)`` (``orchestrator.weight_sync.WeightBuckets``); None on
        other ranks. Every rank must call (ZeRO-3 gathers)."""
        from orchestrator.weight_sync import BUCKET_MIB, pack_weights

        with self._gathered():
            if self.rank != 0:
                return None
            return pack_weights(self.engine.module.state_dict(), DTYPES[dtype or self.spec.process.dtype],
                                bucket_mib or BUCKET_MIB)

    def weights_checksum(self) -> float:
        """Sum of all parameters (every rank calls; ZeRO-3 gathers) - ranks must agree."""
        with self._gathered():
            return float(sum(p.detach().double().sum() for p in self.engine.module.parameters()))

    # ---- checkpoints (DeepSpeed's own format: weights, optimizer, scheduler, ZeRO partitions) -----
    def save_checkpoint(self, path: str) -> None:
        """Every rank writes its part of the DeepSpeed checkpoint, and its RNG state, on this node's disk,
        then copies its own files to ``path`` (a folder or a bucket URI) with their manifest."""
        from safetensors.torch import save_file

        from orchestrator import storage

        with storage.scratch("save") as local:
            self.engine.save_checkpoint(str(local), tag="ds")
            save_file({"torch": torch.get_rng_state()}, os.path.join(local, f"rng_rank{self.rank}.safetensors"))
            storage.publish_rank(local, path, self.rank)

    def load_checkpoint(self, path: str) -> None:
        """Every rank copies the group's files from ``path`` to this node's disk, checks each one's size
        and SHA-256 against the checkpoint's manifest, and restores its part; raises (on every rank) if
        any rank's files do not match or the checkpoint cannot be loaded."""
        from safetensors.torch import load_file

        from orchestrator import checkpoint, storage
        from orchestrator.errors import CheckpointError

        with storage.scratch("load") as local:
            failure = None
            try:
                storage.fetch_verified(path, local, checkpoint.expected_files(path))
            except (CheckpointError, OSError) as exc:
                failure = exc
            if self._any_rank(failure is not None):  # all ranks skip together: no one waits in a collective
                raise failure or CheckpointError(f"{path}: another rank's files did not match the manifest (corrupt)")
            try:
                loaded, _ = self.engine.load_checkpoint(str(local), tag="ds")
            except CheckpointError as exc:  # name the stored file, not this node's copy
                raise CheckpointError(str(exc).replace(str(local), str(storage.location(path)))) from None
            if loaded is None:
                raise RuntimeError(f"no DeepSpeed checkpoint at {path}")
            torch.set_rng_state(load_file(os.path.join(local, f"rng_rank{self.rank}.safetensors"))["torch"])

    # ---- GPU weight sync (NCCL broadcast to vLLM engines, see orchestrator.weight_sync) ------
    def init_weight_sender(self, master_addr: str, master_port: int, world_size: int) -> None:
        """Rank 0 joins the NCCL group of the rollout engines as its rank 0."""
        from workers.nccl_weight_sender import init_sender_group

        self._sender = init_sender_group(master_addr, master_port, world_size, self.device)

    def _sync_tensors(self) -> list:
        dtype = DTYPES[self.spec.process.dtype]
        return [(k, v.detach().to(dtype)) for k, v in self.engine.module.state_dict().items()]

    def weight_specs(self) -> list:
        """(name, dtype, shape) of every tensor a sync will send, in order."""
        from workers.nccl_weight_sender import weight_specs

        with self._gathered():
            return weight_specs(self._sync_tensors())

    def broadcast_weights(self) -> None:
        """Every rank gathers (ZeRO-3); rank 0 broadcasts each tensor to the engines."""
        from workers.nccl_weight_sender import broadcast_weights

        with self._gathered():
            if self.rank == 0:
                broadcast_weights(self._sender, self._sync_tensors())

    def save_pretrained(self, path: str, tokenizer_path: str | None = None) -> None:
        """Write the model in HF format (safetensors) to ``path`` (a folder or a bucket URI); all ranks
        gather, rank 0 saves on this node's disk and then publishes the folder whole from here."""
        import torch.distributed as dist

        from orchestrator import storage

        with storage.scratch("final") as local:
            with self._gathered():
                if self.rank == 0:
                    self.engine.module.save_pretrained(local, safe_serialization=True)
                    if tokenizer_path:
                        from transformers import AutoTokenizer

                        AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(local)
            dist.barrier()  # the gather is done on every rank; the copy to storage needs rank 0 alone
            if self.rank == 0:
                storage.publish_folder(local, path)

