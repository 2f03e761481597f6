"""Start a test script in N CPU processes under `accelerate launch`, the one way the tests do it.

accelerate 1.15's `accelerate launch --cpu --num_processes 2` starts ONE process (its simple
launcher); two CPU processes need the torchrun launcher (`--multi_gpu`), which falls back to gloo
on CPU. With `processes=1` the script runs as plain Python (what a one-process user runs).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

__all__ = ["free_port", "launch", "start"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(script: str | Path, args: tuple, processes: int) -> list[str]:
    tail = [str(script), *map(str, args)]
    if processes == 1:
        return [sys.executable, *tail]
    launcher = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu"]
    launcher += ["--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no"]
    launcher += ["--dynamo_backend", "no", "--main_process_port", str(free_port())]
    return [*launcher, *tail]


def start(script: str | Path, *args, processes: int = 2, env: dict | None = None) -> subprocess.Popen:
    """The launched run, not waited for; in a session of its own, so a kill reaches every process."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    return subprocess.Popen(
        _command(script, args, processes),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        start_new_session=True,
    )


def launch(
    script: str | Path, *args, processes: int = 2, timeout: float = 300, env: dict | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run to the end; on timeout kill every process and fail. `check` asserts a zero exit, showing stderr."""
    proc = start(script, *args, processes=processes, env=env)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{processes}-process run of {Path(script).name} timed out:\n" + stderr[-4000:])
    if check:
        assert proc.returncode == 0, stdout[-2000:] + stderr[-4000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
