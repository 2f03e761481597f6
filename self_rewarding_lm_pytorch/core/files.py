"""Files written atomically (temp file, fsync, rename) and JSON/JSONL records read with errors
that name the file and line.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from torch import Tensor

__all__ = [
    "JsonlAppender",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_path",
    "iter_jsonl",
    "naming_path",
    "read_json_if_exists",
    "read_jsonl",
    "read_records",
    "resume_jsonl",
    "write_jsonl",
]


def fsync_path(path: Path) -> None:
    """Flush a file (or a folder's entry list) to disk, so a rename after it cannot expose stale bytes."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # some filesystems do not open folders; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """THE atomic write: `write(tmp)` to a temp file beside `path`, fsync, rename over `path`.

    The target is never half-written: a crash leaves the old file (or none) and at worst a hidden
    temp file, which is removed when the write itself fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except OSError as err:  # disk full, permissions: the target is untouched; say which file failed
        tmp.unlink(missing_ok=True)
        raise naming_path(err, path) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)  # the rename itself survives a power cut
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def naming_path(err: OSError, path: str | os.PathLike) -> OSError:
    """`err` with the file it concerns (errno kept), for errors like a bare `OSError(ENOSPC)`."""
    if err.filename is not None:
        return err
    code = err.errno
    if code is None and len(err.args) == 1 and isinstance(err.args[0], int):
        code = err.args[0]  # OSError(ENOSPC) keeps the number in args only
    reason = err.strerror or (os.strerror(code) if code is not None else str(err) or "write failed")
    return OSError(code, reason, str(path))


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


def resume_jsonl(path: str | os.PathLike, keep: Callable[[list[Any]], list[Any]]) -> list[Any]:
    """THE resume of a streamed JSONL file: the records `keep` returns (those of finished work, e.g. up
    to the last checkpoint's step), with the file rewritten atomically to exactly them when `keep`
    drops any or a crash left a partial last line. A missing file is no records.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = read_jsonl(path, ignore_partial_last_line=True)
    kept = keep(records)
    if len(kept) != len(records) or not path.read_bytes().endswith(b"\n"):
        write_jsonl(path, kept)
    return kept


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
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (the writer owns it; close() / __exit__ release it)

    def write(self, record: dict):
        self._f.write(json.dumps(record, ensure_ascii=False, default=_json_default) + "\n")
        self._f.flush()

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
