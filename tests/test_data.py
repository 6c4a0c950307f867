"""Datasets and the loader: shipped files and their checksums, local files, templates, malformed data."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import types
from importlib.resources import files
from pathlib import Path

import pytest

import asympo.data
from asympo.data import BOXED_INSTRUCTION, Problem, load_problems
from asympo.data.loaders import _verify_sha256_cached
from asympo.data.problem import Problem as ProblemRecord
from asympo.data.templates import render_prompt

DATA_DIRS = {"gsm8k": files("asympo.data.gsm8k"), "math500": files("asympo.data.math500")}
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


# -- shipped datasets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DATA_DIRS))
def test_shipped_files_match_sums_and_sources(name):
    folder = Path(str(DATA_DIRS[name]))
    sums = dict(
        reversed(line.split("  ", 1)) for line in (folder / "sha256sums.txt").read_text().splitlines() if line
    )
    assert {"test.jsonl", "LICENSE"} <= set(sums)
    sources = (folder / "SOURCES.md").read_text()
    for file, digest in sums.items():
        assert hashlib.sha256((folder / file).read_bytes()).hexdigest() == digest, file
        row = next(line for line in sources.splitlines() if line.startswith(f"| {file} "))
        assert digest in row, f"SOURCES.md disagrees with sha256sums.txt for {file}"
        if SHARED.is_dir():  # the project's read-only originals, where this checkout has them
            assert (SHARED / name / file).read_bytes() == (folder / file).read_bytes()
    assert "MIT" in (folder / "LICENSE").read_text()


def test_gsm8k_splits():
    test, train = load_problems("gsm8k", "test"), load_problems("gsm8k", "train")
    assert (len(test), len(train)) == (1319, 7473)
    assert len({p.id for p in test}) == 1319
    first = test[0]
    assert isinstance(first, ProblemRecord) and Problem is ProblemRecord
    assert first.id == "gsm8k/test/0"
    assert first.reference == "18"
    assert first.prompt == first.meta["question"] + "\n\n" + BOXED_INSTRUCTION
    assert first.meta["solution"].endswith("#### 18")
    for p in test + train:
        assert re.fullmatch(r"-?\d+", p.reference), p  # integers, thousands commas removed
        assert p.reference == p.meta["solution"].rsplit("####", 1)[1].strip().replace(",", "")


def test_math500():
    problems = load_problems("math500")
    assert len(problems) == 500
    first = problems[0]
    assert first.id == "test/precalculus/807.json"
    assert first.reference == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first.meta["subject"] == "Precalculus" and first.meta["level"] == 2
    assert {p.meta["level"] for p in problems} == {1, 2, 3, 4, 5}
    raw = [json.loads(line) for line in (Path(str(DATA_DIRS["math500"])) / "test.jsonl").open()]
    assert [p.reference for p in problems] == [r["answer"] for r in raw]


def test_builtin_options_and_errors():
    assert [p.id for p in load_problems("gsm8k", limit=3)] == ["gsm8k/test/0", "gsm8k/test/1", "gsm8k/test/2"]
    assert load_problems("gsm8k", limit=0) == []
    raw = load_problems("math500", template="raw", limit=1)[0]
    assert raw.prompt == raw.meta["question"]
    custom = load_problems("gsm8k", template=lambda q: f"Q: {q}\nA:", limit=1)[0]
    assert custom.prompt == f"Q: {custom.meta['question']}\nA:"
    with pytest.raises(ValueError, match=r"'math500' has splits \['test'\], not 'train'"):
        load_problems("math500", "train")
    with pytest.raises(ValueError, match=r"unknown dataset 'gsm9k'; valid names: \['gsm8k', 'math500'\]"):
        load_problems("gsm9k")
    with pytest.raises(ValueError, match="fields applies to local files"):
        load_problems("gsm8k", fields={"prompt": "question"})
    with pytest.raises(ValueError, match="unknown template 'fancy'"):
        load_problems("gsm8k", template="fancy")
    with pytest.raises(ValueError, match="limit must be"):
        load_problems("gsm8k", limit=-1)


def test_damaged_shipped_file_is_detected(tmp_path):
    folder = Path(str(DATA_DIRS["math500"]))
    shutil.copy(folder / "sha256sums.txt", tmp_path)
    damaged = tmp_path / "test.jsonl"
    damaged.write_bytes((folder / "test.jsonl").read_bytes().replace(b"Precalculus", b"Precalculux", 1))
    with pytest.raises(ValueError, match=r"test\.jsonl: sha256 .* differs .* damaged"):
        _verify_sha256_cached(str(damaged), damaged.stat().st_size, damaged.stat().st_mtime_ns)


# -- local files --------------------------------------------------------------------------------------


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_local_jsonl_with_field_mapping(tmp_path):
    path = _write(
        tmp_path / "mine.jsonl",
        [
            json.dumps({"question": "1+1?", "answer": 2, "topic": "add"}),
            "",
            json.dumps({"question": "2+2?", "answer": "4", "topic": "add"}),
        ],
    )
    problems = load_problems(path, fields={"prompt": "question", "reference": "answer"}, template="raw")
    assert [(p.id, p.prompt, p.reference) for p in problems] == [
        ("mine/1", "1+1?", "2"),
        ("mine/3", "2+2?", "4"),
    ]
    assert problems[0].meta == {"question": "1+1?", "topic": "add"}

    with_ids = _write(tmp_path / "ids.jsonl", [json.dumps({"prompt": "p", "reference": "r", "key": "a-1"})])
    (problem,) = load_problems(str(with_ids), fields={"id": "key"})
    assert problem.id == "a-1" and problem.prompt == "p\n\n" + BOXED_INSTRUCTION


@pytest.mark.parametrize(
    ("lines", "fields", "pattern"),
    [
        (
            ['{"prompt": "a", "reference": "1"}', '{"prompt": "b", "reference": '],
            None,
            r"line 2: invalid JSON",
        ),
        (
            ['{"prompt": "a", "reference": "1"}', '["a", "1"]'],
            None,
            r"line 2: expected a JSON object, got list",
        ),
        (
            ['{"prompt": "a", "reference": "1"}', "", '{"prompt": "c"}'],
            None,
            r"line 3: missing field 'reference'",
        ),
        (
            ['{"q": "a", "reference": "1"}'],
            {"prompt": "question"},
            r"line 1: missing field 'question' \(the prompt\); the record has fields \['q', 'reference'\]; "
            r"name your dataset's columns with task.fields",
        ),
        (['{"prompt": "a", "reference": null}'], None, r"line 1: field 'reference' .* got NoneType"),
        (['{"prompt": ["a"], "reference": "1"}'], None, r"line 1: field 'prompt' .* got list"),
    ],
)
def test_malformed_jsonl_names_file_line_and_field(tmp_path, lines, fields, pattern):
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ", " + pattern):
        load_problems(path, fields=fields)


def test_local_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        load_problems(tmp_path / "missing.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"unsupported file type '\.csv'"):
        load_problems(tmp_path / "data.csv")
    path = _write(tmp_path / "ok.jsonl", ['{"prompt": "a", "reference": "1"}'])
    with pytest.raises(ValueError, match=r"unknown keys \['answer'\]"):
        load_problems(path, fields={"answer": "x"})


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"problem": ["1+2?", "3+4?"], "solution": ["3", None]}), path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + r", row 2: field 'solution'"):
        load_problems(path, fields={"prompt": "problem", "reference": "solution"})
    pq.write_table(pa.table({"problem": ["1+2?"], "solution": ["3"]}), path)
    (p,) = load_problems(path, fields={"prompt": "problem", "reference": "solution"}, template="raw")
    assert (p.id, p.prompt, p.reference) == ("p/1", "1+2?", "3")


def test_parquet_without_pyarrow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(ImportError, match=r"asympo\[datasets\]"):
        load_problems(tmp_path / "x.parquet")


def test_hf_dataset_from_local_folder(tmp_path):
    pytest.importorskip("datasets")
    _write(tmp_path / "test.jsonl", [json.dumps({"question": "5-2?", "answer": "3"})])
    (p,) = load_problems(f"hf:{tmp_path}", "test", fields={"prompt": "question", "reference": "answer"})
    assert p.reference == "3" and p.prompt.startswith("5-2?")
    bad = tmp_path / "bad"
    bad.mkdir()
    _write(bad / "test.jsonl", [json.dumps({"question": "5-2?", "solution": "3"})])
    with pytest.raises(ValueError, match=r", row 1: missing field 'answer'"):
        load_problems(f"hf:{bad}", fields={"prompt": "question", "reference": "answer"})


def test_hf_dataset_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'asympo\[datasets\]'"):
        load_problems("hf:openai/gsm8k:main")


# -- templates ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {"[UNK]": 0, "<|user|>": 1, "<|assistant|>": 2}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return tok


def test_chat_template(chat_tokenizer):
    (p,) = load_problems("gsm8k", template="chat", tokenizer=chat_tokenizer, limit=1)
    assert p.prompt == f"<|user|>{p.meta['question']}\n\n{BOXED_INSTRUCTION}\n<|assistant|>"
    assert (
        render_prompt("Q", "chat", chat_tokenizer, instruction="Say it.")
        == "<|user|>Q\n\nSay it.\n<|assistant|>"
    )


def test_chat_template_errors(chat_tokenizer, monkeypatch):
    with pytest.raises(ValueError, match="needs a tokenizer"):
        load_problems("gsm8k", template="chat")
    monkeypatch.setattr(chat_tokenizer, "chat_template", None)
    with pytest.raises(ValueError, match="has no chat template"):
        load_problems("gsm8k", template="chat", tokenizer=chat_tokenizer)


def test_package_exports():
    assert asympo.data.load_problems is load_problems
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        _ = asympo.data.no_such_thing


def test_arithmetic_task_is_reexported_lazily(monkeypatch):
    fake = types.ModuleType("asympo.data.arithmetic")
    fake.ArithmeticTask = object()
    monkeypatch.setitem(sys.modules, "asympo.data.arithmetic", fake)
    # Another test may have imported the real submodule, which also binds it as a package attribute.
    monkeypatch.delattr(asympo.data, "arithmetic", raising=False)
    assert asympo.data.ArithmeticTask is fake.ArithmeticTask
    assert asympo.data.arithmetic is fake
    with pytest.raises(AttributeError, match="no attribute 'NotThere'"):
        _ = asympo.data.NotThere
