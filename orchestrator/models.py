"""Model resolution: config ``model`` section -> a local Hugging Face folder.

``model.path`` names any local HF folder (config + safetensors + tokenizer). ``model.path=null``
with ``model.tiny`` settings builds a tiny random Llama and a byte-level BPE tokenizer trained on
the shipped prompt set, with no download. The build is deterministic for a given seed and cached
under ``<cache_dir>/models/tiny-<hash>`` (written to a temporary folder, then renamed), so every
actor (trainer ranks, reference, vLLM engines) loads the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from orchestrator.errors import ConfigError

ASSETS = Path(__file__).resolve().parent / "assets"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]


def default_cache_dir() -> Path:
    """Where built models and compiled ops are cached (``TETHER_CACHE`` or ``~/.cache/tether``)."""
    return Path(os.environ.get("TETHER_CACHE", Path.home() / ".cache" / "tether"))


def resolve_model_path(model_cfg) -> str:
    """Return a local HF folder for the ``model`` config section, building the tiny model if asked."""
    if model_cfg.path:
        path = Path(model_cfg.path).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.path={model_cfg.path!r}: not a Hugging Face model folder (no config.json)")
        return str(path.resolve())
    spec = {k: int(v) for k, v in dict(model_cfg.tiny).items()}
    return str(build_tiny_model(spec))


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    for name in sorted((ASSETS / "prompts").glob("*.jsonl")):
        for line in name.read_text().splitlines():
            if line.strip():
                texts.append(json.loads(line)["prompt"])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(spec: dict, cache_dir: Path | None = None) -> Path:
    """Build (once) the tiny Llama described by ``spec`` and return its folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    target = (cache_dir or default_cache_dir()) / "models" / f"tiny-{key}"
    if (target / "model.safetensors").is_file():
        return target
    tokenizer = _train_tokenizer(spec["vocab_size"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_layers"],
        num_attention_heads=spec["num_heads"],
        num_key_value_heads=spec["num_heads"],
        head_dim=spec["hidden_size"] // spec["num_heads"],
        max_position_embeddings=spec["max_positions"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(spec["seed"])
    model = LlamaForCausalLM(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    try:
        os.rename(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target
