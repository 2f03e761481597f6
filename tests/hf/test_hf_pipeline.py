"""The pipeline on a tiny Hugging Face model: every stage, stage folders readable by transformers/peft,
LoRA training only the adapter, resume after a crash, two processes."""

from __future__ import annotations

import json

import pytest
import torch

from .hf_pipeline import make_trainer

pytestmark = pytest.mark.e2e

KINDS = ["01-sft", "02-self-reward-dpo", "03-spin", "04-ppo"]


def probe_ids(tokenizer):
    return torch.tensor([tokenizer("<|bos|><|user|>say hello\n<|assistant|>hello!").input_ids])


def record_logits(records, probe):
    """on_stage_end callback: the in-memory model's logits at the end of each stage."""

    def on_end(end):
        with torch.no_grad():
            records[end.stage_dir.name] = end.model(probe).detach().clone()

    return on_end


def test_whole_pipeline_and_each_stage_folder_reloads_to_the_same_logits(hf_folders, hf_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    records, probe = {}, probe_ids(hf_tokenizer)
    trainer, model = make_trainer(hf_folders["llama"], tmp_path, on_stage_end=record_logits(records, probe))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summaries = trainer()
    assert summaries[1]["trained"] and summaries[1]["num_pairs"] > 0  # self-reward DPO really trained
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [s["folder"] for s in manifest["finished"]] == KINDS
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # trained in place
    for kind in KINDS:
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / kind / "model").eval()
        with torch.no_grad():
            torch.testing.assert_close(reloaded(probe).logits, records[kind], rtol=0, atol=1e-6)
        assert (tmp_path / "run" / kind / "model" / "tokenizer.json").exists()
    # SPIN sampled from chat-rendered prompts
    synthetic = (tmp_path / "run" / "03-spin" / "iteration-1" / "synthetic.jsonl").read_text().splitlines()
    prompt = hf_tokenizer.decode(json.loads(synthetic[0])["prompt"])
    assert prompt.startswith("<|bos|><|user|>") and prompt.endswith("<|assistant|>")


def test_lora_pipeline_trains_only_the_adapter_and_reloads_exactly(hf_folders, hf_tokenizer, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    records, probe = {}, probe_ids(hf_tokenizer)
    trainer, _ = make_trainer(
        hf_folders["llama"], tmp_path, lora=True, save_merged=True, on_stage_end=record_logits(records, probe)
    )
    base_before = AutoModelForCausalLM.from_pretrained(hf_folders["llama"]).state_dict()
    trainer()
    peft_model = trainer.model.hf
    adapter = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    assert adapter and any(bool(v.any()) for k, v in adapter.items() if "lora_B" in k)  # the adapter trained
    base_after = {
        k.replace(".base_layer", ""): v for k, v in peft_model.get_base_model().state_dict().items() if "lora_" not in k
    }
    assert base_after.keys() == base_before.keys()
    for key, value in base_before.items():  # every base weight bit-identical
        assert torch.equal(value, base_after[key]), key
    for kind in KINDS:
        base = AutoModelForCausalLM.from_pretrained(hf_folders["llama"])
        reloaded = PeftModel.from_pretrained(base, tmp_path / "run" / kind / "model").eval()
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / kind / "model" / "merged").eval()
        with torch.no_grad():
            torch.testing.assert_close(reloaded(probe).logits, records[kind], rtol=0, atol=1e-6)
            torch.testing.assert_close(merged(probe).logits, records[kind], rtol=1e-4, atol=1e-4)


def test_crash_then_rerun_resumes_to_the_weights_of_an_uninterrupted_run(hf_folders, tmp_path, monkeypatch):
    from self_rewarding_lm_pytorch.trainers import dpo

    whole, _ = make_trainer(hf_folders["llama"], tmp_path / "whole")
    whole()
    original, calls = dpo.PairTask.step, {"n": 0}

    def crashing_step(self, model, batch):  # the 2nd DPO step of the self-reward stage (after its step-1 checkpoint)
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected crash")
        return original(self, model, batch)

    monkeypatch.setattr(dpo.PairTask, "step", crashing_step)
    crashed, _ = make_trainer(hf_folders["llama"], tmp_path / "crashed")
    with pytest.raises(RuntimeError, match="injected crash"):
        crashed()
    monkeypatch.setattr(dpo.PairTask, "step", original)
    manifest = json.loads((tmp_path / "crashed" / "run" / "manifest.json").read_text())
    assert manifest["started"] == "02-self-reward-dpo"
    resumed, _ = make_trainer(hf_folders["llama"], tmp_path / "crashed")
    resumed()
    expected = whole.model.state_dict()
    for key, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-5, msg=key)
