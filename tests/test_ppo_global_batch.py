"""Global-batch PPO: two processes make the update of one process holding both processes' rollouts
(the same rollouts, scores, whitening, minibatches and token means), so they end with its weights."""

import json
from pathlib import Path

import pytest
import torch
from launcher import launch
from safetensors.torch import load_file

pytestmark = pytest.mark.distributed

SCRIPT = Path(__file__).parent / "scripts" / "two_process_ppo_stage.py"


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("reward", ["callable", "self_judge"])
def test_two_processes_train_the_ppo_weights_of_one(tmp_path, reward):
    launch(SCRIPT, tmp_path / "one", reward, processes=1, timeout=300)
    launch(SCRIPT, tmp_path / "two", reward, processes=2, timeout=300)

    # the same rollouts, in the same (global row) order, with the same scores
    one, two = records(tmp_path / "one" / "rollouts.jsonl"), records(tmp_path / "two" / "rollouts.jsonl")
    assert one == two
    assert len(one) == 12 and any(r["score"] is None for r in one) == (reward == "callable")

    # the same global statistics
    for a, b in zip(
        records(tmp_path / "one" / "metrics.jsonl"), records(tmp_path / "two" / "metrics.jsonl"), strict=True
    ):
        assert a.keys() == b.keys()
        for key in a:
            if not key.startswith("time/"):
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key

    expected = load_file(str(tmp_path / "one" / "weights-rank0.safetensors"))
    for rank in (0, 1):
        got = load_file(str(tmp_path / "two" / f"weights-rank{rank}.safetensors"))
        assert got.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=5e-6, msg=key)  # measured: 7.9e-7
    initial = load_file(str(tmp_path / "one" / "initial.safetensors"))
    assert any(not torch.equal(initial[key], expected[key]) for key in expected), "PPO trained nothing"


TRAINER_SCRIPT = Path(__file__).parent / "scripts" / "two_process_ppo_trainer.py"


def test_uneven_shares_of_the_global_batch_train_the_weights_of_one_process(tmp_path):
    """PPOTrainer used directly, the processes holding 3 and 2 of 5 rollouts: the same responses (sampled by
    global row), stats and weights as one process with all 5, including a minibatch of one row."""
    launch(TRAINER_SCRIPT, tmp_path / "one", processes=1, timeout=300)
    launch(TRAINER_SCRIPT, tmp_path / "two", processes=2, timeout=300)
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    two = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for step, expected in enumerate(one):
        assert "ppo/loss/total" in expected["stats"]  # every step trained (one of the 5 rollouts is unscored)
        assert two[0][step]["responses"] + two[1][step]["responses"] == expected["responses"]
        for rank in (0, 1):
            got = two[rank][step]["stats"]
            for key, value in expected["stats"].items():
                if not key.startswith("time/"):
                    assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, rank, key)
    expected = load_file(str(tmp_path / "one" / "weights-rank0.safetensors"))
    for rank in (0, 1):
        got = load_file(str(tmp_path / "two" / f"weights-rank{rank}.safetensors"))
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=5e-6, msg=key)  # measured: 5.3e-7
