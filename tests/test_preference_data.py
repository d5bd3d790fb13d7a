"""Tests for orchestrator.preference_data: pair and SFT rows, their errors, encoding and packing."""

import json
import os

import pytest

from orchestrator.batching import pack_samples, shard
from orchestrator.data import PromptLoader, render_prompt
from orchestrator.errors import ConfigError, DataError
from orchestrator.preference_data import (encode_pairs, encode_reward_pairs, encode_sft, load_pair_rows,
                                          load_sft_rows, pack_pairs, pack_reward_pairs, prompt_text,
                                          response_text, reward_text)
from orchestrator.rewards.examples import letter_frequency

ASSETS = os.path.join(os.path.dirname(__file__), "..", "orchestrator", "assets")
USER = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a tree"}]
ANSWER = [{"role": "assistant", "content": "An elm."}]
PAIR = {"prompt": "Name a tree", "chosen": "An elm.", "rejected": "A rock."}


def write_jsonl(path, rows):
    """Write rows (dicts, or raw strings written as they are) as lines; return the path as str."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def error_of(load, path, **kwargs):
    """The one-line DataError message that ``load(path, **kwargs)`` raises."""
    with pytest.raises(DataError) as info:
        load(str(path), **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    """The tiny model's tokenizer (chat template, eos <|end|>)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def bert_tokenizer():
    """A small BERT-style WordPiece tokenizer built offline: [CLS] text [SEP], lower-cased."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "name", "a", "tree", "an", "elm", "rock", ".",
             "is", "green", "big", "e", "##l", "##m"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


# ---- shipped sets ---------------------------------------------------------------------------

def test_shipped_preference_and_sft_sets():
    """The shipped sets load, follow the prompt sets, and carry the e-rich preference."""
    for name, size in (("tiny.jsonl", 64), ("tiny_eval.jsonl", 16)):
        prompts = [json.loads(line)["prompt"] for line in open(os.path.join(ASSETS, "prompts", name))]
        pairs = load_pair_rows(os.path.join(ASSETS, "preferences", name))
        assert len(pairs) == size and [r["prompt"] for r in pairs] == prompts
        chosen = letter_frequency([], [r["chosen"] for r in pairs])
        rejected = letter_frequency([], [r["rejected"] for r in pairs])
        assert min(chosen) > 0.15 and max(rejected) == 0.0
        assert all(len(r[k].split()) <= 12 for r in pairs for k in ("chosen", "rejected"))
        sft = load_sft_rows(os.path.join(ASSETS, "sft", name))
        assert len(sft) == size and all(set(r) == {"prompt", "response"} for r in sft)
        assert [prompt_text(r["prompt"]) for r in sft] == prompts
        assert {type(r["prompt"]) for r in sft} == {str, list}  # both row forms are present
        assert min(letter_frequency([], [r["response"] for r in sft])) > 0.15


# ---- loading pairs --------------------------------------------------------------------------

def test_pairs_load_from_every_source(tmp_path):
    """JSONL, JSON list, parquet and save_to_disk folders load, with chat-list values kept."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    chat = {"prompt": USER, "chosen": ANSWER, "rejected": [{"role": "assistant", "content": "A rock."}],
            "id": 7}
    jsonl = write_jsonl(tmp_path / "p.jsonl", [PAIR, "", chat])
    assert load_pair_rows(jsonl) == [PAIR, chat]
    (tmp_path / "p.json").write_text(json.dumps([PAIR, chat]))
    assert load_pair_rows(str(tmp_path / "p.json")) == [PAIR, chat]
    pq.write_table(pa.Table.from_pylist([chat, chat]), tmp_path / "p.parquet")
    assert load_pair_rows(str(tmp_path / "p.parquet")) == [chat, chat]
    datasets.Dataset.from_list([PAIR, PAIR]).save_to_disk(str(tmp_path / "saved"))
    assert load_pair_rows(str(tmp_path / "saved")) == [PAIR, PAIR]
    datasets.DatasetDict({"train": datasets.Dataset.from_list([PAIR]),
                          "test": datasets.Dataset.from_list([PAIR, dict(PAIR, chosen="")])}
                         ).save_to_disk(str(tmp_path / "dict"))
    assert error_of(load_pair_rows, tmp_path / "dict", split="test") == \
        f"{tmp_path / 'dict'}:row 1: empty string in 'chosen'"


def test_custom_keys_are_renamed(tmp_path):
    """Custom column names come back as prompt / chosen / rejected; other columns stay."""
    path = write_jsonl(tmp_path / "k.jsonl", [{"q": "Why?", "good": "Because.", "bad": "No.", "n": 1}])
    assert load_pair_rows(path, prompt_key="q", chosen_key="good", rejected_key="bad") == \
        [{"n": 1, "prompt": "Why?", "chosen": "Because.", "rejected": "No."}]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "rejected": "r"}, "missing key 'chosen' (keys present: 'prompt', 'rejected')"),
    ({"chosen": "c", "rejected": "r"}, "missing key 'prompt' (keys present: 'chosen', 'rejected')"),
    (dict(PAIR, chosen=""), "empty string in 'chosen'"),
    (dict(PAIR, rejected="  \n"), "empty string in 'rejected'"),
    (dict(PAIR, prompt=" "), "empty prompt in 'prompt'"),
    (dict(PAIR, chosen=3), "'chosen' must be a non-empty string or a list of {role, content} messages, "
                           "got number"),
    (dict(PAIR, rejected=None), "'rejected' must be a non-empty string or a list of {role, content} "
                                "messages, got null"),
    (dict(PAIR, chosen={"text": "x"}), "'chosen' must be a non-empty string or a list of {role, content} "
                                       "messages, got object"),
    (dict(PAIR, chosen=[]), "'chosen' is an empty message list"),
    (dict(PAIR, rejected=["A rock."]), "'rejected' message 0 must be an object with string 'role' and "
                                       "'content', got string"),
    (dict(PAIR, chosen=[{"role": "assistant"}]), "'chosen' message 0 must be an object with string 'role' "
                                                 "and 'content', got keys ['role']"),
    (dict(PAIR, chosen=[{"role": "user", "content": "hi"}]), "'chosen' has no assistant message "
                                                             "(roles: user)"),
    (dict(PAIR, chosen=[{"role": "assistant", "content": " "}]), "empty response in 'chosen'"),
    (dict(PAIR, rejected="An elm."), "'chosen' and 'rejected' are the same response"),
    (dict(PAIR, rejected=[{"role": "user", "content": "x"}, {"role": "assistant", "content": "An elm. "}]),
     "'chosen' and 'rejected' are the same response"),
])
def test_bad_pair_rows_name_file_and_line(tmp_path, row, message):
    """Each malformed pair stops the load with file:line and what is wrong."""
    path = write_jsonl(tmp_path / "bad.jsonl", [PAIR, "", row])
    assert error_of(load_pair_rows, path).startswith(f"{path}:3: {message}")


def test_bad_pairs_in_tables_and_files(tmp_path):
    """JSON lists and parquet name ``file:row N``; broken JSON and non-objects name the line."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "p.json").write_text(json.dumps([PAIR, {"prompt": "p", "chosen": "c"}]))
    assert error_of(load_pair_rows, tmp_path / "p.json").startswith(
        f"{tmp_path / 'p.json'}:row 1: missing key 'rejected'")
    pq.write_table(pa.Table.from_pylist([PAIR, dict(PAIR, rejected=PAIR["chosen"])]), tmp_path / "p.parquet")
    assert error_of(load_pair_rows, tmp_path / "p.parquet").startswith(
        f"{tmp_path / 'p.parquet'}:row 1: 'chosen' and 'rejected' are the same")
    path = write_jsonl(tmp_path / "j.jsonl", [PAIR, '{"prompt": ', '["x"]'])
    assert error_of(load_pair_rows, path).startswith(f"{path}:2: invalid JSON")
    path = write_jsonl(tmp_path / "k.jsonl", [PAIR, '["x"]'])
    assert error_of(load_pair_rows, path) == f"{path}:2: row must be a JSON object, got list"


def test_wrong_paths_name_the_config_field(tmp_path):
    """A missing file names data.path, or the field given (data.eval_path)."""
    missing = tmp_path / "nope.jsonl"
    assert error_of(load_pair_rows, missing) == f"data.path: no such file: {missing}"
    assert error_of(load_pair_rows, missing, field="data.eval_path") == \
        f"data.eval_path: no such file: {missing}"
    assert error_of(load_sft_rows, missing, field="data.eval_path") == \
        f"data.eval_path: no such file: {missing}"
    assert error_of(load_pair_rows, "no-such-org/no-such-prefs", field="data.eval_path").startswith(
        "data.eval_path=no-such-org/no-such-prefs: not a file, and not a dataset that loads offline")
    assert "data.eval_path=" in error_of(load_pair_rows, write_jsonl(tmp_path / "e.jsonl", [""]),
                                         field="data.eval_path")


# ---- loading SFT rows -----------------------------------------------------------------------

def test_sft_rows_normalise_both_forms(tmp_path):
    """Prompt/response rows and chat rows both become {prompt, response}."""
    chat = {"messages": USER + ANSWER, "id": 3}
    path = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "Name a tree", "response": "An elm."}, chat,
                                              {"prompt": USER, "response": "An elm."}])
    assert load_sft_rows(path) == [{"prompt": "Name a tree", "response": "An elm."},
                                   {"prompt": USER, "response": "An elm."},
                                   {"prompt": USER, "response": "An elm."}]
    path = write_jsonl(tmp_path / "c.jsonl", [{"conv": USER + ANSWER}, {"q": "Hi", "a": "Hello."}])
    assert load_sft_rows(path, messages_key="conv", prompt_key="q", response_key="a") == \
        [{"prompt": USER, "response": "An elm."}, {"prompt": "Hi", "response": "Hello."}]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p"}, "missing key 'response' (keys present: 'prompt')"),
    ({"response": "r"}, "missing key 'prompt' (keys present: 'response')"),
    ({"text": "x"}, "missing keys: an SFT row needs 'prompt' + 'response' or 'messages' "
                    "(keys present: 'text')"),
    ({"prompt": "p", "response": ""}, "empty string in 'response'"),
    ({"prompt": "p", "response": ANSWER}, "'response' must be a non-empty string, got list"),
    ({"prompt": "p", "response": 1.5}, "'response' must be a non-empty string, got number"),
    ({"prompt": "", "response": "r"}, "empty prompt in 'prompt'"),
    ({"messages": "hi"}, "'messages' must be a list of {role, content} messages, got string"),
    ({"messages": []}, "'messages' is an empty message list"),
    ({"messages": USER}, "'messages' must end with an assistant message (the last one has role 'user')"),
    ({"messages": ANSWER}, "'messages' needs at least one message before the final assistant message"),
    ({"messages": USER + [{"role": "assistant", "content": ""}]}, "empty response in 'messages'"),
    ({"messages": [{"role": "user", "content": " "}] + ANSWER}, "empty prompt in 'messages'"),
    ({"messages": [{"role": "user", "content": 5}] + ANSWER}, "'messages' message 0 must be an object"),
])
def test_bad_sft_rows_name_file_and_line(tmp_path, row, message):
    """Each malformed SFT row stops the load with file:line and what is wrong."""
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "response": "r"}, row])
    assert error_of(load_sft_rows, path).startswith(f"{path}:2: {message}")


# ---- text helpers ---------------------------------------------------------------------------

def test_response_and_prompt_text():
    """Responses join assistant turns; prompts are the last user message."""
    assert response_text("An elm.") == "An elm."
    assert response_text(USER + ANSWER + [{"role": "user", "content": "More"},
                                          {"role": "assistant", "content": "An oak."}]) == "An elm.\nAn oak."
    assert prompt_text("Hi") == "Hi" and prompt_text(USER) == "Name a tree"
    assert prompt_text([{"role": "system", "content": "Only this"}]) == "Only this"
    with pytest.raises(DataError, match="needs an assistant message"):
        response_text(USER)


# ---- encoding -------------------------------------------------------------------------------

def ids(tokenizer, text):
    """Token ids of ``text`` without special tokens."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_encode_pairs(tok):
    """Prompt = rendered prompt tokens (left-truncated); responses = text tokens + eos."""
    chat = {"prompt": USER, "chosen": ANSWER, "rejected": "A rock."}
    encoded, counts = encode_pairs(tok, [PAIR, chat], max_prompt_tokens=64, max_length=128, overlong="drop")
    assert counts == {"rows": 2, "truncated": 0, "dropped": 0}
    eos = tok.eos_token_id
    for row, enc in zip([PAIR, chat], encoded):
        assert enc["prompt_ids"] == ids(tok, render_prompt(tok, row["prompt"]))
        assert enc["chosen_ids"] == ids(tok, response_text(row["chosen"])) + [eos]
        assert enc["rejected_ids"] == ids(tok, response_text(row["rejected"])) + [eos]
    full = ids(tok, render_prompt(tok, USER))
    short, _ = encode_pairs(tok, [chat], max_prompt_tokens=5, max_length=128, overlong="drop")
    assert short[0]["prompt_ids"] == full[-5:]


def test_overlong_pairs_truncate_or_drop(tok):
    """Over max_length, truncate cuts responses to fit (counted), drop leaves pairs out."""
    long = dict(PAIR, chosen="An elm tree is green and big and old and tall " * 4)
    prompt_len = len(ids(tok, render_prompt(tok, PAIR["prompt"])))
    room = max(len(ids(tok, PAIR[k])) + 1 for k in ("chosen", "rejected"))  # PAIR just fits
    max_length = prompt_len + room
    encoded, counts = encode_pairs(tok, [PAIR, long], prompt_len, max_length, "truncate")
    assert counts == {"rows": 2, "truncated": 1, "dropped": 0}
    assert encoded[0]["chosen_ids"][-1] == tok.eos_token_id  # the short pair is untouched
    cut = encoded[1]
    assert len(cut["prompt_ids"]) + len(cut["chosen_ids"]) == max_length
    assert cut["chosen_ids"] == ids(tok, long["chosen"])[:room] and cut["rejected_ids"][-1] == tok.eos_token_id
    encoded, counts = encode_pairs(tok, [PAIR, long, long], prompt_len, max_length, "drop")
    assert counts == {"rows": 3, "truncated": 0, "dropped": 2} and len(encoded) == 1
    with pytest.raises(DataError, match=r"all 2 pairs are longer than data.max_length=\d+ tokens and were "
                                        r"dropped .*set data.overlong=truncate"):
        encode_pairs(tok, [long, long], prompt_len, max_length, "drop")
    with pytest.raises(ConfigError, match="data.overlong='cut': must be one of truncate, drop"):
        encode_pairs(tok, [PAIR], 64, 128, "cut")
    with pytest.raises(ConfigError, match="data.max_length=64 must be larger than data.max_prompt_tokens=64"):
        encode_pairs(tok, [PAIR], 64, 64, "truncate")
    with pytest.raises(ConfigError, match="data.max_length=0: must be a positive integer"):
        encode_sft(tok, [{"prompt": "p", "response": "r"}], 64, 0, "drop")


def test_encode_sft_packs_with_loss_on_response_only(tok):
    """SFT rows encode like pairs and pack_samples masks the prompt out of the loss."""
    rows = [{"prompt": "Name a tree", "response": "An elm."}, {"prompt": USER, "response": "An elm tree."}]
    encoded, counts = encode_sft(tok, rows, 64, 128, "truncate")
    assert counts == {"rows": 2, "truncated": 0, "dropped": 0}
    assert encoded[1]["response_ids"] == ids(tok, "An elm tree.") + [tok.eos_token_id]
    batch = pack_samples(encoded, pad_id=tok.pad_token_id)
    assert batch["response_mask"].sum(-1).tolist() == [len(e["response_ids"]) for e in encoded]
    resp = batch["input_ids"][1, batch["prompt_len"]:][batch["response_mask"][1].bool()]
    assert tok.decode(resp) == "An elm tree." + tok.eos_token
    short = len(encoded[0]["prompt_ids"])
    cut, counts = encode_sft(tok, rows, short, short + 2, "truncate")
    assert counts == {"rows": 2, "truncated": 2, "dropped": 0}
    assert cut[1]["prompt_ids"] == encoded[1]["prompt_ids"][-short:]  # prompts lose their left end
    assert [c["response_ids"] for c in cut] == [e["response_ids"][:2] for e in encoded]


def test_encode_reward_pairs_bert_style():
    """Encoder text = reward_text(prompt, response) with [CLS]/[SEP], as the reward worker scores it."""
    bert = bert_tokenizer()
    rows = [{"prompt": USER, "chosen": ANSWER, "rejected": "A rock."},
            dict(PAIR, chosen="an elm is green . " * 6)]
    encoded, counts = encode_reward_pairs(bert, rows, max_length=12, overlong="truncate")
    assert counts == {"rows": 2, "truncated": 1, "dropped": 0}
    cls, sep = bert.cls_token_id, bert.sep_token_id
    # prompt and response on two lines, as the reward worker scores them (words stay apart)
    assert bert.decode(encoded[0]["chosen_ids"]) == "[CLS] name a tree an elm . [SEP]"
    assert encoded[0]["rejected_ids"] == bert("Name a tree\nA rock.")["input_ids"]
    cut = encoded[1]["chosen_ids"]
    assert len(cut) == 12 and cut[0] == cls and cut[-1] == sep
    worker = bert([reward_text("Name a tree", rows[1]["chosen"])], truncation=True, max_length=12)["input_ids"][0]
    assert cut == worker  # workers/reward.py tokenizes reward_text(prompt, response) the same way
    encoded, counts = encode_reward_pairs(bert, rows, max_length=12, overlong="drop")
    assert counts == {"rows": 2, "truncated": 0, "dropped": 1} and len(encoded) == 1


def test_encode_reward_pairs_decoder(tok):
    """A decoder tokenizer works too: the ids are those of the reward text."""
    encoded, counts = encode_reward_pairs(tok, [PAIR], max_length=64, overlong="drop")
    assert encoded[0]["chosen_ids"] == tok("Name a tree\nAn elm.")["input_ids"]
    assert counts == {"rows": 1, "truncated": 0, "dropped": 0}


# ---- packing --------------------------------------------------------------------------------

def test_pack_pairs_shapes_and_content(tok):
    """[B, 2, ...] tensors; row [i, 0] is prompt + chosen, [i, 1] prompt + rejected."""
    rows = [PAIR, {"prompt": USER, "chosen": ANSWER, "rejected": "A big rock is not a tree."},
            dict(PAIR, prompt="Name a green tree please")]
    encoded, _ = encode_pairs(tok, rows, 64, 128, "drop")
    batch = pack_pairs(encoded, pad_id=tok.pad_token_id)
    p = max(len(e["prompt_ids"]) for e in encoded)
    t = max(len(e[k]) for e in encoded for k in ("chosen_ids", "rejected_ids"))
    assert batch["prompt_len"] == p and batch["temperature"] == 1.0
    for key in ("input_ids", "attention_mask", "position_ids"):
        assert tuple(batch[key].shape) == (3, 2, p + t)
    assert tuple(batch["response_mask"].shape) == (3, 2, t)
    for i, row in enumerate(rows):
        for j, key in enumerate(("chosen", "rejected")):
            real = batch["input_ids"][i, j][batch["attention_mask"][i, j].bool()]
            assert tok.decode(real) == render_prompt(tok, row["prompt"]) + response_text(row[key]) + tok.eos_token
            assert batch["response_mask"][i, j].sum() == len(encoded[i][f"{key}_ids"])
            assert batch["attention_mask"][i, j, :p - len(encoded[i]["prompt_ids"])].sum() == 0  # left pad
    halves = shard(batch, 3)  # splitting dim 0 keeps a pair's two rows together
    assert all(h["input_ids"].shape[:2] == (1, 2) for h in halves)
    assert (halves[1]["input_ids"][0] == batch["input_ids"][1]).all()


def test_pack_reward_pairs_right_pads():
    """Reward batches are right-padded with pad_id, attention 1 on real tokens."""
    encoded = [{"chosen_ids": [5, 6, 7], "rejected_ids": [5]}, {"chosen_ids": [8], "rejected_ids": [9, 9]}]
    batch = pack_reward_pairs(encoded, pad_id=0)
    assert batch["input_ids"].tolist() == [[[5, 6, 7], [5, 0, 0]], [[8, 0, 0], [9, 9, 0]]]
    assert batch["attention_mask"].tolist() == [[[1, 1, 1], [1, 0, 0]], [[1, 0, 0], [1, 1, 0]]]


def test_loader_serves_pairs():
    """PromptLoader batches pair rows too and names them in its errors."""
    rows = [dict(PAIR, id=i) for i in range(5)]
    assert len(next(PromptLoader(rows, 2, seed=0, row_kind="preference pair"))) == 2
    with pytest.raises(DataError, match="larger than the 5 preference pair rows in the data set; lower the "
                                        "batch size or add preference pair rows"):
        PromptLoader(rows, 6, seed=0, row_kind="preference pair")

