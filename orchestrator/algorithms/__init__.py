"""Algorithm pieces as pure tensor functions: KL estimators, RL losses, advantage estimators,
preference (DPO-family), reward-model and SFT losses.

Importing this package registers every estimator and loss in the registries below.
"""

from orchestrator.algorithms.registry import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    Registry,
)
from orchestrator.algorithms.kl import (
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k2,
    kl_k3,
    make_kl_controller,
)
from orchestrator.algorithms.losses import (
    clipped_value_loss,
    entropy_from_logits,
    kl_loss_term,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
)
from orchestrator.algorithms.advantages import gae, grpo, reinforce_pp, rloo, token_rewards
from orchestrator.algorithms.passes import needs_old_logprobs, uses_reference
from orchestrator.algorithms.preference import (
    PREFERENCE_LOSSES,
    PairLogps,
    PreferenceParams,
    bradley_terry_loss,
    needs_reference,
    preference_metrics,
    sft_loss,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "Registry",
    "AdaptiveKLController",
    "FixedKLController",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "make_kl_controller",
    "needs_old_logprobs",
    "uses_reference",
    "clipped_value_loss",
    "entropy_from_logits",
    "kl_loss_term",
    "masked_mean",
    "masked_whiten",
    "ppo_policy_loss",
    "gae",
    "grpo",
    "reinforce_pp",
    "rloo",
    "token_rewards",
    "PREFERENCE_LOSSES",
    "PairLogps",
    "PreferenceParams",
    "bradley_terry_loss",
    "needs_reference",
    "preference_metrics",
    "sft_loss",
]
