"""A trainer rank's weights live in its own memory, not in the mapped checkpoint file: the optimizer's
first writes then cost no page-by-page copies (``workers/trainer.py`` ``own_memory``)."""

import sys
from pathlib import Path

import pytest
import torch

from workers.trainer import own_memory


def in_file_mapping(tensor: torch.Tensor, folder: Path) -> bool:
    """Whether ``tensor``'s memory lies in a mapping of a file under ``folder`` (/proc/self/maps)."""
    ptr = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith(str(folder)):
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= ptr < hi:
                return True
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_own_memory_moves_weights_out_of_the_checkpoint_mapping(tmp_path, tiny_model_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_path)
    config.tie_word_embeddings = True  # the output head is the embedding, as in SmolLM2
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "tied")  # safetensors
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "tied", dtype=torch.float32, use_safetensors=True)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mapped = [n for n, p in model.named_parameters() if in_file_mapping(p, tmp_path)]
    assert mapped, "transformers now copies safetensors weights on load: own_memory is no longer needed"

    own_memory(model)

    assert not [n for n, p in model.named_parameters() if in_file_mapping(p, tmp_path)]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert model.lm_head.weight is model.get_input_embeddings().weight  # still one tensor
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(1.0)  # the write reaches both uses, and not the file
    assert torch.equal(model.lm_head.weight, before["model.embed_tokens.weight"] + 1.0)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "tied", dtype=torch.float32, use_safetensors=True)
    assert torch.equal(reloaded.get_input_embeddings().weight, before["model.embed_tokens.weight"])
