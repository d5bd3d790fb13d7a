"""Tests for orchestrator.prompts: RLHF prompts tokenised once, before the loop, with bounded work."""

from orchestrator.data import PromptLoader, render_prompt
from tests.test_preference_data import USER, ids, tok  # noqa: F401  (tok: the tiny tokenizer fixture)


# ---- RLHF prompts: tokenised once, bounded (orchestrator.prompts) ---------------------------

def test_prompts_encode_as_before_and_bound_the_tokenizer(tok):
    """Prompt ids are the chat-templated ids cut to the last max_prompt_tokens, as whole-prompt
    tokenisation gives them; the tokenizer never sees more than 32 characters per kept token."""
    from orchestrator.data import CHARS_PER_TOKEN
    from orchestrator.prompts import encode_prompts, prompt_ids, reward_prompts

    class Spy:  # the real tokenizer, noting the longest text it was given
        longest = 0

        def __call__(self, texts, **kwargs):
            Spy.longest = max([Spy.longest] + [len(t) for t in texts])
            return tok(texts, **kwargs)

        def __getattr__(self, name):  # chat template and the rest: the tokenizer's own
            return getattr(tok, name)

    limit = 16
    rows = [{"prompt": "Name a tree"}, {"prompt": USER}, {"prompt": "the green tree is big " * 3000},
            {"prompt": USER + [{"role": "user", "content": "why is a rock not a tree " * 40}]}]
    prepared, truncated = encode_prompts(tok, rows, "prompt", limit)
    old = [ids(tok, render_prompt(tok, r["prompt"]))[-limit:] for r in rows]  # what each step computed before
    assert prompt_ids(prepared) == old
    assert truncated == 2 and all(len(p) <= limit for p in prompt_ids(prepared))
    assert reward_prompts(prepared, 2)[2:4] == ["Name a tree", "Name a tree"]
    assert encode_prompts(Spy(), rows, "prompt", limit)[0] == prepared
    assert len(render_prompt(tok, rows[2]["prompt"])) > 50_000 and Spy.longest == limit * CHARS_PER_TOKEN


def test_prepare_prompts_warns_once(tok, caplog):
    """Truncation is announced once for the run: how many of how many prompts, in each set."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from orchestrator.prompts import prepare_prompts

    long = {"prompt": "a big green tree " * 20}
    ctx = SimpleNamespace(cfg=OmegaConf.create({"data": {"prompt_key": "prompt", "max_prompt_tokens": 8}}),
                          tokenizer=tok, train_rows=[long, {"prompt": "Hi"}, long], eval_rows=[{"prompt": "Hi"}, long])
    with caplog.at_level("WARNING", logger="tether"):
        train, held_out = prepare_prompts(ctx)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["2 of 3 train prompts and 1 of 2 held-out prompts are longer than data.max_prompt_tokens=8 "
                        "tokens and are cut from the left"]
    assert [len(r["prompt_ids"]) for r in train] == [8, len(ids(tok, render_prompt(tok, "Hi"))), 8]
    assert [r["prompt_text"] for r in held_out] == ["Hi", long["prompt"]]
    loader = PromptLoader(train, 2, seed=0)
    assert all("prompt_ids" in row for row in next(loader))
