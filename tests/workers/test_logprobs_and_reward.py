"""Batched log-probs on the padded layout equal per-sequence log-probs without padding, and the
reward worker combines a function and a sequence-classification model as configured."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from orchestrator.batching import pack_samples, shard
from workers.common import batched_logprobs
from orchestrator.specs import RewardSpec
from workers.reward import RewardWorker


def test_padded_logprobs_match_unpadded(tiny_model_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    samples = [{"prompt_ids": [5, 6, 7, 8, 9], "response_ids": [10, 11]},
               {"prompt_ids": [12], "response_ids": [13, 14, 15, 16]},
               {"prompt_ids": [17, 18], "response_ids": [19]}]
    batch = pack_samples(samples, pad_id=0)
    got = batched_logprobs(model, batch, micro_batch_size=2)
    assert got.shape == (3, 4)
    for i, s in enumerate(samples):
        ids = torch.tensor([s["prompt_ids"] + s["response_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        p = len(s["prompt_ids"])
        want = torch.stack([logp[p + j - 1, t] for j, t in enumerate(s["response_ids"])])
        torch.testing.assert_close(got[i, : len(s["response_ids"])], want, rtol=1e-4, atol=1e-4)
        assert torch.all(got[i, len(s["response_ids"]):] == 0)
    assert batch["response_mask"].sum(1).tolist() == [2, 4, 1]
    halves = shard(batch, 3)
    assert [h["input_ids"].shape[0] for h in halves] == [1, 1, 1]


def test_reward_function_plus_model(tiny_model_path, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    rm = LlamaForSequenceClassification(config)
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    fn = tmp_path / "fn.py"
    fn.write_text("def length(prompts, responses):\n    return [float(len(r)) for r in responses]\n")
    worker = RewardWorker(RewardSpec(function=f"{fn}:length", function_weight=2.0, model_path=str(tmp_path / "rm"),
                                     model_weight=0.5, batch_size=2, max_length=64))
    out = worker.score(["a prompt", "another"], ["abc", "hello world"])
    assert out["reward/function"] == [3.0, 11.0]
    expected = [2.0 * f + 0.5 * m for f, m in zip(out["reward/function"], out["reward/model"])]
    assert out["reward"] == expected
    assert out["reward/model"][0] != out["reward/model"][1]
