"""`srlm run` with a Hugging Face model: the example TOML (reduced) on a tiny local model, and strict
validation of [model] hf, [tokenizer] hf, [lora] and mixed_precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from self_rewarding_lm_pytorch.cli import main
from self_rewarding_lm_pytorch.config_file import ConfigError, parse_pipeline

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hf_lora.toml"
STAGE = {"kind": "sft", "train_dataset": [{"prompt": "a", "response": "b"}]}


@pytest.mark.e2e
def test_example_toml_runs_reduced_on_a_tiny_local_model(hf_folders, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "run"
    sets = [
        f"model.hf={hf_folders['llama']}", f"run_dir={run_dir}", "stages.0.num_train_steps=2",
        "stages.1.num_train_steps=1", "stages.1.batch_size=2", "lora.save_merged=true",
    ]  # fmt: skip
    assert main(["run", str(EXAMPLE), *[x for s in sets for x in ("--set", s)]]) == 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [s["folder"] for s in manifest["finished"]] == ["01-sft", "02-spin"]
    adapter = run_dir / "02-spin" / "model"
    assert (adapter / "adapter_config.json").exists() and (adapter / "tokenizer.json").exists()
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(hf_folders["llama"]), adapter)
    assert (adapter / "merged" / "config.json").exists()  # [lora] save_merged = true
    AutoModelForCausalLM.from_pretrained(adapter / "merged")


def parse(tmp_path, **raw):
    return parse_pipeline({"run_dir": "r", "stages": [dict(STAGE)], **raw}, path=tmp_path / "p.toml")


@pytest.mark.unit
def test_hf_sections_are_read_and_paths_resolved(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "t").mkdir()
    p = parse(tmp_path, model={"hf": "m"}, tokenizer={"hf": "t"}, lora={"r": 4, "target_modules": ["q_proj"]})
    assert (p.hf.model, p.hf.tokenizer) == (tmp_path / "m", tmp_path / "t")
    assert p.hf.lora.r == 4 and p.hf.lora.target_modules == ("q_proj",) and not p.hf.lora.save_merged
    assert parse(tmp_path, model={"hf": "m"}, lora={"save_merged": True}).hf.lora.save_merged
    assert parse(tmp_path, model={"hf": "m"}, mixed_precision="bf16").accelerate["mixed_precision"] == "bf16"
    assert parse(tmp_path, model={"hf": "m"}).hf.tokenizer == tmp_path / "m"  # the model's own folder


@pytest.mark.unit
@pytest.mark.parametrize(
    "raw, message",
    [
        (dict(model={"hf": "missing"}), "no such folder"),
        (dict(model={"hf": "m", "max_seq_len": 8}), "takes no other keys"),
        (dict(model={"hf": "m"}, lora={"rank": 4}), "unknown key"),
        (dict(model={"hf": "m"}, lora={"r": 0}), "r >= 1"),
        (dict(model={"hf": "m"}, lora={"target_modules": "q_proj"}), "target_modules"),
        (dict(model={"hf": "m"}, lora={"save_merged": "yes"}), "save_merged"),
        (dict(lora={"r": 4}), "needs a Hugging Face model"),
        (dict(model={"hf": "m"}, tokenizer="byte"), r"\[tokenizer\] hf"),
        (dict(tokenizer={"hf": "m"}), "goes with"),
        (dict(model={"hf": "m"}, mixed_precision="bf32"), "mixed_precision must be"),
        (dict(model={"hf": "m"}, mixed_precision="bf16", accelerate={"mixed_precision": "no"}), "given twice"),
    ],
)
def test_bad_hf_sections_are_config_errors(tmp_path, raw, message):
    (tmp_path / "m").mkdir()
    with pytest.raises(ConfigError, match=message):
        parse(tmp_path, **raw)


@pytest.mark.unit
@settings(max_examples=40, deadline=None)
@given(
    r=st.one_of(st.integers(-3, 64), st.floats(allow_nan=True), st.text(max_size=3), st.booleans()),
    dropout=st.one_of(st.floats(allow_nan=True), st.integers(-2, 2)),
)
def test_lora_table_validation_accepts_exactly_the_valid_values(tmp_path_factory, r, dropout):
    folder = tmp_path_factory.mktemp("cfg")
    (folder / "m").mkdir()
    valid_r = isinstance(r, int) and not isinstance(r, bool) and r >= 1
    valid_dropout = not isinstance(dropout, bool) and 0 <= dropout < 1
    try:
        lora = parse(folder, model={"hf": "m"}, lora={"r": r, "dropout": dropout}).hf.lora
    except ConfigError:
        assert not (valid_r and valid_dropout)
    else:
        assert valid_r and valid_dropout and lora.r == r


@pytest.mark.e2e
def test_readme_example_runs_on_a_tiny_local_model(hf_folders, tmp_path):
    import runpy

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    example = runpy.run_path(str(EXAMPLE.parent / "readme_hf_lora.py"), run_name="example")
    example["main"](str(hf_folders["llama"]), str(tmp_path / "run"))
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [s["folder"] for s in manifest["finished"]] == ["01-sft", "02-self-reward-dpo", "03-spin"]
    base = AutoModelForCausalLM.from_pretrained(hf_folders["llama"])
    PeftModel.from_pretrained(base, tmp_path / "run" / "03-spin" / "model")


@pytest.mark.e2e
def test_readme_section_code_runs_as_written_on_a_tiny_local_model(hf_folders, tmp_path):
    """The README's "Fine-tune a Hugging Face model" code block, with only the two paths replaced."""
    readme = (EXAMPLE.parents[1] / "README.md").read_text()
    section = readme.split("## Fine-tune a Hugging Face model", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert code.count('"path/to/model"') == 2 and code.count('"runs/hf-lora"') == 1
    code = code.replace('"path/to/model"', repr(str(hf_folders["llama"]))).replace(
        '"runs/hf-lora"', repr(str(tmp_path / "run"))
    )
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "run" / "03-spin" / "model" / "adapter_config.json").exists()
