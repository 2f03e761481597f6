"""The `srlm` command: every example config (reduced), bad configs, run-folder safety, and the tools."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from self_rewarding_lm_pytorch.cli import main
from self_rewarding_lm_pytorch.core.files import read_jsonl

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Each example with its stages cut to a step or two (the files themselves run in ~10 s each).
REDUCED = {
    "sft.toml": ["stages.0.num_train_steps=2"],
    "self_reward_dpo.toml": [
        "stages.0.num_train_steps=2",
        "stages.1.num_generated_preference_pairs=2",
        "stages.1.num_train_steps=1",
        "stages.1.num_sampled_reward_responses=1",
    ],
    "external_reward_dpo.toml": [
        "stages.0.num_train_steps=2",
        "stages.1.num_generated_preference_pairs=2",
        "stages.1.num_train_steps=1",
    ],
    "spin.toml": ["stages.0.num_train_steps=2", "stages.1.num_iterations=1", "stages.1.num_train_steps=1"],
    "ppo.toml": ["stages.0.num_train_steps=2", "stages.1.num_train_steps=1"],
    "prompt_generation.toml": ["stages.0.num_train_steps=2", "stages.1.max_batches=1", "stages.2.num_train_steps=1"],
}


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_module_help_lists_the_commands():
    out = subprocess.run(
        [sys.executable, "-m", "self_rewarding_lm_pytorch", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0
    for command in ("demo", "run", "generate", "reward-model", "judge"):
        assert command in out.stdout


@pytest.mark.parametrize("name", sorted(REDUCED))
def test_example_configs_run(name, tmp_path, capsys):
    run_dir = tmp_path / "run"
    sets = [x for s in REDUCED[name] + [f"run_dir={run_dir}"] for x in ("--set", s)]
    code, _out, err = run(["run", EXAMPLES / name, *sets], capsys)
    assert code == 0, err
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert len(manifest["finished"]) == len(manifest["stages"])
    for stage in manifest["stages"]:
        assert (run_dir / stage["folder"] / "model.safetensors").exists()
    # the run trained: the last stage's weights are finite and differ from the ones it started with
    initial = load_file(str(run_dir / "initial-model.safetensors"))
    final = load_file(str(run_dir / manifest["stages"][-1]["folder"] / "model.safetensors"))
    assert initial.keys() == final.keys() and all(t.isfinite().all() for t in final.values())
    assert any(not torch.equal(initial[k], final[k]) for k in initial)


def test_every_stage_kind_has_an_example():
    from self_rewarding_lm_pytorch.config_file import _stage_kinds

    kinds = set()
    for name in REDUCED:
        kinds |= {
            line.split('"')[1] for line in (EXAMPLES / name).read_text().splitlines() if line.startswith("kind = ")
        }
    assert kinds == set(_stage_kinds())


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("num_train_steps = 20", "num_train_stepz = 20", "unknown key num_train_stepz for a 'sft' stage (SFTConfig)"),
        ("num_train_steps = 20", 'num_train_steps = "20"', "stages[0].num_train_steps: expected"),
        ('"data/sft.jsonl"', '"data/missing.jsonl"', "stages[0].train_dataset: no such file"),
        (
            'kind = "sft"',
            'kind = "rlhf"',
            "unknown stage kind 'rlhf'; known kinds: external-reward-dpo, ppo, prompt-generation, self-reward-dpo, "
            "sft, spin",
        ),
        ("[accelerate]", "[acceleration]", "unknown top-level key(s) acceleration"),
        ("dim = 32", "dim = 32\nwidth = 3", "x-transformers rejected the model kwargs"),
    ],
)
def test_bad_configs_fail_before_training(old, new, message, tmp_path, capsys):
    text = (EXAMPLES / "sft.toml").read_text()
    assert old in text
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sft.jsonl").write_text((EXAMPLES / "data" / "sft.jsonl").read_text())
    path = tmp_path / "bad.toml"
    path.write_text(
        text.replace(old, new, 1).replace('run_dir = "runs/example-sft"', f'run_dir = "{tmp_path / "run"}"')
    )
    code, _, err = run(["run", path], capsys)
    assert code == 2 and message in err
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_run_folder_is_never_silently_overwritten(tmp_path, capsys):
    sets = ["--set", f"run_dir={tmp_path / 'run'}", "--set", "stages.0.num_train_steps=1"]
    assert run(["run", EXAMPLES / "sft.toml", *sets], capsys)[0] == 0
    weights = (tmp_path / "run" / "01-sft" / "model.safetensors").read_bytes()
    code, _, err = run(["run", EXAMPLES / "sft.toml", *sets], capsys)
    assert code == 2 and "pass --resume to continue it or --overwrite to replace it" in err
    assert run(["run", EXAMPLES / "sft.toml", *sets, "--resume", "--overwrite"], capsys)[0] == 2
    code, _out, _ = run(["run", EXAMPLES / "sft.toml", *sets, "--resume"], capsys)  # all done: nothing retrained
    assert code == 0 and (tmp_path / "run" / "01-sft" / "model.safetensors").read_bytes() == weights
    assert run(["run", EXAMPLES / "sft.toml", *sets, "--overwrite", "--set", "seed=5"], capsys)[0] == 0
    assert (tmp_path / "run" / "01-sft" / "model.safetensors").read_bytes() != weights


def test_tools_judge_generate_reward_model(tmp_path, capsys):
    sets = ["--set", f"run_dir={tmp_path / 'run'}", "--set", "stages.0.num_train_steps=2"]
    assert run(["run", EXAMPLES / "sft.toml", *sets], capsys)[0] == 0
    ckpt = tmp_path / "run" / "01-sft" / "model.safetensors"
    model = ["--model-config", EXAMPLES / "model.toml", "--checkpoint", ckpt]

    code, _out, err = run(
        [
            "judge",
            *model,
            "--data",
            EXAMPLES / "data" / "judge_pairs.jsonl",
            "--out",
            tmp_path / "scores.jsonl",
            "--num-judgments",
            "2",
            "--max-new-tokens",
            "18",
        ],
        capsys,
    )
    assert code == 0, err
    scored = read_jsonl(tmp_path / "scores.jsonl")
    assert len(scored) == 8 and all(len(r["judgments"]) == 2 and "score" in r for r in scored)

    code, _out, err = run(
        [
            "generate",
            *model,
            "--prompts",
            EXAMPLES / "data" / "prompts.jsonl",
            "--out",
            tmp_path / "best.jsonl",
            "--n",
            "3",
            "--max-new-tokens",
            "6",
        ],
        capsys,
    )
    assert code == 0, err
    best = read_jsonl(tmp_path / "best.jsonl")
    assert {r["prompt_index"] for r in best} == set(range(16)) and all(len(r["discarded_scores"]) == 2 for r in best)

    code, _out, err = run(
        [
            "reward-model",
            "train",
            "--data",
            EXAMPLES / "data" / "ranked.jsonl",
            "--out",
            tmp_path / "rm",
            "--dim",
            "16",
            "--depth",
            "1",
            "--heads",
            "2",
            "--max-seq-len",
            "32",
            "--num-train-steps",
            "2",
            "--batch-size",
            "4",
            "--cpu",
        ],
        capsys,
    )
    assert code == 0, err
    code, _out, err = run(
        [
            "generate",
            *model,
            "--prompts",
            EXAMPLES / "data" / "prompts.jsonl",
            "--out",
            tmp_path / "best_rm.jsonl",
            "--n",
            "2",
            "--max-new-tokens",
            "6",
            "--reward-model",
            tmp_path / "rm" / "reward_model.safetensors",
        ],
        capsys,
    )
    assert code == 0, err
    assert len(read_jsonl(tmp_path / "best_rm.jsonl")) == 16

    code, _, err = run(["judge", *model, "--data", tmp_path / "nope.jsonl", "--out", tmp_path / "x.jsonl"], capsys)
    assert code == 2 and "--data: no such file" in err
    # a checkpoint of another shape is a clear error, not a traceback
    code, _, err = run(
        [
            "judge",
            "--model-config",
            EXAMPLES / "model.toml",
            "--checkpoint",
            tmp_path / "rm" / "reward_model.safetensors",
            "--data",
            EXAMPLES / "data" / "judge_pairs.jsonl",
            "--out",
            tmp_path / "y.jsonl",
        ],
        capsys,
    )
    assert code == 2 and "does not fit the [model] kwargs" in err


SEED_README_SCRIPTS = {  # script: what it prints when it ran as documented
    "readme_paper_recipe.py": ["stages finished: 3"],
    "readme_custom_reward_config.py": ["Pretty please rate the following user prompt and response", "parsed: 7.0"],
    "readme_interleaved.py": ["1 - 2\n", "2 - [2]\n", "5 - [2]\n"],  # stage, pairs, steps
    "readme_spin.py": ["SPIN done"],
}


@pytest.mark.parametrize("script", sorted(SEED_README_SCRIPTS))
def test_readme_example_scripts_run(script, tmp_path, monkeypatch, capsys):
    """The seed README's examples as scripts, each end to end on a tiny model."""
    import runpy

    monkeypatch.chdir(tmp_path)  # they write only to temporary folders; make sure of it
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    assert list(tmp_path.iterdir()) == []
    out = capsys.readouterr().out
    for expected in SEED_README_SCRIPTS[script]:
        assert expected in out, (expected, out)
