"""Which forward passes an RLHF step needs, from the algorithm section: none whose result nobody reads.

- Reference log-probs are read only by a KL term: skipped when ``kl_coef`` is 0 and no adaptive
  controller (``kl_target``) may raise it (the reference actor is then not even started).
- Old-policy log-probs need a pass of their own only when the ratio ``pi / pi_old`` can move away
  from 1 (more than one optimizer update per rollout batch: ``ppo_epochs > 1`` or several
  mini-batches) or when a KL penalty enters the reward before training (``kl_mode=reward``). Otherwise
  the training forward's own log-probs, detached, are the old ones (ratio 1, as TRL does).
"""

from __future__ import annotations


def uses_reference(algorithm) -> bool:
    """Whether any KL term reads reference log-probs."""
    return algorithm["kl_coef"] > 0 or algorithm["kl_target"] is not None


def needs_old_logprobs(algorithm, samples_per_step: int, mini_batch_size: int) -> bool:
    """Whether old-policy log-probs need a forward pass before the update."""
    one_update = algorithm["ppo_epochs"] == 1 and mini_batch_size >= samples_per_step
    return not one_update or (algorithm["kl_mode"] == "reward" and uses_reference(algorithm))
