"""`RewardModel` around a Hugging Face causal LM: the head reads the last real token's final hidden
state (transformers' sequence-classification convention for decoders), strings are scored through the
tokenizer's chat template, `RewardModelTrainer` trains it (LoRA: only the adapter and the head), and a
saved folder reloads to identical scores."""

from __future__ import annotations

import pytest
import torch

from self_rewarding_lm_pytorch import RewardModel, RewardModelTrainer
from self_rewarding_lm_pytorch.core.batching import collate_examples, encode_example
from self_rewarding_lm_pytorch.core.tokenizer import as_tokenizer

from .conftest import load_model

PROMPTS = ["say hello", "the cat", "what is two plus two?", "1 + 1 ="]
# Learnable: every prompt ranks the same three outputs the same way (best first).
RANKED = [{"prompt": p, "ranked_outputs": ["yes.", "maybe.", "no."]} for p in PROMPTS]


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])


def reward_model(hf_folders, hf_tokenizer, family="llama", **kwargs):
    torch.manual_seed(0)  # the head's initialisation
    return RewardModel(net=load_model(hf_folders, family), tokenizer=hf_tokenizer, **kwargs)


def train(rm, *, steps=30, **kwargs):
    return RewardModelTrainer(
        rm, None, RANKED, valid_data=RANKED, batch_size=4, num_train_steps=steps, learning_rate=3e-3,
        log_every=1, valid_every=steps, progress=False, accelerate_kwargs=dict(cpu=True), **kwargs,
    )()  # fmt: skip


# --- construction ---


@pytest.mark.unit
def test_an_encoder_only_model_is_a_type_error_at_construction(hf_tokenizer):
    from transformers import BertConfig, BertForMaskedLM

    bert = BertForMaskedLM(
        BertConfig(vocab_size=len(hf_tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=32)
    )  # fmt: skip
    with pytest.raises(TypeError, match="not a Hugging Face causal LM"):
        RewardModel(net=bert, tokenizer=hf_tokenizer)


@pytest.mark.unit
def test_a_tokenizer_larger_than_the_model_vocabulary_is_an_error_at_construction(hf_folders, hf_tokenizer):
    hf_tokenizer.add_tokens(["<|extra-1|>", "<|extra-2|>"])
    with pytest.raises(ValueError, match="embeds only"):
        RewardModel(net=load_model(hf_folders, "llama"), tokenizer=hf_tokenizer)
    with pytest.raises(ValueError, match="needs its tokenizer"):
        RewardModel(net=load_model(hf_folders, "llama"))


# --- the head and scoring ---


@pytest.mark.unit
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_reward_equals_transformers_sequence_classification_with_the_same_head(hf_folders, hf_tokenizer, family):
    """transformers' XForSequenceClassification reads the last non-pad token's final hidden state with a
    bias-free linear head: with our head's weights (bias 0) it gives our rewards, for padded batches too."""
    from transformers import AutoModelForSequenceClassification

    rm = reward_model(hf_folders, hf_tokenizer, family)
    torch.nn.init.zeros_(rm.to_reward.bias)
    classifier = AutoModelForSequenceClassification.from_pretrained(
        hf_folders[family], num_labels=1, pad_token_id=hf_tokenizer.pad_token_id
    ).eval()
    with torch.no_grad():
        classifier.score.weight.copy_(rm.to_reward.weight)
    tok = as_tokenizer(hf_tokenizer)
    rows = [encode_example(tok, p, r) for p, r in [("say hello", "hello! goodbye!"), ("the cat", "sat.")]]
    batch = collate_examples(rows, tok.pad_id)
    lengths = torch.tensor([len(ids) for ids, _ in rows])
    assert lengths[0] != lengths[1]  # one row is padded
    with torch.no_grad():
        ours = rm.eval()(batch["input_ids"], lengths)
        theirs = classifier(input_ids=batch["input_ids"]).logits[:, 0]
        alone = torch.stack([rm(torch.tensor([ids]), torch.tensor([len(ids)]))[0] for ids, _ in rows])
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, alone, rtol=1e-5, atol=1e-6)  # padding changes nothing


@pytest.mark.unit
@pytest.mark.parametrize("chat_template", [None, False])
def test_score_renders_the_chat_template_unless_turned_off(hf_folders, hf_tokenizer, chat_template):
    rm = reward_model(hf_folders, hf_tokenizer, chat_template=chat_template)
    if chat_template is None:
        text = "<|bos|><|user|>say hello\n<|assistant|>hello!<|eos|>"
        ids = hf_tokenizer(text, add_special_tokens=False).input_ids
    else:
        ids = hf_tokenizer("say hello").input_ids + hf_tokenizer("hello!", add_special_tokens=False).input_ids
        ids = [*ids, hf_tokenizer.eos_token_id]
    with torch.no_grad():
        expected = rm.eval()(torch.tensor([ids]), torch.tensor([len(ids)]))
    assert torch.equal(rm.score(["say hello"], ["hello!"]), expected)
    assert torch.equal(rm(["say hello"], ["hello!"]), expected)  # a RewardModel is a reward_fn


@pytest.mark.unit
def test_every_trainable_parameter_gets_a_gradient(hf_folders, hf_tokenizer):
    """The untied LM head is unused by the reward and frozen, so DDP never waits for a gradient."""
    rm = reward_model(hf_folders, hf_tokenizer)
    assert not rm.net.hf.lm_head.weight.requires_grad
    ids = torch.tensor([hf_tokenizer("say hello").input_ids])
    rm(ids, torch.tensor([ids.shape[1]])).sum().backward()
    missing = [n for n, p in rm.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


# --- training ---


@pytest.mark.stage
def test_training_changes_the_model_and_the_loss_falls_on_a_learnable_ranking(hf_folders, hf_tokenizer):
    rm = reward_model(hf_folders, hf_tokenizer)
    before = {k: v.clone() for k, v in rm.state_dict().items()}
    result = train(rm)
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert result.history[-1]["valid/rewards/accuracies"] == 1.0
    changed = [k for k, v in before.items() if not torch.equal(v, rm.state_dict()[k])]
    assert "to_reward.weight" in changed and any(k.startswith("net.hf.model.layers") for k in changed)
    best, middle, worst = rm.score(["say hello"] * 3, ["yes.", "maybe.", "no."]).tolist()
    assert best > middle > worst


@pytest.mark.stage
def test_lora_trains_only_the_adapter_and_the_head_and_keeps_every_base_weight(hf_folders, hf_tokenizer):
    rm = reward_model(hf_folders, hf_tokenizer)
    base_before = {k: v.clone() for k, v in rm.net.hf.state_dict().items()}
    head_before = rm.to_reward.weight.clone()
    result = train(rm, peft_config=lora_config())  # LoRA applied by the trainer
    assert rm.net.is_peft
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    peft_model = rm.net.hf
    base_after = {
        k.replace(".base_layer", ""): v for k, v in peft_model.get_base_model().state_dict().items() if "lora_" not in k
    }
    assert base_after.keys() == base_before.keys()
    for key, value in base_before.items():  # every base weight bit-identical
        assert torch.equal(value, base_after[key]), key
    assert any(bool(v.any()) for k, v in peft_model.state_dict().items() if "lora_B" in k)  # the adapter trained
    assert not torch.equal(head_before, rm.to_reward.weight)  # and the head


@pytest.mark.stage
def test_gradient_checkpointing_trains_the_reward_model_as_without(hf_folders, hf_tokenizer):
    runs = []
    for checkpointing in (False, True):
        rm = reward_model(hf_folders, hf_tokenizer)
        train(rm, steps=2, gradient_checkpointing=checkpointing)
        runs.append(rm)
    assert runs[1].net.hf.model.gradient_checkpointing and not runs[0].net.hf.model.gradient_checkpointing
    for (name, a), b in zip(runs[0].state_dict().items(), runs[1].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


# --- saving and loading ---


@pytest.mark.stage
@pytest.mark.parametrize("lora", [False, True])
def test_saved_folder_reloads_to_identical_scores(hf_folders, hf_tokenizer, tmp_path, lora):
    from transformers import AutoModelForCausalLM

    rm = reward_model(hf_folders, hf_tokenizer, peft_config=lora_config() if lora else None)
    train(rm, steps=3)
    responses = ["yes.", "maybe.", "no.", "hello! goodbye!"]
    expected = rm.score(["say hello"] * 4, responses)
    folder = rm.save(tmp_path / "rm")
    assert (folder / "reward_head.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert (folder / ("adapter_config.json" if lora else "config.json")).is_file()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    reloaded = RewardModel.from_pretrained(folder)
    assert reloaded.net.is_peft == lora
    assert torch.equal(reloaded.score(["say hello"] * 4, responses), expected)
    # `load` fills a fresh model of the same architecture; the folder also loads as a plain HF model
    fresh = reward_model(hf_folders, hf_tokenizer, peft_config=lora_config() if lora else None)
    assert not torch.equal(fresh.score(["say hello"] * 4, responses), expected)
    assert torch.equal(fresh.load(folder).score(["say hello"] * 4, responses), expected)
    if not lora:
        AutoModelForCausalLM.from_pretrained(folder)


@pytest.mark.unit
def test_loading_a_full_model_folder_into_a_lora_reward_model_is_an_error(hf_folders, hf_tokenizer, tmp_path):
    folder = reward_model(hf_folders, hf_tokenizer).save(tmp_path / "rm")
    with pytest.raises(ValueError, match="holds a full model but this RewardModel has a LoRA adapter"):
        reward_model(hf_folders, hf_tokenizer, peft_config=lora_config()).load(folder)
    with pytest.raises(FileNotFoundError, match=r"reward_head\.safetensors"):
        RewardModel.from_pretrained(hf_folders["llama"])
