"""One run per folder: a lock file naming the process that runs it.

Two runs writing one checkpoints folder would interleave checkpoints and manifests. The lock file
`run.lock` holds {"pid", "host", "started"} and is created atomically complete (written to a temp
file, then hard-linked into place, which fails if the lock exists). A second run finds it and fails
at once with `RunLockedError`, unless the process it names is gone (same host, no such pid): then
the stale lock is taken over with a warning. A lock from another host cannot be checked from here,
so it is honoured; the message says how to remove it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path

__all__ = ["LOCK_FILE", "RunLock", "RunLockedError"]

LOCK_FILE = "run.lock"
log = logging.getLogger(__name__)


class RunLockedError(RuntimeError):
    """The checkpoints folder is being run by another live process (named in the message)."""


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class RunLock:
    """`with RunLock(folder):` holds `folder/run.lock` for this process; released on exit."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.held = False

    def _owner(self) -> dict | None:
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable: not written by this class, treat as stale
        return owner if isinstance(owner, dict) else {}

    def _is_stale(self, owner: dict) -> bool:
        pid = owner.get("pid")
        if not isinstance(pid, int):
            return True
        return owner.get("host") == socket.gethostname() and (pid == os.getpid() or not _process_is_alive(pid))

    def acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{LOCK_FILE}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f)
                f.flush()
                os.fsync(f.fileno())
            for _ in range(3):  # a stale lock is moved aside, then the link is retried
                try:
                    os.link(tmp, self.path)  # atomic, and fails if the lock exists
                    self.held = True
                    return self
                except FileExistsError:
                    owner = self._owner()
                    if owner is None:
                        continue  # released meanwhile
                    if not self._is_stale(owner):
                        raise RunLockedError(
                            f"{self.folder} is being run by process {owner.get('pid')} on host "
                            f"{owner.get('host')} (since {owner.get('started')}); wait for it to finish, or "
                            f"use another checkpoints_folder. If that process is gone, delete {self.path}."
                        ) from None
                    log.warning(
                        "%s: taking over a lock left by process %s on %s, which is no longer running",
                        self.folder,
                        owner.get("pid"),
                        owner.get("host"),
                    )
                    aside = self.path.with_name(f".{LOCK_FILE}.stale-{os.getpid()}")
                    try:
                        os.replace(self.path, aside)  # only one taker moves this lock file
                        aside.unlink(missing_ok=True)
                    except FileNotFoundError:
                        pass
            raise RunLockedError(f"{self.folder}: could not take {self.path} (other runs keep taking it)")
        finally:
            Path(tmp).unlink(missing_ok=True)

    def release(self):
        if self.held:
            owner = self._owner()
            if owner is not None and owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
