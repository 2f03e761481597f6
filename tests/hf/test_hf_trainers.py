"""Each public trainer and generator called directly (not through the pipeline) on a tiny Hugging Face
model with its bare tokenizer: SFTTrainer, DPOTrainer, SPINTrainer and PPOTrainer train it (LoRA: the
adapter only, every base weight bit-identical); BestOfNSampler and generate_synthetic_dataset sample
from an HF policy and rank by an HF `RewardModel`."""

from __future__ import annotations

import json

import pytest
import torch

from self_rewarding_lm_pytorch import (
    BestOfNSampler,
    DPOTrainer,
    GenerationConfig,
    PPOConfig,
    PPOTrainer,
    RewardModel,
    SFTTrainer,
    SPINTrainer,
    generate_synthetic_dataset,
)
from self_rewarding_lm_pytorch.core.tokenizer import as_tokenizer, encode_prompt

from .conftest import load_model

SFT = [{"prompt": "say hello", "response": "hello!"}, {"prompt": "the cat", "response": "sat."}] * 2
PAIRS = [{"prompt": "say hello", "chosen": "hello!", "rejected": "no."}] * 4
PROMPTS = ["say hello", "the cat", "what is two plus two?"]
COMMON = dict(progress=False, accelerate_kwargs=dict(cpu=True))


def lora_config(targets=("q_proj", "v_proj")):
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(targets))


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_only_the_adapter_trained(peft_model, base_before: dict[str, torch.Tensor]):
    base_after = {
        k.replace(".base_layer", ""): v for k, v in peft_model.get_base_model().state_dict().items() if "lora_" not in k
    }
    assert base_after.keys() == base_before.keys()
    for key, value in base_before.items():
        assert torch.equal(value, base_after[key]), key
    assert any(bool(v.any()) for k, v in peft_model.state_dict().items() if "lora_B" in k)  # B starts at 0


def assert_changed(before: dict[str, torch.Tensor], model):
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def hf_reward_model(hf_folders, hf_tokenizer):
    """An untrained HF reward model on GPT-2 (its scores differ per response: the ranking is checked against them)."""
    torch.manual_seed(0)
    return RewardModel(net=load_model(hf_folders, "gpt2"), tokenizer=hf_tokenizer)


# --- trainers ---


@pytest.mark.stage
def test_sft_trainer_trains_a_user_made_peft_model_adapter_only(hf_folders, hf_tokenizer):
    from peft import get_peft_model

    model = load_model(hf_folders, "llama")
    base_before = snapshot(model)
    peft_model = get_peft_model(model, lora_config())
    SFTTrainer(peft_model, SFT, tokenizer=hf_tokenizer, num_train_steps=3, batch_size=2, learning_rate=1e-2, **COMMON)()
    assert_only_the_adapter_trained(peft_model, base_before)


@pytest.mark.stage
def test_dpo_trainer_with_peft_config_trains_the_adapter_only(hf_folders, hf_tokenizer):
    model = load_model(hf_folders, "qwen2")  # grouped-query attention
    base_before = snapshot(model)
    trainer = DPOTrainer(
        model, PAIRS, tokenizer=hf_tokenizer, peft_config=lora_config(), num_train_steps=3, batch_size=2,
        learning_rate=1e-2, log_every=1, **COMMON,
    )  # fmt: skip
    result = trainer()
    assert_only_the_adapter_trained(trainer.model.hf, base_before)
    margins = [r["rewards/margins"] for r in result.history if "rewards/margins" in r]
    assert margins[-1] > margins[0]  # the chosen response gains on the rejected one


@pytest.mark.stage
def test_spin_trainer_trains_a_full_hf_model(hf_folders, hf_tokenizer, tmp_path):
    model = load_model(hf_folders, "gpt2")
    before = snapshot(model)
    SPINTrainer(
        model, SFT, tokenizer=hf_tokenizer, max_seq_len=40, num_train_steps=2, batch_size=2, learning_rate=1e-3,
        checkpoint_folder=tmp_path / "spin", **COMMON,
    )()  # fmt: skip
    assert_changed(before, model)
    synthetic = (tmp_path / "spin" / "iteration-1" / "synthetic.jsonl").read_text().splitlines()
    prompt = hf_tokenizer.decode(json.loads(synthetic[0])["prompt"])
    assert prompt.startswith("<|bos|><|user|>") and prompt.endswith("<|assistant|>")  # chat-rendered


@pytest.mark.stage
def test_ppo_trainer_trains_an_hf_lora_policy_on_an_hf_reward_model(hf_folders, hf_tokenizer):
    from peft import get_peft_model

    model = load_model(hf_folders, "llama")
    base_before = snapshot(model)
    policy = get_peft_model(model, lora_config())
    rm = hf_reward_model(hf_folders, hf_tokenizer)
    config = PPOConfig(batch_size=3, mini_batch_size=3, ppo_epochs=2, learning_rate=1e-2, seed=0)
    trainer = PPOTrainer(policy, config=config, tokenizer=hf_tokenizer)
    head_before = trainer.policy.value_head.weight.clone()
    tok = as_tokenizer(hf_tokenizer)
    queries = [torch.tensor(encode_prompt(tok, p)) for p in PROMPTS]
    responses = trainer.generate(queries, max_new_tokens=4)
    scores = rm.score(PROMPTS, [tok.decode(r) for r in responses])
    stats = trainer.step(queries, responses, scores)
    assert stats["ppo/mean_scores"] == pytest.approx(float(scores.mean()), abs=1e-6)
    assert_only_the_adapter_trained(policy, base_before)
    assert not torch.equal(head_before, trainer.policy.value_head.weight)


# --- generation with an HF reward model ---


@pytest.mark.unit
def test_best_of_n_ranks_hf_policy_samples_by_an_hf_reward_model(hf_folders, hf_tokenizer):
    rm = hf_reward_model(hf_folders, hf_tokenizer)
    best = BestOfNSampler(
        load_model(hf_folders, "llama"), hf_tokenizer, rm, sample_size=4, n_candidates=4,
        generation_config=GenerationConfig(max_new_tokens=5), seed=0,
    )  # fmt: skip
    texts, scores = best.generate(PROMPTS[:2], return_scores=True)
    tok = as_tokenizer(hf_tokenizer)
    for prompt, row_texts, row_scores in zip(PROMPTS[:2], texts, scores, strict=True):
        rendered = tok.decode(encode_prompt(tok, prompt))  # the chat-rendered prompt the policy sampled from
        assert rendered != prompt
        # the scorer and the caller get the prompt as given: the reward model applies its own chat
        # template once (a rendered prompt would be rendered twice)
        responses = [t[len(prompt) :] for t in row_texts]
        assert all(t.startswith(prompt) and not t.startswith(rendered) for t in row_texts)
        assert len(set(responses)) > 1
        assert row_scores == sorted(row_scores, reverse=True)  # best first
        assert rm.score([prompt] * 4, responses).tolist() == pytest.approx(row_scores, abs=1e-6)
        assert rm.score([rendered] * 4, responses).tolist() != pytest.approx(row_scores, abs=1e-6)


@pytest.mark.unit
def test_synthetic_dataset_keeps_the_hf_reward_models_best_hf_sample(hf_folders, hf_tokenizer, tmp_path):
    rm = hf_reward_model(hf_folders, hf_tokenizer)
    stats = generate_synthetic_dataset(
        load_model(hf_folders, "llama"), PROMPTS, rm, out=tmp_path / "best.jsonl", tokenizer=hf_tokenizer, n=4,
        keep=1, generation_config=GenerationConfig(max_new_tokens=5), progress=False,
    )  # fmt: skip
    assert stats["records_written"] == len(PROMPTS)
    records = [json.loads(line) for line in (tmp_path / "best.jsonl").read_text().splitlines()]
    for i, rec in enumerate(records):
        assert rec["prompt"] == PROMPTS[i] and len(rec["discarded_scores"]) == 3
        assert rec["score"] >= max(rec["discarded_scores"])
        assert rm.score([rec["prompt"]], [rec["response"]]).item() == pytest.approx(rec["score"], abs=1e-6)
