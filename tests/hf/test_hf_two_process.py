"""The whole pipeline on a tiny Hugging Face model (LoRA included) under two processes ends with the
weights of one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.distributed

SCRIPT = str(Path(__file__).parent / "hf_pipeline.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(model_folder, out: Path, processes: int, *extra: str):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(SCRIPT).parent), env.get("PYTHONPATH", "")])
    args = [SCRIPT, str(model_folder), str(out), *extra]
    if processes == 1:
        command = [sys.executable, *args]
    else:
        command = [
            sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu",
            "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(free_port()), *args,
        ]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_two_processes_run_the_hf_pipeline_to_the_weights_of_one(hf_folders, tmp_path, lora):
    from safetensors.torch import load_file

    extra = ("lora",) if lora else ()
    launch(hf_folders["llama"], tmp_path / "one", 1, *extra)
    launch(hf_folders["llama"], tmp_path / "two", 2, *extra)
    expected = load_file(str(tmp_path / "one" / "weights-rank0.safetensors"))
    for rank in (0, 1):
        got = load_file(str(tmp_path / "two" / f"weights-rank{rank}.safetensors"))
        assert got.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5, msg=key)
