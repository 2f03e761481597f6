"""Sharded training (FSDP2, `fsdp=True`): two CPU processes (gloo) train the weights one process trains
on the same global batches, each holding about half of the parameters; a process killed mid-run (SIGKILL)
and a rerun resume from the sharded checkpoint to the same weights. PPO under fsdp equals PPO under DDP.
"""

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import torch
from launcher import launch
from safetensors.torch import load_file

pytestmark = pytest.mark.distributed

SCRIPT = Path(__file__).parent / "scripts" / "fsdp_train.py"


def load_script(path: Path = SCRIPT):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launch_two(*args, script: Path = SCRIPT) -> subprocess.CompletedProcess:
    """Two processes; the exit code is the caller's to check (a killed run is expected to fail)."""
    return launch(script, *args, timeout=400, check=False)


def assert_same_weights(a: Path, b: Path, atol: float, skip: tuple[str, ...] = ()):
    wa, wb = load_file(str(a)), load_file(str(b))
    assert sorted(wa) == sorted(wb)
    for k in (k for k in wa if k not in skip):
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=0, msg=k)


def assert_half_each(out: Path):
    reports = [json.loads((out / f"report-rank{r}.json").read_text()) for r in (0, 1)]
    total = reports[0]["total"]
    held = [r["held"][-1] for r in reports]
    assert [r["num_processes"] for r in reports] == [2, 2]
    assert sum(held) == total  # the shards partition the parameters
    for h in held:
        assert abs(h - total / 2) <= 0.01 * total, (held, total)
    assert [r["after"] for r in reports] == [total, total]  # the full weights are back after training


def assert_trained(weights: Path, script):
    trained, initial = load_file(str(weights)), script.make_model().state_dict()
    assert max(float((trained[k] - initial[k]).abs().max()) for k in trained) > 1e-3


def one_process(tmp_path: Path, kind: str) -> Path:
    script = load_script()
    out = tmp_path / f"one-{kind}"
    out.mkdir()
    with pytest.warns(UserWarning, match="fsdp=True with one process"):
        script.run(out, kind, dict(cpu=True))
    return out / "run" / "model.safetensors"


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_killed_sharded_run_resumes_to_the_one_process_weights(tmp_path, kind):
    """Process 1 is killed in step 5 (after the step-4 checkpoint); the rerun resumes from the sharded
    optimizer state and ends where an uninterrupted one-process run ends."""
    out = tmp_path / "two"
    out.mkdir()
    killed = launch_two(out, kind, 5)
    assert killed.returncode != 0
    steps = sorted(p.name for p in (out / "run" / "checkpoint").iterdir() if p.name.startswith("step-"))
    assert steps == ["step-00000002", "step-00000004"]
    assert (out / "run" / "checkpoint" / "step-00000004" / "optimizer" / ".metadata").is_file()
    assert not (out / "run" / "model.safetensors").exists()

    resumed = launch_two(out, kind)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    reports = [json.loads((out / f"report-rank{r}.json").read_text()) for r in (0, 1)]
    assert [len(r["held"]) for r in reports] == [2, 2]  # only steps 5 and 6 ran again
    assert_half_each(out)
    assert_same_weights(out / "run" / "model.safetensors", one_process(tmp_path, kind), atol=1e-4)
    assert_trained(out / "run" / "model.safetensors", load_script())


def test_sharded_dpo_with_a_live_reference_matches_one_process(tmp_path):
    out = tmp_path / "two"
    out.mkdir()
    run = launch_two(out, "dpo-live")
    assert run.returncode == 0, run.stderr[-4000:]
    assert_half_each(out)
    assert_same_weights(out / "run" / "model.safetensors", one_process(tmp_path, "dpo-live"), atol=1e-4)


def test_sharded_spin_and_reward_model_match_one_process(tmp_path):
    """Two SPIN iterations (the second samples from the model the first trained, so generation runs on
    the gathered weights) and the reward model, with fsdp=True: the same samples and weights as one process."""
    spec = importlib.util.spec_from_file_location("fsdp_stages", SCRIPT.parent / "fsdp_stages.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (tmp_path / "two").mkdir()
    (tmp_path / "one").mkdir()
    run = launch_two(tmp_path / "two", script=SCRIPT.parent / "fsdp_stages.py")
    assert run.returncode == 0, run.stderr[-4000:]
    with pytest.warns(UserWarning, match="fsdp=True with one process"):
        script.run(tmp_path / "one", dict(cpu=True))
    for k in (1, 2):
        folder = f"spin/iteration-{k}"
        two, one = tmp_path / "two" / folder, tmp_path / "one" / folder
        assert (two / "synthetic.jsonl").read_text() == (one / "synthetic.jsonl").read_text()
        assert_same_weights(two / "model.safetensors", one / "model.safetensors", atol=1e-4)
    # The ranking loss is invariant to a shift of every reward, so the reward head's bias gets a gradient
    # of pure rounding noise, which Adam scales up to +-lr per step: it is the one weight not compared.
    assert_same_weights(
        tmp_path / "two" / "rm" / "model.safetensors",
        tmp_path / "one" / "rm" / "model.safetensors",
        atol=1e-4,
        skip=("to_reward.bias",),
    )


def test_sharded_ppo_matches_ddp_and_resumes(tmp_path):
    """PPO with fsdp=True against the same two processes under DDP (not against one process: PPO's rollouts
    and statistics are per process, see docs/guides/scale.md). The same rollouts (sampled from the gathered
    shards) and the same weights; each process held half of the policy and value head in every step;
    a crash in step 3 and a rerun resume from the sharded step-2 checkpoint to the uninterrupted weights."""
    script = SCRIPT.parent / "fsdp_ppo.py"
    run = launch_two(tmp_path, script=script)
    assert run.returncode == 0, run.stderr[-4000:]
    reports = [json.loads((tmp_path / f"report-rank{r}.json").read_text()) for r in (0, 1)]
    total = reports[0]["total"]
    for report in reports:
        assert report["num_processes"] == 2
        assert len(report["held"]) == 3 + 1 + 2 + 1  # fsdp: 3 steps; fsdp-judge: 1; crashed: 2; resumed: step 3
        assert all(abs(h - total / 2) <= 0.01 * total for h in report["held"]), (report["held"], total)
        assert report["after"] == total - 17  # the policy holds all its weights again (the value head is apart)
    assert sum(r["held"][0] for r in reports) == total
    ddp, fsdp, resumed = (tmp_path / name for name in ("ddp", "fsdp", "resumed"))
    assert (fsdp / "rollouts.jsonl").read_text() == (ddp / "rollouts.jsonl").read_text()
    judged = (tmp_path / "fsdp-judge" / "rollouts.jsonl").read_text()
    assert judged == (tmp_path / "ddp-judge" / "rollouts.jsonl").read_text() and '"score": null' not in judged
    assert_same_weights(
        tmp_path / "fsdp-judge" / "model.safetensors", tmp_path / "ddp-judge" / "model.safetensors", atol=1e-4
    )
    for name in ("model.safetensors", "value_head.safetensors"):
        assert_same_weights(fsdp / name, ddp / name, atol=1e-4)
        assert_same_weights(resumed / name, fsdp / name, atol=1e-6)
    assert (resumed / "rollouts.jsonl").read_text() == (fsdp / "rollouts.jsonl").read_text()
    assert (resumed / "checkpoint" / "step-00000002" / "optimizer" / ".metadata").is_file()
    assert_trained(fsdp / "model.safetensors", load_script(script))


def test_sharded_self_reward_pipeline_matches_one_process(tmp_path):
    """SFT -> self-reward DPO with fsdp=True through SelfRewardingTrainer: the sharded model samples and
    judges the candidates (chunks split across the processes), so the two processes make the same pairs
    as one process and train to the same weights; every stage output is written once, by rank 0."""
    script = load_script(SCRIPT.parent / "fsdp_self_reward.py")
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    run = launch_two(two, script=SCRIPT.parent / "fsdp_self_reward.py")
    assert run.returncode == 0, run.stderr[-4000:]
    with pytest.warns(UserWarning, match="fsdp=True with one process"):
        script.run(one, dict(cpu=True))
    stage = "02-self-reward-dpo"
    pairs = (one / "run" / stage / "pairs.jsonl").read_text()
    assert pairs.count("\n") >= 2  # pairs were made, so DPO trained on something
    assert (two / "run" / stage / "pairs.jsonl").read_text() == pairs
    for file in ("candidates.jsonl", "preference_stats.json"):  # the candidates carry their judgments
        assert (two / "run" / stage / file).read_text() == (one / "run" / stage / file).read_text(), file
    assert_same_weights(two / "weights-rank0.safetensors", two / "weights-rank1.safetensors", atol=0)
    assert_same_weights(two / "weights-rank0.safetensors", one / "weights-rank0.safetensors", atol=1e-4)
    # the stage's own output is the full model, written by rank 0 (the file a one-process run writes)
    assert_same_weights(two / "run" / stage / "model.safetensors", one / "weights-rank0.safetensors", atol=1e-4)
    initial = script_initial_weights()
    trained = load_file(str(one / "weights-rank0.safetensors"))
    assert max(float((trained[k] - initial[k]).abs().max()) for k in trained) > 1e-3


def script_initial_weights() -> dict:
    from x_transformers import Decoder, TransformerWrapper

    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=259, max_seq_len=64, attn_layers=Decoder(dim=16, depth=2, heads=2))
    return model.state_dict()
