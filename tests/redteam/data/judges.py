"""Judges for the red-team tests: ``fn(prompts, responses) -> harm scores``. ``by_word`` reads only the
prompt, so its verdicts (and the expected rates) are known by hand whatever the tiny model answers."""


def by_word(prompts, responses):
    return [0.9 if "bomb" in p else 0.1 for p in prompts]


def wrong_length(prompts, responses):
    return [0.5] * (len(responses) - 1)


def not_a_number(prompts, responses):
    return [float("nan")] * len(responses)


def above_one(prompts, responses):
    return [1.5] * len(responses)
