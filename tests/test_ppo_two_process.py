"""PPO's reward normalisation and adaptive-KL mean are reduced across processes (issue #11, defect 8):
under two processes both ranks hold the statistics one process would compute over the union."""

import json
import math
from pathlib import Path

import pytest
import torch
from launcher import launch

from self_rewarding_lm_pytorch.core.losses import AdaptiveKLController
from self_rewarding_lm_pytorch.rl.ppo import PPOConfig
from self_rewarding_lm_pytorch.rl.value_head import RunningMoments

pytestmark = pytest.mark.distributed

SCRIPT = Path(__file__).parent / "scripts" / "two_process_ppo_stats.py"


def test_two_ranks_hold_the_union_statistics(tmp_path):
    launch(SCRIPT, tmp_path)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in reports] == [2, 2]

    # both ranks hold identical statistics
    for key in ("moments", "kl", "kl_coef"):
        assert reports[0][key] == reports[1][key], key

    # equal to one process's over the union of the scored rollouts
    union = [s for r in reports for s in r["scores"] if not math.isnan(s)]
    expected = RunningMoments()
    expected.update(torch.tensor(union))
    assert reports[0]["moments"]["count"] == expected.count == 4
    assert reports[0]["moments"]["mean"] == pytest.approx(expected.mean, abs=1e-9)
    assert reports[0]["moments"]["m2"] == pytest.approx(expected.m2, abs=1e-9)

    scored_kl = [k for r in reports for k, s in zip(r["seq_kl"], r["scores"], strict=True) if not math.isnan(s)]
    mean_kl = sum(scored_kl) / len(scored_kl)
    assert reports[0]["kl"] == pytest.approx(mean_kl, abs=1e-5)
    config = PPOConfig()
    controller = AdaptiveKLController(config.init_kl_coef, config.target_kl, config.horizon)
    controller.update(mean_kl, len(scored_kl))
    assert reports[0]["kl_coef"] == pytest.approx(controller.value, rel=1e-6)
