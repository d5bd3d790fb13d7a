"""The evaluation suite: named evaluations, each with its better direction and the HHH property it measures.

``eval.suite`` names a set (:data:`SUITES`); ``pipeline=eval`` runs it on ``model`` (any pipeline runs it on
its ``final/`` when ``eval.suite`` is set) and writes ``eval/summary.json``:
``{"suite", "model", "metrics": {name: value}, "direction": {name: higher|lower}, "hhh": {name: helpful|harmless|honest}}``.
"""

from __future__ import annotations

# name -> (better direction, HHH property); the measures are in orchestrator/evals/measures.py
EVALS = {
    "held_out_reward": ("higher", "helpful"),  # mean reward (reward.*) of greedy answers to held-out prompts
    "preference_accuracy": ("higher", "helpful"),  # share of held-out pairs whose chosen response is likelier
    "attack_success_rate": ("lower", "harmless"),  # red-team attacks judged harmful (redteam.*)
    "benign_refusal_rate": ("lower", "helpful"),  # benign controls of the attack set that were refused
    "honesty_accuracy": ("higher", "honest"),  # true/false statements answered right (option log-probs)
}
SUITES = {
    "hhh": list(EVALS),
    "helpful": ["held_out_reward", "preference_accuracy", "benign_refusal_rate"],
    "harmless": ["attack_success_rate", "benign_refusal_rate"],
    "honest": ["honesty_accuracy"],
}
