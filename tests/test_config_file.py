"""Pipeline TOML validation against a fake stage registry (no training, no pipeline needed)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from self_rewarding_lm_pytorch.config_file import (
    ConfigError,
    apply_override,
    build_model,
    build_tokenizer,
    load_pipeline_file,
    validate_stage,
)

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class FakeSFT:
    kind = "sft"
    train_dataset: Any
    valid_dataset: Any = None
    num_train_steps: int | None = None
    learning_rate: float = 1e-4
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    progress: bool = True


@dataclass(frozen=True)
class FakeDPO:
    kind = "self-reward-dpo"
    prompt_dataset: Any
    num_generated_preference_pairs: int
    pair_sizes: tuple[int, ...] = (1, 2)
    reward_model: Callable | None = None


KINDS = {"sft": FakeSFT, "self-reward-dpo": FakeDPO}


def write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "sft.jsonl").write_text('{"prompt": "1+1=", "response": "2"}\n')
    path = tmp_path / "pipeline.toml"
    path.write_text(body)
    return path


GOOD = """
run_dir = "runs/x"
seed = 3
[model]
max_seq_len = 32
[model.attn_layers]
dim = 16
depth = 1
heads = 2
[accelerate]
cpu = true
[[stages]]
kind = "sft"
train_dataset = "sft.jsonl"
num_train_steps = 2
learning_rate = 1
[[stages]]
kind = "self-reward-dpo"
prompt_dataset = "sft.jsonl"
num_generated_preference_pairs = 4
pair_sizes = [3, 4]
reward_model = { import = "self_rewarding_lm_pytorch.demo.task:verifier_reward" }
"""


def test_good_file_is_parsed_and_resolved(tmp_path):
    pf = load_pipeline_file(write(tmp_path, GOOD), stage_kinds=KINDS)
    assert pf.seed == 3 and pf.run_dir == Path("runs/x") and pf.tokenizer == "byte"
    assert pf.accelerate == {"cpu": True}
    (k0, s0), (_k1, s1) = pf.stages
    assert k0 == "sft" and s0["train_dataset"] == str(tmp_path / "sft.jsonl")
    assert s0["learning_rate"] == 1.0 and isinstance(s0["learning_rate"], float)  # int accepted for float
    assert s1["pair_sizes"] == (3, 4)  # TOML arrays become tuples where the field is a tuple
    from self_rewarding_lm_pytorch.demo.task import verifier_reward

    assert s1["reward_model"] is verifier_reward


@pytest.mark.parametrize(
    "edit, message",
    [
        (("num_train_steps = 2", "num_train_step = 2"), "unknown key num_train_step for a 'sft' stage"),
        (("num_train_steps = 2", 'num_train_steps = "2"'), "stages[0].num_train_steps: expected"),
        (("num_train_steps = 2", "num_train_steps = true"), "stages[0].num_train_steps: expected"),
        (('train_dataset = "sft.jsonl"', 'train_dataset = "nope.jsonl"'), "stages[0].train_dataset: no such file"),
        (('kind = "sft"', 'kind = "sfx"'), "unknown stage kind 'sfx'"),
        (("num_generated_preference_pairs = 4\n", ""), "missing required field num_generated_preference_pairs"),
        (("learning_rate = 1", 'lr_schedule = "step"'), "expected one of 'constant', 'linear', 'cosine'"),
        (("pair_sizes = [3, 4]", 'pair_sizes = [3, "a"]'), "pair_sizes[1]: expected int"),
        (("seed = 3", "seeds = 3"), "unknown top-level key(s) seeds"),
        (('run_dir = "runs/x"', ""), "missing run_dir"),
        (("verifier_reward", "no_such_name"), "has no attribute 'no_such_name'"),
        (('run_dir = "runs/x"', 'run_dir = "runs/x"\ntokenizer = "tok.json"'), "tokenizer files are not read directly"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, edit, message):
    old, new = edit
    assert old in GOOD
    with pytest.raises(ConfigError) as err:
        load_pipeline_file(write(tmp_path, GOOD.replace(old, new, 1)), stage_kinds=KINDS)
    assert message in str(err.value)


def test_missing_kind_and_no_stages(tmp_path):
    with pytest.raises(ConfigError, match="missing kind"):
        load_pipeline_file(write(tmp_path, GOOD.replace('kind = "sft"\n', "", 1)), stage_kinds=KINDS)
    with pytest.raises(ConfigError, match="no \\[\\[stages\\]\\]"):
        load_pipeline_file(write(tmp_path, 'run_dir = "r"\n'), stage_kinds=KINDS)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_pipeline_file(write(tmp_path, "run_dir = \n"), stage_kinds=KINDS)
    with pytest.raises(ConfigError, match="no such config file"):
        load_pipeline_file(tmp_path / "absent.toml", stage_kinds=KINDS)


def test_overrides_reduce_a_run_and_are_validated(tmp_path):
    path = write(tmp_path, GOOD)
    pf = load_pipeline_file(
        path, overrides=("stages.0.num_train_steps=1", "run_dir=other", "seed=9"), stage_kinds=KINDS
    )
    assert pf.stages[0][1]["num_train_steps"] == 1 and pf.run_dir == Path("other") and pf.seed == 9
    with pytest.raises(ConfigError, match="unknown key bogus"):
        load_pipeline_file(path, overrides=("stages.1.bogus=1",), stage_kinds=KINDS)
    with pytest.raises(ConfigError, match="no item 5"):
        load_pipeline_file(path, overrides=("stages.5.num_train_steps=1",), stage_kinds=KINDS)
    raw = {"a": [{"b": 1}]}
    apply_override(raw, "a.0.b=[1, 2]")
    apply_override(raw, "c.d=hello")  # a bare word is a string
    assert raw == {"a": [{"b": [1, 2]}], "c": {"d": "hello"}}


def test_validate_stage_lists_the_fields(tmp_path):
    with pytest.raises(ConfigError) as err:
        validate_stage("sft", {"train_dataset": [], "lr": 1}, KINDS, base_dir=tmp_path, where="x")
    names = [f.name for f in dataclasses.fields(FakeSFT)]
    assert "unknown key lr" in str(err.value) and ", ".join(names) in str(err.value)


def test_build_model_and_tokenizer():
    tok = build_tokenizer("byte")
    model = build_model({"max_seq_len": 16, "attn_layers": {"dim": 8, "depth": 1, "heads": 1}}, tok)
    assert model.num_tokens == 259 and model.max_seq_len == 16
    with pytest.raises(ConfigError, match="x-transformers rejected"):
        build_model({"max_seq_len": 16, "attn_layers": {"dim": 8, "depth": 1, "bogus_kw": 1}}, tok)
    with pytest.raises(ConfigError, match="missing dim"):
        build_model({"max_seq_len": 16}, tok)
    assert build_tokenizer("self_rewarding_lm_pytorch.core.tokenizer:ByteTokenizer").vocab_size == 259
