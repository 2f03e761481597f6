"""Two processes (gloo on CPU) train the same weights as one process on the same global batches,
and only the main process writes checkpoints, metrics and the final model.
Launched by tests/launcher.py (the torchrun launcher; gloo on CPU).
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from launcher import launch
from safetensors.torch import load_file

pytestmark = pytest.mark.distributed

SCRIPT = Path(__file__).parent / "scripts" / "two_process_train.py"


def load_script():
    spec = importlib.util.spec_from_file_location("two_process_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launch_two(out_dir: Path, crash_at_call: int):
    launch(SCRIPT, out_dir, crash_at_call, timeout=180)


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
