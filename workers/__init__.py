"""Ray actor classes, one role each: rollout, reward, reference, trainer (policy / critic)."""
