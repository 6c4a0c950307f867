"""Load problems: the shipped GSM8K / MATH-500, any local JSONL or Parquet file, or a Hugging Face dataset.

Every source becomes a list of `Problem(id, prompt, reference, meta)`; the prompt is rendered with a
template (templates.py). Malformed data fails before any work starts, with the file, the line (or row)
and the field in the message. The shipped files are checked against their sha256 sums on first load.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from asympo.data.problem import Problem
from asympo.data.templates import Template, check_template, render_prompt

# name → (package holding the files, splits)
BUILTIN_DATASETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "gsm8k": ("asympo.data.gsm8k", ("train", "test")),
    "math500": ("asympo.data.math500", ("test",)),
}
HF_PREFIX = "hf:"
MAPPABLE_FIELDS = ("prompt", "reference", "id")
DEFAULT_FIELDS = {"prompt": "prompt", "reference": "reference"}

Record = dict[str, Any]


def _verify_sha256(path: Path) -> None:
    """Compare a shipped file with its line in sha256sums.txt beside it (once per file and process)."""
    stat = path.stat()
    _verify_sha256_cached(str(path), stat.st_size, stat.st_mtime_ns)


@cache
def _verify_sha256_cached(path: str, size: int, mtime_ns: int) -> None:
    file = Path(path)
    sums_file = file.parent / "sha256sums.txt"
    expected = None
    for line in sums_file.read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        if name == file.name:
            expected = digest
    if expected is None:
        raise ValueError(f"{sums_file}: no sha256 line for {file.name}")
    actual = hashlib.sha256(file.read_bytes()).hexdigest()
    if actual != expected:
        raise ValueError(
            f"{file}: sha256 {actual} differs from {expected} in {sums_file}; the shipped data is damaged"
        )


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Record]]:
    """(line number, object) for every non-blank line; ValueError naming the file and line otherwise."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}, line {lineno}: invalid JSON ({e.msg} at column {e.colno})"
                ) from None
            if not isinstance(record, dict):
                raise ValueError(
                    f"{path}, line {lineno}: expected a JSON object, got {type(record).__name__}"
                )
            yield lineno, record


def _read_parquet(path: Path) -> Iterator[tuple[int, Record]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(
            f"reading {path} needs pyarrow: pip install 'asympo[datasets]' (or pip install pyarrow)"
        ) from e
    yield from enumerate(pq.read_table(path).to_pylist(), start=1)


def _field(record: Record, key: str, where: str, role: str, hint: str = "") -> str:
    """`record[key]` as text; a missing or non-text field is a ValueError naming where and which (and, for
    a missing one, `hint`)."""
    if key not in record:
        raise ValueError(
            f"{where}: missing field {key!r} (the {role}); the record has fields {sorted(record)}{hint}"
        )
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(
            f"{where}: field {key!r} (the {role}) must be text or a number, got {type(value).__name__}"
        )
    return value if isinstance(value, str) else str(value)


# -- the shipped datasets ---------------------------------------------------------------------------------


def _gsm8k(record: Record, where: str) -> tuple[str, str, dict]:
    question = _field(record, "question", where, "question")
    solution = _field(record, "answer", where, "solution")
    if "####" not in solution:
        raise ValueError(f"{where}: field 'answer' has no '#### <final answer>' line")
    reference = solution.rsplit("####", 1)[1].strip().replace(",", "")
    return question, reference, {"question": question, "solution": solution}


def _math500(record: Record, where: str) -> tuple[str, str, dict]:
    question = _field(record, "problem", where, "question")
    reference = _field(record, "answer", where, "reference")
    meta = {k: v for k, v in record.items() if k not in ("problem", "answer")}
    return question, reference, {"question": question, **meta}


_BUILTIN_RECORDS: dict[str, Callable[[Record, str], tuple[str, str, dict]]] = {
    "gsm8k": _gsm8k,
    "math500": _math500,
}


def _load_builtin(name: str, split: str) -> list[tuple[str, str, str, dict]]:
    package, splits = BUILTIN_DATASETS[name]
    if split not in splits:
        raise ValueError(f"dataset {name!r} has splits {list(splits)}, not {split!r}")
    with importlib.resources.as_file(importlib.resources.files(package) / f"{split}.jsonl") as path:
        _verify_sha256(path)
        rows = []
        for lineno, record in read_jsonl(path):
            question, reference, meta = _BUILTIN_RECORDS[name](record, f"{path}, line {lineno}")
            default_id = f"{name}/{split}/{len(rows)}"
            rows.append((str(record.get("unique_id", default_id)), question, reference, meta))
    return rows


# -- user data --------------------------------------------------------------------------------------------


def _check_fields(fields: Mapping[str, str] | None) -> dict[str, str]:
    mapping = dict(DEFAULT_FIELDS)
    if fields is None:
        return mapping
    unknown = sorted(set(fields) - set(MAPPABLE_FIELDS))
    if unknown:
        raise ValueError(
            f"fields: unknown keys {unknown}; valid keys: {list(MAPPABLE_FIELDS)} (each → a column name)"
        )
    for key, column in fields.items():
        if not isinstance(column, str) or not column:
            raise ValueError(f"fields[{key!r}] must be a column name (a non-empty str), got {column!r}")
    mapping.update(fields)
    return mapping


FIELDS_HINT = (
    """; name your dataset's columns with task.fields, e.g. --set task.fields='{"prompt": "question", """
    """"reference": "answer"}'"""
)


def _map_records(
    records: Iterator[tuple[int, Record]], source: str, unit: str, fields: dict[str, str], prefix: str
):
    rows = []
    used = set(fields.values())
    for number, record in records:
        where = f"{source}, {unit} {number}"
        question = _field(record, fields["prompt"], where, "prompt", FIELDS_HINT)
        reference = _field(record, fields["reference"], where, "reference", FIELDS_HINT)
        pid = _field(record, fields["id"], where, "id") if "id" in fields else f"{prefix}/{number}"
        meta = {"question": question, **{k: v for k, v in record.items() if k not in used}}
        rows.append((pid, question, reference, meta))
    return rows


def _load_file(path: Path, fields: dict[str, str]) -> list[tuple[str, str, str, dict]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _map_records(read_jsonl(path), str(path), "line", fields, path.stem)
    if suffix == ".parquet":
        return _map_records(_read_parquet(path), str(path), "row", fields, path.stem)
    raise ValueError(f"{path}: unsupported file type {suffix!r}; expected .jsonl or .parquet")


def _load_hf(spec: str, split: str, fields: dict[str, str]) -> list[tuple[str, str, str, dict]]:
    """`hf:NAME` or `hf:NAME:CONFIG`: a Hugging Face dataset (hub name or local folder) via `datasets`."""
    name, _, config = spec[len(HF_PREFIX) :].partition(":")
    if not name:
        raise ValueError(f"{spec!r}: expected 'hf:NAME' or 'hf:NAME:CONFIG'")
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            f"loading {spec!r} needs the datasets library: pip install 'asympo[datasets]'"
        ) from e
    dataset = datasets.load_dataset(name, config or None, split=split)
    records = ((row, dict(record)) for row, record in enumerate(dataset, start=1))
    return _map_records(records, spec, "row", fields, name.rstrip("/").rsplit("/", 1)[-1])


def load_problems(
    name_or_path: str | Path,
    split: str = "test",
    *,
    fields: Mapping[str, str] | None = None,
    template: Template = "plain",
    tokenizer: Any = None,
    limit: int | None = None,
) -> list[Problem]:
    """Problems from a shipped dataset, a local file or a Hugging Face dataset.

    name_or_path: "gsm8k" (splits train/test), "math500" (test), a path to a .jsonl/.parquet file (one
      split: `split` is ignored), or "hf:NAME[:CONFIG]" (needs the `datasets` extra).
    fields: for files and HF datasets, which column holds the prompt, the reference and optionally the id,
      e.g. {"prompt": "question", "reference": "answer"}; default {"prompt": "prompt", "reference":
      "reference"}. Other columns go to `Problem.meta`.
    template: "plain", "chat" (needs `tokenizer`), "raw", or a function (question) -> prompt.
    limit: keep the first `limit` problems.
    """
    check_template(template, tokenizer)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or an int >= 0, got {limit!r}")
    spec = str(name_or_path)
    if spec in BUILTIN_DATASETS:
        if fields is not None:
            raise ValueError(f"fields applies to local files and HF datasets, not to the shipped {spec!r}")
        rows = _load_builtin(spec, split)
    elif spec.startswith(HF_PREFIX):
        rows = _load_hf(spec, split, _check_fields(fields))
    elif Path(spec).suffix.lower() in (".jsonl", ".parquet") or Path(spec).exists():
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"data file {spec!r} does not exist")
        rows = _load_file(path, _check_fields(fields))
    else:
        raise ValueError(
            f"unknown dataset {spec!r}; valid names: {sorted(BUILTIN_DATASETS)}, a .jsonl or .parquet file, "
            f"or 'hf:NAME[:CONFIG]' for a Hugging Face dataset"
        )
    if limit is not None:
        rows = rows[:limit]
    return [
        Problem(id=pid, prompt=render_prompt(question, template, tokenizer), reference=reference, meta=meta)
        for pid, question, reference, meta in rows
    ]
