"""`srlm reward-model train --model-config` and `srlm generate --reward-model` on a tiny local Hugging Face
model (LoRA included), and their strict validation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from self_rewarding_lm_pytorch.cli import main

RANKED = [
    {"prompt": "say hello", "ranked_outputs": ["hello!", "the cat sat.", "no"]},
    {"prompt": "what is two plus two?", "ranked_outputs": ["four.", "maybe.", "the dog"]},
] * 2


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def ranked_file(tmp_path) -> Path:
    return write(tmp_path / "ranked.jsonl", "".join(json.dumps(r) + "\n" for r in RANKED))


def train_args(config: Path, data: Path, out: Path, *extra: str) -> list[str]:
    args = ["reward-model", "train", "--model-config", str(config), "--data", str(data), "--out", str(out)]
    return [*args, "--num-train-steps", "2", "--batch-size", "2", "--cpu", *extra]


@pytest.mark.e2e
def test_an_hf_reward_model_trains_from_the_cli_and_ranks_best_of_n(hf_folders, tmp_path):
    from peft import PeftModel

    from self_rewarding_lm_pytorch import RewardModel

    llama = hf_folders["llama"]
    config = write(tmp_path / "rm.toml", f'[model]\nhf = "{llama}"\n[lora]\nr = 4\ntarget_modules = ["q_proj"]\n')
    assert main(train_args(config, ranked_file(tmp_path), tmp_path / "rm")) == 0
    folder = tmp_path / "rm" / "reward_model"
    assert (folder / "adapter_config.json").is_file() and (folder / "reward_head.safetensors").is_file()
    rm = RewardModel.from_pretrained(folder)
    assert isinstance(rm.net.hf, PeftModel)

    # best-of-N with an HF policy and the HF reward model: every kept score is the reward model's own
    policy = write(tmp_path / "policy.toml", f'[model]\nhf = "{llama}"\n')
    prompts = write(tmp_path / "prompts.jsonl", '{"prompt": "say hello"}\n{"prompt": "the cat"}\n')
    out = tmp_path / "best.jsonl"
    args = ["generate", "--model-config", str(policy), "--prompts", str(prompts), "--out", str(out)]
    assert main([*args, "--n", "3", "--keep", "1", "--max-new-tokens", "4", "--reward-model", str(folder)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["say hello", "the cat"]
    for record in records:
        expected = rm.score([record["prompt"]], [record["response"]])
        assert record["score"] == pytest.approx(float(expected[0]), abs=1e-5)
        assert record["score"] >= max(record["discarded_scores"]) - 1e-6


@pytest.mark.e2e
def test_a_full_hf_reward_model_is_a_folder_without_an_adapter(hf_folders, tmp_path):
    config = write(tmp_path / "rm.toml", f'[model]\nhf = "{hf_folders["gpt2"]}"\n')
    assert main(train_args(config, ranked_file(tmp_path), tmp_path / "rm")) == 0
    folder = tmp_path / "rm" / "reward_model"
    assert (folder / "config.json").is_file() and not (folder / "adapter_config.json").exists()
    # a second run refuses to replace it unless told to
    assert main(train_args(config, ranked_file(tmp_path), tmp_path / "rm")) == 2


@pytest.mark.unit
@pytest.mark.parametrize(
    "extra, config_text, message",
    [
        (("--dim", "32"), '[model]\nhf = "m"\n', "--dim"),
        (("--encoder",), '[model]\nhf = "m"\n', "--encoder"),
        ((), "[model]\nmax_seq_len = 16\n[model.attn_layers]\ndim = 8\n", "needs \\[model\\] hf"),
        ((), '[model]\nhf = "missing"\n', "no such folder"),
        ((), '[model]\nhf = "m"\n[lora]\nrank = 4\n', "unknown key"),
    ],
)
def test_bad_reward_model_configs_exit_2_before_loading(tmp_path, capsys, extra, config_text, message):
    (tmp_path / "m").mkdir()  # an empty folder: every check here comes before a model is loaded
    config = write(tmp_path / "rm.toml", config_text)
    assert main(train_args(config, ranked_file(tmp_path), tmp_path / "rm", *extra)) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "rm").exists()


@pytest.mark.unit
def test_generate_refuses_a_missing_reward_model_and_a_checkpoint_for_an_hf_policy(tmp_path, capsys):
    (tmp_path / "m").mkdir()  # an empty folder: every check here comes before a model is loaded
    policy = write(tmp_path / "policy.toml", '[model]\nhf = "m"\n')
    prompts = write(tmp_path / "prompts.jsonl", '{"prompt": "hi"}\n')
    args = ["generate", "--model-config", str(policy), "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl")]
    assert main([*args, "--reward-model", str(tmp_path / "nothing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main([*args, "--reward-model", str(tmp_path / "m")]) == 2  # a folder, but not a reward model's
    assert "reward_head.safetensors" in capsys.readouterr().err
    assert main([*args, "--checkpoint", str(prompts)]) == 2
    assert "[model] hf loads its own weights" in capsys.readouterr().err
