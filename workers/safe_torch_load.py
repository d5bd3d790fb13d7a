"""Reading DeepSpeed checkpoint files without running code from them.

DeepSpeed saves weights, optimizer and ZeRO state with ``torch.save`` (a pickle) and reads them back
with ``torch.load(weights_only=False)``, which runs whatever a tampered file tells the unpickler to
call. A trainer rank gives its engine ``safe_load`` instead: ``torch.load(weights_only=True)``, which
rebuilds only tensors, containers, numbers and strings, plus the few DeepSpeed state classes these
files hold (``DEEPSPEED_STATE_CLASSES``; rebuilt by setting attributes, never by calling code). A file
that asks for anything else is refused with a one-line ``CheckpointError`` naming the file and what
it asked for; ``resume=auto`` then skips that checkpoint like a corrupt one.
"""

from __future__ import annotations

import pickle

import torch

from orchestrator.errors import CheckpointError


def deepspeed_state_classes() -> list:
    """The classes DeepSpeed 0.19 pickles into its optimizer-state files (ZeRO 1-3, fp32 / bf16 / fp16)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: str, map_location=None):
    """``torch.load`` of a DeepSpeed checkpoint file with ``weights_only=True``."""
    allowed = deepspeed_state_classes()
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused to load ({_refusal(path, exc, allowed)}): a checkpoint file may hold "
                              "only tensors and DeepSpeed's training state (torch.load with weights_only=True)") from None


def _refusal(path: str, exc: Exception, allowed: list) -> str:
    """What the file asked for that is not allowed, in a few words."""
    names = {f"{c.__module__}.{c.__qualname__}" for c in allowed}
    try:
        unsafe = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in names]
    except Exception:  # noqa: BLE001 - not a readable torch file: fall back to the unpickler's words
        unsafe = []
    if unsafe:
        return f"it asks for {', '.join(sorted(unsafe))}"
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    return next((x for x in lines if "GLOBAL" in x or "Unsupported" in x), lines[-1] if lines else type(exc).__name__)


def use_safe_loading(engine) -> None:
    """Make a DeepSpeed engine read every checkpoint file (model, optimizer, ZeRO partitions) with
    ``safe_load``: all of its loads go through ``engine.checkpoint_engine.load``."""
    engine.checkpoint_engine.load = safe_load
