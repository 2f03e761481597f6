"""Two processes (gloo on CPU) train the same weights as one process on the same global batches,
and only the main process writes checkpoints, metrics and the final model.

accelerate 1.15's `accelerate launch --cpu --num_processes 2` starts ONE process (its simple launcher);
two CPU processes need the torchrun launcher (`--multi_gpu`), which falls back to gloo on CPU.
"""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.distributed

SCRIPT = Path(__file__).parent / "scripts" / "two_process_train.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_script():
    spec = importlib.util.spec_from_file_location("two_process_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launch_two(out_dir: Path, crash_at_call: int):
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.accelerate_cli",
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(SCRIPT),
        str(out_dir),
        str(crash_at_call),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    # A new session, so that on timeout the launcher and both workers are killed together.
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail("two-process run timed out:\n" + stderr[-4000:])
    assert proc.returncode == 0, stdout[-2000:] + stderr[-4000:]


def metrics(run_dir: Path):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_and_only_main_writes(tmp_path):
    """The two processes crash inside step 5 (after the step-3 checkpoint) and resume; the one-process
    baseline runs straight. Validation (5 items, split unevenly) runs every 3 steps."""
    script = load_script()
    launch_two(tmp_path / "two", crash_at_call=5)
    single = script.run(tmp_path / "one", dict(cpu=True))

    reports = [json.loads((tmp_path / "two" / f"report-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["num_processes"] for r in reports] == [2, 2] and reports[0]["backend"] == "gloo"
    steps, every = script.NUM_STEPS, script.CHECKPOINT_EVERY
    # main: a checkpoint every 3 steps (steps 3 and 6, the end); a metrics line per step and per validation,
    # plus step 4's line, written before the crash, dropped on resume and written again; the final model
    # plus one model file per checkpoint. The other process writes nothing.
    written = ("checkpoint_saves", "metric_writes", "model_saves")
    assert [reports[0][k] for k in written] == [steps // every, steps + steps // every + 1, steps // every + 1]
    assert [reports[1][k] for k in written] == [0, 0, 0]
    assert single["checkpoint_saves"] == steps // every

    w0, w1 = (load_file(str(tmp_path / "two" / f"weights-rank{r}.safetensors")) for r in (0, 1))
    w_single = load_file(str(tmp_path / "one" / "weights-rank0.safetensors"))
    first_layer = next(k for k in w0 if k.endswith("weight") and "layers" in k)
    assert not torch.allclose(w0[first_layer], script.make_model().state_dict()[first_layer])  # it trained
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k  # DDP keeps replicas bitwise identical
        torch.testing.assert_close(w0[k], w_single[k], atol=1e-5, rtol=0, msg=k)

    two, one = metrics(tmp_path / "two" / "run"), metrics(tmp_path / "one" / "run")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3, 3, 4, 5, 6, 6]
    for a, b in zip(two, one, strict=True):
        assert a.keys() == b.keys()
        assert [a[k] for k in a] == pytest.approx([b[k] for k in a], abs=1e-5)
    assert "valid/loss" in two[3]
    assert sorted(p.name for p in (tmp_path / "two" / "run" / "checkpoint").iterdir()) == [
        f"step-{s:08d}" for s in range(every, steps + 1, every)
    ]
