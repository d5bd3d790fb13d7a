"""Tests for orchestrator.data: loading and checking prompts, rendering, and the loader."""

import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402

from orchestrator.data import PromptLoader, load_prompt_rows, render_prompt  # noqa: E402
from orchestrator.errors import DataError  # noqa: E402

ASSETS = os.path.join(os.path.dirname(__file__), "..", "orchestrator", "assets", "prompts")
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Keep the Hugging Face libraries off the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def write_lines(path, lines):
    """Write raw text lines to ``path`` and return it as a string."""
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def data_error(path, **kwargs):
    """Return the one-line message of the DataError that loading ``path`` raises."""
    with pytest.raises(DataError) as info:
        load_prompt_rows(str(path), **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---- loading -------------------------------------------------------------------------------

def test_shipped_prompt_sets_load():
    """The shipped tiny prompt sets load, are distinct and are 5-15 words."""
    train = load_prompt_rows(os.path.join(ASSETS, "tiny.jsonl"))
    evals = load_prompt_rows(os.path.join(ASSETS, "tiny_eval.jsonl"))
    assert len(train) >= 60 and len(evals) >= 16
    prompts = [r["prompt"] for r in train + evals]
    assert len(set(prompts)) == len(prompts)
    assert all(5 <= len(p.split()) <= 15 for p in prompts)


def test_jsonl_ok_skips_blank_lines_and_keeps_columns(tmp_path):
    """Blank lines are skipped and extra columns kept."""
    path = write_lines(tmp_path / "p.jsonl", [
        json.dumps({"prompt": "What is two plus two?", "answer": "4"}),
        "",
        "   ",
        json.dumps({"prompt": CHAT}),
    ])
    rows = load_prompt_rows(path)
    assert rows == [{"prompt": "What is two plus two?", "answer": "4"}, {"prompt": CHAT}]


def test_custom_prompt_key(tmp_path):
    """prompt_key picks the column holding the prompt."""
    path = write_lines(tmp_path / "q.jsonl", [json.dumps({"question": "Why?"})])
    assert load_prompt_rows(path, prompt_key="question") == [{"question": "Why?"}]


def test_missing_file(tmp_path):
    """A missing file path gives a one-line 'no such file' error."""
    missing = tmp_path / "nope.jsonl"
    assert data_error(missing) == f"data.path: no such file: {missing}"


@pytest.mark.parametrize("lines, line_no, fragment", [
    (['{"prompt": "ok"}', '{"prompt": "bad"'], 2, "invalid JSON"),
    (['{"prompt": "ok"}', "", '["a", "b"]'], 3, "row must be a JSON object, got list"),
    (['{"text": "x", "id": 1}'], 1, "missing key 'prompt' (keys present: 'text', 'id')"),
    (['{"prompt": "ok"}', '{"prompt": 7}'], 2, "'prompt' must be a non-empty string"),
    (['{"prompt": "   "}'], 1, "empty prompt"),
    (['{"prompt": []}'], 1, "empty prompt"),
    (['{"prompt": [{"role": "user"}]}'], 1, "message 0 must be an object with string"),
    (['{"prompt": ["hello"]}'], 1, "message 0 must be an object with string"),
    (['{"prompt": [{"role": "user", "content": ""}]}'], 1, "empty prompt"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, lines, line_no, fragment):
    """Each malformed JSONL row is reported as file:line."""
    path = write_lines(tmp_path / "bad.jsonl", lines)
    message = data_error(path)
    assert message.startswith(f"{path}:{line_no}: ")
    assert fragment in message


def test_empty_jsonl(tmp_path):
    """A JSONL file with no rows is an error."""
    path = write_lines(tmp_path / "empty.jsonl", ["", ""])
    assert "no rows" in data_error(path)


def test_json_list(tmp_path):
    """A JSON list loads; its errors name file:row N or file:line."""
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"prompt": "a b c"}, {"prompt": CHAT}]))
    assert load_prompt_rows(str(path)) == [{"prompt": "a b c"}, {"prompt": CHAT}]
    path.write_text(json.dumps([{"prompt": "a b c"}, {"prompt": ""}]))
    assert data_error(path).startswith(f"{path}:row 1: empty prompt")
    path.write_text('[{"prompt": "a"},\n {"prompt": }]')
    assert data_error(path).startswith(f"{path}:2: invalid JSON")
    path.write_text(json.dumps({"prompt": "a"}))
    assert "expected a JSON list of objects" in data_error(path)


def test_unsupported_suffix(tmp_path):
    """An existing file of an unknown type is rejected."""
    path = tmp_path / "p.txt"
    path.write_text("hello\n")
    assert "unsupported file type" in data_error(path)


def test_parquet(tmp_path):
    """Parquet files load (strings and chat lists); errors name file:row N."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"prompt": ["one two", "three four"], "id": [1, 2]}), good)
    assert load_prompt_rows(str(good)) == [{"prompt": "one two", "id": 1},
                                           {"prompt": "three four", "id": 2}]
    chat = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": CHAT}]), chat)
    assert load_prompt_rows(str(chat)) == [{"prompt": CHAT}]
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["fine", " "]}), bad)
    assert data_error(bad).startswith(f"{bad}:row 1: empty prompt")
    nokey = tmp_path / "nokey.parquet"
    pq.write_table(pa.table({"text": ["x"]}), nokey)
    assert data_error(nokey).startswith(f"{nokey}:row 0: missing key 'prompt' (keys present:")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    assert data_error(broken).startswith(f"{broken}: not a readable parquet file")


def test_saved_dataset_dirs(tmp_path):
    """Dataset and DatasetDict directories from save_to_disk load by split."""
    import datasets

    single = tmp_path / "single"
    datasets.Dataset.from_list([{"prompt": "p1"}, {"prompt": "p2"}]).save_to_disk(str(single))
    assert [r["prompt"] for r in load_prompt_rows(str(single))] == ["p1", "p2"]

    both = tmp_path / "dict"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"prompt": "t1"}]),
        "test": datasets.Dataset.from_list([{"prompt": "e1"}, {"prompt": ""}]),
    }).save_to_disk(str(both))
    assert load_prompt_rows(str(both)) == [{"prompt": "t1"}]
    assert data_error(both, split="test").startswith(f"{both}:row 1: empty prompt")
    assert "no split 'dev' (splits: train, test)" in data_error(both, split="dev")


def test_missing_path_under_existing_folder(tmp_path, monkeypatch):
    """A missing path whose parent folder exists is a missing file, not a dataset name."""
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    assert data_error("data/prompts") == "data.path: no such file: data/prompts"


def test_unknown_dataset_name_fails_offline():
    """A dataset name that cannot load offline gives one line."""
    message = data_error("tether-no-such-org/no-such-dataset-xyz")
    assert message.startswith("data.path=tether-no-such-org/no-such-dataset-xyz: not a file, "
                              "and not a dataset that loads offline: ")


def test_field_names_the_config_entry(tmp_path):
    """Path errors name the config field the path came from (data.eval_path for eval prompts)."""
    missing = tmp_path / "nope.jsonl"
    assert data_error(missing, field="data.eval_path") == f"data.eval_path: no such file: {missing}"
    empty = write_lines(tmp_path / "empty.jsonl", [""])
    assert data_error(empty, field="data.eval_path") == \
        f"data.eval_path={empty}: no rows (the dataset is empty)"


def test_load_rows_with_own_check(tmp_path):
    """load_rows passes each raw row and its place to the check and keeps what it returns."""
    from orchestrator.data import load_rows

    def check(row, where):
        if "n" not in row:
            raise DataError(f"{where}: no n")
        return {"n": row["n"] * 2, "where": where}

    path = write_lines(tmp_path / "n.jsonl", ['{"n": 1}', "", '{"n": 2}'])
    assert load_rows(path, check) == [{"n": 2, "where": f"{path}:1"}, {"n": 4, "where": f"{path}:3"}]
    bad = write_lines(tmp_path / "bad.jsonl", ['{"n": 1}', '{"m": 1}'])
    with pytest.raises(DataError, match=f"^{re.escape(bad)}:2: no n$"):
        load_rows(bad, check)


# ---- rendering -----------------------------------------------------------------------------

def make_tokenizer(chat_template=None):
    """Build a tiny word-level fast tokenizer offline, with an optional chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "</s>", "hi", "there", "be", "brief"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>")
    if chat_template:
        fast.chat_template = chat_template
    return fast


TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_render_with_chat_template():
    """With a chat template, prompts go through apply_chat_template."""
    tokenizer = make_tokenizer(TEMPLATE)
    assert render_prompt(tokenizer, "hi there") == "<|user|>hi there\n<|assistant|>"
    assert render_prompt(tokenizer, CHAT) == \
        "<|system|>Be brief.\n<|user|>Hi there\n<|assistant|>"


def test_render_without_chat_template():
    """Without a chat template, strings pass through and chats become lines."""
    tokenizer = make_tokenizer()
    assert not getattr(tokenizer, "chat_template", None)
    assert render_prompt(tokenizer, "hi there") == "hi there"
    assert render_prompt(tokenizer, CHAT) == "system: Be brief.\nuser: Hi there\nassistant: "


# ---- loader --------------------------------------------------------------------------------

ROWS = [{"prompt": f"prompt {i}"} for i in range(10)]


def take(loader, n):
    """Return the prompts of the next ``n`` batches."""
    return [[r["prompt"] for r in next(loader)] for _ in range(n)]


def test_loader_deterministic_and_drop_last():
    """Same seed, same batches; each epoch reshuffles and drops the remainder."""
    a, b = PromptLoader(ROWS, 3, seed=7), PromptLoader(ROWS, 3, seed=7)
    assert a.batches_per_epoch == 3
    first, second = take(a, 9), take(b, 9)
    assert first == second
    assert all(len(batch) == 3 for batch in first)
    for epoch in range(3):  # no row repeats within an epoch; one row is dropped
        seen = [p for batch in first[3 * epoch:3 * epoch + 3] for p in batch]
        assert len(set(seen)) == 9
    assert first[0:3] != first[3:6]  # each epoch has its own order
    assert a.epoch == 2
    assert take(PromptLoader(ROWS, 3, seed=8), 3) != first[0:3]


def test_loader_without_shuffle_keeps_order():
    """shuffle=False keeps file order in every epoch."""
    loader = PromptLoader(ROWS, 4, seed=0, shuffle=False)
    assert take(loader, 3) == [[f"prompt {i}" for i in range(4)],
                               [f"prompt {i}" for i in range(4, 8)],
                               [f"prompt {i}" for i in range(4)]]
    assert loader.epoch == 1


@pytest.mark.parametrize("stop", [1, 2, 3, 4, 6, 7])
def test_loader_resume_matches_uninterrupted(stop):
    """A resumed loader continues exactly, also across epoch boundaries."""
    reference = PromptLoader(ROWS, 3, seed=11)
    expected = take(reference, 12)
    first = PromptLoader(ROWS, 3, seed=11)
    before = take(first, stop)
    state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint round trip
    assert set(state) == {"epoch", "index"}
    resumed = PromptLoader(ROWS, 3, seed=11)
    resumed.load_state_dict(state)
    assert before + take(resumed, 12 - stop) == expected
    assert resumed.epoch == reference.epoch


def test_loader_errors():
    """Bad batch sizes and bad states raise DataError."""
    with pytest.raises(DataError, match="batch size 11 is larger than the 10 prompt rows"):
        PromptLoader(ROWS, 11, seed=0)
    with pytest.raises(DataError):
        PromptLoader(ROWS, 0, seed=0)
    loader = PromptLoader(ROWS, 2, seed=0)
    with pytest.raises(DataError):
        loader.load_state_dict({"epoch": 0})
    with pytest.raises(DataError):
        loader.load_state_dict({"epoch": 0, "index": 99})

