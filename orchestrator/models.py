"""Model resolution: config ``model`` section -> a local Hugging Face folder.

``model.path`` names any local HF folder (config + safetensors + tokenizer), or with
``pkg:PACKAGE/SUBDIR`` a folder shipped inside an installed Python package (the package is
located with ``importlib.util.find_spec``, never imported, so its own dependencies need not be
installed). ``model.gguf`` names a GGUF file (``PACKAGE:FILE.gguf`` inside an installed package,
or a path): transformers dequantizes it to float32 once and the result is saved as an HF folder
(safetensors + tokenizer with the GGUF's chat template) under ``<cache_dir>/models/<stem>-<hash>``;
later resolves find that folder and return at once. Only architectures that transformers can
read from GGUF work (llama, mistral, qwen2, ...); quantized weights come back dequantized, not
as the original full-precision model.

``model.path=null`` and ``model.gguf=null`` with ``model.tiny`` settings build a tiny random Llama
and a byte-level BPE tokenizer trained on the shipped prompt set, with no download. The build is
deterministic for a given seed and cached under ``<cache_dir>/models/tiny-<hash>``.

Every cached build is written to a temporary folder, then renamed, so every actor (trainer ranks,
reference, vLLM engines) loads the same complete files.

Models on every node: ``orchestrator/model_nodes.py``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from orchestrator.errors import ConfigError

ASSETS = Path(__file__).resolve().parent / "assets"
log = logging.getLogger("tether")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]


def default_cache_dir() -> Path:
    """Where built models and compiled ops are cached (``TETHER_CACHE`` or ``~/.cache/tether``)."""
    return Path(os.environ.get("TETHER_CACHE", Path.home() / ".cache" / "tether"))


def resolve_model_path(model_cfg) -> str:
    """Return a local HF folder for the ``model`` config section (converting a GGUF file or building
    the tiny model once, if asked)."""
    gguf = getattr(model_cfg, "gguf", None)
    if gguf:
        if model_cfg.path:
            raise ConfigError(f"model.path={model_cfg.path!r} and model.gguf={gguf!r} are both set; set only one")
        return str(convert_gguf(gguf_file(gguf)))
    if model_cfg.path:
        path = package_path(model_cfg.path) if model_cfg.path.startswith("pkg:") else Path(model_cfg.path).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.path={model_cfg.path!r}: not a Hugging Face model folder (no config.json)")
        return str(path.resolve())
    spec = {k: int(v) for k, v in dict(model_cfg.tiny).items()}
    return str(build_tiny_model(spec))


def package_dir(name: str, field: str, value: str) -> Path:
    """The folder of installed Python package ``name``, found without importing it."""
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise ConfigError(f"{field}={value!r}: {name!r} is not a Python package name")
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{field}={value!r}: Python package {name!r} is not installed "
                          "(for the sentiment example's models run: make sentiment-prepare)")
    return Path(list(spec.submodule_search_locations)[0])


def package_path(value: str) -> Path:
    """``pkg:PACKAGE/SUBDIR`` -> that folder inside the installed package (SUBDIR may be empty)."""
    name, _, sub = value[len("pkg:"):].partition("/")
    return package_dir(name, "model.path", value) / sub


def gguf_file(value: str) -> Path:
    """``PACKAGE:FILE.gguf`` or a path -> the GGUF file (ConfigError when it is not there)."""
    name, sep, rel = value.partition(":")
    path = package_dir(name, "model.gguf", value) / rel if sep else Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.gguf={value!r}: no such file: {path}")
    return path.resolve()


def _gguf_key(path: Path) -> str:
    """Content key of a GGUF file: its name, size and first and last MiB (hashing 100 MB takes too long)."""
    size = path.stat().st_size
    digest = hashlib.sha256(f"{path.name}:{size}:format1".encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(1 << 20))
        fh.seek(max(0, size - (1 << 20)))
        digest.update(fh.read())
    return digest.hexdigest()[:12]


def convert_gguf(path: Path, cache_dir: Path | None = None) -> Path:
    """Convert (once) a GGUF file to a float32 HF folder in the cache and return that folder.

    transformers dequantizes the GGUF tensors to float32 (needs the ``gguf`` package; ~20 s for a
    135M model); the quantizer is then detached so ``save_pretrained`` writes plain safetensors.
    The tokenizer comes from the GGUF too; a missing pad token is set to the eos token.
    """
    target = (cache_dir or default_cache_dir()) / "models" / f"{path.stem}-{_gguf_key(path)}"
    if (target / "model.safetensors").is_file():
        return target
    import torch  # only for a conversion: importing transformers' model classes takes seconds
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"model.gguf: reading {path.name} needs the 'gguf' package: pip install gguf "
                          "(or run: make sentiment-prepare)")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, KeyError, OSError) as exc:  # unsupported architecture, missing metadata, bad file
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"model.gguf: transformers cannot read {path}: {why}") from None
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return _save_atomically(model, tokenizer, GenerationConfig.from_model_config(model.config), target)


def _save_atomically(model, tokenizer, generation_config, target: Path) -> Path:
    """Write an HF folder to a temporary folder beside ``target``, then rename it into place
    (another process may have finished first: then its folder is kept)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    generation_config.save_pretrained(tmp)
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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
    return _save_atomically(model, tokenizer, model.generation_config, target)
