"""Rule-based reward functions with the signature ``fn(prompts, responses) -> list[float]``.

Point ``reward.function`` at ``orchestrator/rewards/examples.py:<name>`` to use one.
"""


def letter_frequency(prompts: list[str], responses: list[str], letter: str = "e") -> list[float]:
    """Fraction of the response's characters that are ``letter`` (a dense, learnable signal)."""
    return [r.count(letter) / max(len(r), 1) for r in responses]


def brevity(prompts: list[str], responses: list[str]) -> list[float]:
    """1 for an empty response, falling linearly to 0 at 200 characters."""
    return [max(0.0, 1.0 - len(r) / 200.0) for r in responses]
