"""Faults a run must survive (issue #11): SIGTERM/SIGINT mid-training, and a non-finite loss."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from launcher import start

from self_rewarding_lm_pytorch import (
    NonFiniteLossError,
    TrainingStopped,
    make_accelerator,
    train,
)
from self_rewarding_lm_pytorch.training import checkpoint as ckpt

SCRIPTS = Path(__file__).resolve().parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
import train_until_signalled as script  # noqa: E402
from fault_helpers import assert_same_weights, every_number_in, train_script_model, weights  # noqa: E402

# --- SIGTERM / SIGINT -------------------------------------------------------------------------


@pytest.mark.e2e
def test_sigterm_writes_a_checkpoint_exits_nonzero_and_resumes_to_the_same_weights(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), str(SCRIPTS)])}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "train_until_signalled.py"), str(run_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(1200):  # the script touches `ready` once it trains
            if (tmp_path / "ready-rank0").exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert (tmp_path / "ready-rank0").exists(), proc.communicate()[1]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by signal 15" in err
    stopped_at = ckpt.latest_checkpoint(run_dir)
    assert stopped_at is not None
    step = int(stopped_at.name.split("-")[1])
    assert 1 <= step < script.NUM_STEPS
    assert not (run_dir / "model.safetensors").exists()  # not finished

    resumed, result = train_script_model(run_dir, resume=True)
    straight, _ = train_script_model(tmp_path / "straight")
    assert result.steps == script.NUM_STEPS
    assert_same_weights(weights(straight), weights(resumed))


class SignalsItself(script.SlowTask):
    def __init__(self, at_call: int, signum: int):
        super().__init__(None)
        self.at_call, self.signum = at_call, signum

    def step(self, model, x):
        if self.calls + 1 == self.at_call:
            os.kill(os.getpid(), self.signum)  # handled at once: the flag is set mid-step
        return super().step(model, x)


@pytest.mark.stage
def test_sigint_stops_at_the_step_boundary_and_resumes_to_the_same_weights(tmp_path):
    with pytest.raises(TrainingStopped) as info:
        train_script_model(tmp_path / "run", task=SignalsItself(7, signal.SIGINT))
    assert info.value.code == 128 + signal.SIGINT
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step-00000007"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    resumed, _ = train_script_model(tmp_path / "run", resume=True)
    straight, _ = train_script_model(tmp_path / "straight")
    assert_same_weights(weights(straight), weights(resumed))


# --- a non-finite loss --------------------------------------------------------------------------


class GoesNonFinite(script.SlowTask):
    """Finite until call `at_call`; then a NaN loss, or a finite loss whose gradient is NaN."""

    def __init__(self, at_call: int, kind: str):
        super().__init__(None)
        self.at_call, self.kind, self.before = at_call, kind, None

    def step(self, model, x):
        loss, metrics = super().step(model, x)
        if self.calls == self.at_call:
            self.before = weights(model)
            if self.kind == "loss":
                return loss * float("nan"), metrics
            weight = next(model.parameters())
            return loss + torch.sqrt((weight * 0).sum()), metrics  # sqrt(0) = 0, its gradient is not finite
        return loss, metrics


@pytest.mark.stage
@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_a_non_finite_loss_stops_before_the_update_and_leaves_files_finite(tmp_path, kind):
    from self_rewarding_lm_pytorch import TrainConfig

    config = TrainConfig(num_train_steps=10, batch_size=4, learning_rate=1e-2, checkpoint_every=2, progress=False)
    model, task = script.make_model(), GoesNonFinite(5, kind)
    with pytest.raises(NonFiniteLossError, match="step 5") as info:
        train(model, task, script.make_data(), config, accelerator=make_accelerator({"cpu": True}), run_dir=tmp_path)
    assert str(tmp_path) in str(info.value) and "train" in str(info.value)  # the stage (desc) and where
    assert_same_weights(task.before, weights(model), atol=0)  # the update was not applied
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.name == "step-00000004"
    ckpt.load_training_state(latest, model=script.make_model())  # intact and loadable
    assert all(math.isfinite(v) for v in every_number_in(tmp_path))


@pytest.mark.distributed
def test_under_two_processes_a_signal_to_one_stops_both_at_the_same_step(tmp_path):
    """SIGTERM reaches only the second process; the reduced flag stops both after the same step,
    and the main process writes that step's checkpoint."""
    run_dir = tmp_path / "run"
    pythonpath = os.pathsep.join([str(Path(__file__).parent.parent), str(SCRIPTS)])
    proc = start(SCRIPTS / "train_until_signalled.py", run_dir, env={"PYTHONPATH": pythonpath})
    try:
        for _ in range(2400):
            if (tmp_path / "ready-rank1").exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert (tmp_path / "ready-rank1").exists(), proc.communicate()[1][-4000:]
        os.kill(int((tmp_path / "ready-rank1").read_text()), signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0, err[-2000:]
    messages = [(tmp_path / f"stopped-rank{r}").read_text() for r in (0, 1)]
    steps = [int(m.split("after step ")[1].split(";")[0]) for m in messages]
    assert steps[0] == steps[1], messages
    assert ckpt.latest_checkpoint(run_dir).name == f"step-{steps[0]:08d}"
