"""Faults a run must survive (issue #11): two runs started on one checkpoints folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from self_rewarding_lm_pytorch import (
    RunLockedError,
)
from self_rewarding_lm_pytorch.core.run_lock import LOCK_FILE, RunLock

pytestmark = pytest.mark.stage

SCRIPTS = Path(__file__).resolve().parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
from fault_helpers import pipeline  # noqa: E402

# --- two runs on one folder --------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from self_rewarding_lm_pytorch.core.run_lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_run_on_a_live_folder_fails_at_once_naming_the_other_process(tmp_path):
    folder = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(folder)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError) as info:
            pipeline(folder)()
        assert f"process {holder.pid} on host {socket.gethostname()}" in str(info.value)
        assert isinstance(info.value, RuntimeError)
        assert not (folder / "manifest.json").exists()  # refused before anything was written
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder.mkdir()
    (folder / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "x"}))
    with caplog.at_level("WARNING"):
        pipeline(folder)()
    assert f"lock left by process {dead.pid}" in caplog.text
    assert not (folder / LOCK_FILE).exists()  # released on exit
    assert len(json.loads((folder / "manifest.json").read_text())["finished"]) == 2


def test_the_lock_is_released_when_a_run_fails_and_honoured_from_another_host(tmp_path):
    folder = tmp_path / "run"
    with RunLock(folder):
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (folder / LOCK_FILE).exists()
    (folder / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "another-host", "started": "x"}))
    with pytest.raises(RunLockedError, match="another-host"):
        RunLock(folder).acquire()


def test_srlm_run_on_a_locked_folder_prints_the_owner_and_exits_1(tmp_path, capsys):
    from self_rewarding_lm_pytorch.cli import main

    examples = Path(__file__).resolve().parent.parent / "examples"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "another-host", "started": "x"}))
    assert main(["run", str(examples / "sft.toml"), "--set", f"run_dir={run_dir}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("srlm run: error: ") and "process 1 on host another-host" in err
