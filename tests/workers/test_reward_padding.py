"""A decoder reward model whose tokenizer pads with an id other than eos scores a sequence the same
alone as in a padded batch, in training (TrainerRank) and in scoring (RewardWorker): the model's
``config.pad_token_id`` is the id the batches are padded with."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from orchestrator.preference_data import pack_reward_pairs
from orchestrator.specs import RewardSpec, TrainerSpec
from workers.reward import RewardWorker
from workers.trainer import TrainerRank


def _reward_model(tiny_model_path, folder, pad_token_id):
    """A tiny Llama reward model saved with ``pad_token_id`` in its config, beside the tiny tokenizer
    (pad id 0, eos id 1)."""
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    assert tok.pad_token_id != tok.eos_token_id
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=pad_token_id,
                         eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return tok


def test_trainer_scores_last_real_token(tiny_model_path, tmp_path):
    """Built with no pad id in its config, the rank's model takes the tokenizer's pad id (not eos), so
    a short pair member scores the same padded as alone."""
    tok = _reward_model(tiny_model_path, tmp_path / "rm", pad_token_id=None)
    rank = TrainerRank("reward_model", str(tmp_path / "rm"), TrainerSpec(objective="reward_model"), 0, 1)
    model = rank._build_model(str(tmp_path / "rm")).eval()
    assert model.config.pad_token_id == tok.pad_token_id
    short, long = [5, 6, 7], [5, 6, 7, 8, 9, 10, 11, 12]
    batch = pack_reward_pairs([{"chosen_ids": short, "rejected_ids": long}], tok.pad_token_id)
    with torch.no_grad():
        padded = model(input_ids=batch["input_ids"][0], attention_mask=batch["attention_mask"][0]).logits[:, 0]
        alone = model(input_ids=torch.tensor([short])).logits[0, 0]
    torch.testing.assert_close(padded[0], alone, rtol=1e-5, atol=1e-5)


def test_reward_worker_scores_last_real_token(tiny_model_path, tmp_path):
    """A reward model saved with pad id = eos (what trainers wrote before) is scored with the
    tokenizer's pad id: a short response scores the same alone as beside a long one."""
    _reward_model(tiny_model_path, tmp_path / "rm", pad_token_id=1)
    worker = RewardWorker(RewardSpec(model_path=str(tmp_path / "rm"), batch_size=4, max_length=64))
    alone = worker.score(["a prompt"], ["hi"])["reward"][0]
    batched = worker.score(["a prompt", "a prompt"], ["hi", "a much longer response than the other one"])["reward"]
    assert abs(batched[0] - alone) < 1e-5, (alone, batched)
    assert abs(batched[1] - alone) > 1e-6  # the model does tell the two apart
