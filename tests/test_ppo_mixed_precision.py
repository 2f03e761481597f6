"""PPO under bf16 mixed precision (issue #11, defect 4): the reference runs under the policy's autocast,
so the step-0 KL is exactly 0, and rollouts are sampled in the precision the policy trains in."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.stage

SCRIPT = Path(__file__).parent / "scripts" / "ppo_bf16_step.py"


@pytest.mark.parametrize("temperature", [[], ["0.8"]])
def test_bf16_step_zero_kl_is_exactly_zero_and_rollouts_are_sampled_in_bf16(temperature):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *temperature], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["kl"] == 0.0
    assert report["sampled_dtypes"] == ["torch.bfloat16"]
