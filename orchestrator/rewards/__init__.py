"""Reward functions shipped with Tether (examples and rule-based rewards for tests)."""
