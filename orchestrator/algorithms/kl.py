"""KL estimators between the policy and the reference model, and KL coefficient controllers.

Conventions used throughout ``orchestrator.algorithms``: per-token tensors are ``[B, T]`` over
response tokens only, and ``mask`` is ``[B, T]`` (float or bool) with 1 marking a real response
token. ``logp`` / ``ref_logp`` are log-probabilities of the sampled tokens under the policy and
the reference model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from orchestrator.algorithms.registry import KL_ESTIMATORS


@KL_ESTIMATORS.register("k1")
def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Plain log-ratio ``logp - ref_logp`` (unbiased, can be negative per token)."""
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Squared log-ratio ``0.5 * (logp - ref_logp)**2`` (non-negative, low variance)."""
    return 0.5 * (logp - ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """``exp(ref_logp - logp) - (ref_logp - logp) - 1`` (unbiased and non-negative)."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1.0


class FixedKLController:
    """KL coefficient that never changes."""

    def __init__(self, coef: float) -> None:
        if coef < 0:
            raise ValueError(f"KL coefficient must be >= 0, got {coef}")
        self.coef = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: the coefficient stays fixed."""

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state (the current coefficient)."""
        return {"coef": self.coef}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore the coefficient saved by :meth:`state_dict`."""
        self.coef = float(d["coef"])


class AdaptiveKLController:
    """KL coefficient steered towards a target KL.

    After each batch, ``err = clip(current_kl / target - 1, -0.2, 0.2)`` and
    ``coef *= 1 + err * n_steps / horizon``: the coefficient grows when the measured KL is above
    the target and shrinks when it is below, by at most 20% per ``horizon`` steps.
    """

    def __init__(self, init_coef: float, target: float, horizon: int) -> None:
        if init_coef < 0:
            raise ValueError(f"KL coefficient must be >= 0, got {init_coef}")
        if target <= 0:
            raise ValueError(f"KL target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"KL horizon must be > 0, got {horizon}")
        self.coef = float(init_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move the coefficient after ``n_steps`` samples whose mean KL was ``current_kl``."""
        err = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + err * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state (the current coefficient)."""
        return {"coef": self.coef}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore the coefficient saved by :meth:`state_dict`."""
        self.coef = float(d["coef"])


def make_kl_controller(
    coef: float, target: float | None, horizon: int
) -> FixedKLController | AdaptiveKLController:
    """Build a fixed controller when ``target`` is None, otherwise an adaptive one."""
    if target is None:
        return FixedKLController(coef)
    return AdaptiveKLController(coef, target, horizon)
