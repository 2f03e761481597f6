"""Datasets, JSONL files written atomically, and right-padding of id sequences.

Shapes: b batch, n sequence.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "create_mock_dataset",
    "ListDataset",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "read_json_if_exists",
    "write_jsonl",
    "read_jsonl",
    "iter_jsonl",
    "read_records",
    "JsonlAppender",
    "pad_right",
    "encode_example",
    "collate_examples",
]


class ListDataset(Dataset):
    """A map-style dataset over a list (what most stages accept besides any `Dataset`)."""

    def __init__(self, items: Sequence):
        self.items = list(items)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class _MockDataset(Dataset):
    def __init__(self, length: int, output: Callable[[], Any]):
        self.length, self.output = length, output

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        if not 0 <= i < self.length:
            raise IndexError(i)
        return self.output()


def create_mock_dataset(length: int, output: Callable[[], Any] | Any) -> Dataset:
    """A dataset of `length` items, each `output()` (or `output` itself when it is not callable).

    As in the seed README: `create_mock_dataset(100, lambda: (torch.randint(0, 256, (256,)),
    torch.tensor(1)))` gives SFT records `(token_ids, prompt_len)`, and
    `create_mock_dataset(100, lambda: 'mock prompt')` a prompt dataset.
    """
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    return _MockDataset(length, output if callable(output) else (lambda: output))


# --- atomic files: write a temp file in the same folder, fsync, then rename over the target ---


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def read_json_if_exists(path: str | os.PathLike) -> Any:
    """The parsed JSON at `path`, or None when there is no such file."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg})") from None


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    lines = [json.dumps(r, ensure_ascii=False, default=_json_default) for r in records]
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


def iter_jsonl(path: str | os.PathLike, *, ignore_partial_last_line: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, record) for each non-blank line; a bad line is an error naming the file and line.

    `ignore_partial_last_line` skips an unterminated final line (a writer killed mid-line), which is
    how streamed files resume.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such JSONL file: {path}")
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if ignore_partial_last_line and not text.endswith("\n"):
        lines = lines[:-1]
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        yield lineno, record


def read_records(path: str | os.PathLike) -> tuple[list[Any], list[str]]:
    """The records of a `.json` file (a list) or a JSONL file, and where each came from
    (`"file, list item i"` or `"file:line"`), for error messages that name the record."""
    path = Path(path)
    if path.suffix != ".json":
        numbered = list(iter_jsonl(path))
        return [record for _, record in numbered], [f"{path}:{lineno}" for lineno, _ in numbered]
    if not path.exists():
        raise FileNotFoundError(f"no such JSON file: {path}")
    records = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise ValueError(f"{path}: a .json data file must hold a list of records")
    return records, [f"{path}, list item {i}" for i in range(len(records))]


def read_jsonl(path: str | os.PathLike, *, ignore_partial_last_line: bool = False) -> list[Any]:
    """The records of a JSONL file (see `iter_jsonl`)."""
    return [record for _, record in iter_jsonl(path, ignore_partial_last_line=ignore_partial_last_line)]


class JsonlAppender:
    """Streams records to a JSONL file one line at a time, flushed, so a crash loses at most one.

    Opening an existing file first truncates an unterminated last line left by a crash.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                atomic_write_bytes(self.path, data[: data.rfind(b"\n") + 1])
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict):
        self._f.write(json.dumps(record, ensure_ascii=False, default=_json_default) + "\n")
        self._f.flush()

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def pad_right(seqs: Sequence[Sequence[int] | Tensor], pad_id: int, *, length: int | None = None) -> tuple[Tensor, Tensor]:
    """Right-pad id sequences into (ids (b, n) long, is_real (b, n) bool)."""
    tensors = [torch.as_tensor(s, dtype=torch.long).reshape(-1) for s in seqs]
    n = max([t.numel() for t in tensors], default=0) if length is None else length
    ids = torch.full((len(tensors), n), pad_id, dtype=torch.long)
    is_real = torch.zeros((len(tensors), n), dtype=torch.bool)
    for row, t in enumerate(tensors):
        if t.numel() > n:
            raise ValueError(f"sequence {row} has {t.numel()} tokens, more than the padded length {n}")
        ids[row, : t.numel()] = t
        is_real[row, : t.numel()] = True
    return ids, is_real


# --- prompt/response examples: the shape every trainer feeds the model ---


def encode_example(
    tokenizer,
    prompt: str | Sequence[int] | Tensor,
    response: str | Sequence[int] | Tensor,
    *,
    add_eos: bool = True,
    max_len: int | None = None,
) -> tuple[list[int], int]:
    """(ids, prompt_len) for one example: prompt ids, then response ids, then EOS if the tokenizer has one.

    Strings go through the tokenizer; ids (lists or tensors) are taken as they are. An example longer
    than `max_len` loses response tokens from its end; one whose prompt leaves no room for a single
    response token is a ValueError (callers skip and count those).
    """
    from .tokenizer import to_id_list

    p = tokenizer.encode(prompt) if isinstance(prompt, str) else to_id_list(prompt)
    r = tokenizer.encode(response) if isinstance(response, str) else to_id_list(response)
    eos = getattr(tokenizer, "eos_id", None) if tokenizer is not None else None
    if add_eos and eos is not None and (not r or r[-1] != eos):
        r = r + [eos]
    if max_len is not None:
        if len(p) >= max_len:
            raise ValueError(f"prompt of {len(p)} tokens leaves no room for a response within max_len={max_len}")
        r = r[: max_len - len(p)]
    return p + r, len(p)


def collate_examples(examples: Sequence[tuple[Sequence[int], int]], pad_id: int) -> dict[str, Tensor]:
    """Right-padded batch of (ids, prompt_len) examples: input_ids (b, n) and is_response (b, n).

    Right padding keeps every real token at the same position it has alone, so a causal model needs
    no attention mask and per-row results do not depend on the batch.
    """
    input_ids, is_real = pad_right([ids for ids, _ in examples], pad_id)
    positions = torch.arange(input_ids.shape[1])
    prompt_lens = torch.tensor([int(pl) for _, pl in examples])
    is_response = is_real & (positions[None, :] >= prompt_lens[:, None])
    return {"input_ids": input_ids, "is_response": is_response}
