"""SFT: item forms, truncation/skipping, response-only loss, and learning a small fixed mapping."""

import conftest
import pytest
import torch
from torch import nn

from self_rewarding_lm_pytorch.core.batching import create_mock_dataset
from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
from self_rewarding_lm_pytorch.trainers.sft import SFTTask, SFTTrainer, prepare_sft_examples, to_sft_example, train_sft
from self_rewarding_lm_pytorch.training.accelerators import make_accelerator
from self_rewarding_lm_pytorch.training.loop import TrainConfig


def tiny_lm(num_tokens=259, max_seq_len=32, seed=0):
    return conftest.tiny_lm(num_tokens=num_tokens, max_seq_len=max_seq_len, seed=seed)


@pytest.mark.unit
def test_item_forms():
    tok = ByteTokenizer()
    assert to_sft_example(("ab", "c"), tok) == ([97, 98, 99, tok.eos_id], 2)
    assert to_sft_example({"prompt": "ab", "response": "c"}, tok) == ([97, 98, 99, tok.eos_id], 2)
    assert to_sft_example(([5, 6], [7]), tok) == ([5, 6, 7, tok.eos_id], 2)
    assert to_sft_example((torch.tensor([5, 6]), torch.tensor([7])), tok) == ([5, 6, 7, tok.eos_id], 2)
    # (token_ids, prompt_len): taken as complete, no EOS appended
    assert to_sft_example((torch.tensor([5, 6, 7, 8]), torch.tensor(1)), tok) == ([5, 6, 7, 8], 1)
    assert to_sft_example(([5, 6, 7, 8], 3), tok) == ([5, 6, 7, 8], 3)
    with pytest.raises(TypeError, match="SFT item"):
        to_sft_example("just a string", tok)
    with pytest.raises(TypeError, match="'prompt' and 'response'"):
        to_sft_example({"prompt": "x"}, tok)


@pytest.mark.unit
def test_long_items_truncated_or_skipped_and_counted():
    """max_seq_len 6: a long response loses its end (and its EOS); a prompt that fills the budget, or
    ids with no token after prompt_len, leave no response token and are skipped and counted."""
    tok = ByteTokenizer()
    data = [("abc", "defgh"), ("abcdef", "x"), (list(range(10)), 2), (list(range(10)), 6), ([1, 2], 2), ("", "")]
    examples, skipped = prepare_sft_examples(data, tok, max_seq_len=6)
    assert examples == [([97, 98, 99, 100, 101, 102], 3), ([0, 1, 2, 3, 4, 5], 2), ([tok.eos_id], 0)]
    assert skipped == 3


@pytest.mark.unit
def test_out_of_vocabulary_ids_are_an_early_error():
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        prepare_sft_examples([("a", "b")], ByteTokenizer(), num_tokens=256)  # EOS 258 does not fit 256 tokens


@pytest.mark.unit
def test_prompt_tokens_never_contribute_to_the_loss():
    """With logits as a leaf tensor, the loss gradient is zero at every position that predicts a prompt
    or pad token (and at the last position), nonzero where a response token is predicted; and changing
    the prompt tokens' ids (their targets) leaves the loss unchanged."""
    task = SFTTask(pad_id=0)
    batch = task.collate([([1, 2, 3, 4, 5], 3), ([6, 7, 8], 1)])  # responses: ids 4,5 and 7,8
    logits = torch.randn(2, 5, 11, requires_grad=True)

    class FixedLogits(nn.Module):
        def forward(self, ids):
            return logits

    loss, _ = task.step(FixedLogits(), batch)
    loss.backward()
    has_grad = logits.grad.abs().sum(-1) > 0
    # logits[:, t-1] predicts token t; row 0 responses at t=3,4 -> positions 2,3; row 1 at t=1,2 -> 0,1
    assert has_grad.tolist() == [[False, False, True, True, False], [True, True, False, False, False]]

    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][0, :3] = torch.tensor([9, 9, 9])
    changed["input_ids"][1, 0] = 10
    assert task.step(FixedLogits(), changed)[0].item() == pytest.approx(loss.item(), abs=0)


@pytest.mark.stage
def test_tiny_model_learns_a_fixed_mapping():
    """Eight prompts each with one fixed 3-letter answer: loss ends well below its start."""
    words = ["cat", "dog", "sun", "sky", "red", "top", "map", "jam"]
    data = [(f"{i}:", w) for i, w in enumerate(words)]
    model = tiny_lm()
    config = TrainConfig(
        num_train_steps=60, batch_size=8, learning_rate=1e-2, warmup_steps=5, log_every=5, progress=False
    )
    result = train_sft(
        model,
        data,
        tokenizer=ByteTokenizer(),
        accelerator=make_accelerator(dict(cpu=True)),
        run_dir=None,
        config=config,
    )
    losses = [r["loss"] for r in result.history]
    assert losses[-1] < 0.2 * losses[0], losses
    # greedy continuation of a prompt now reproduces its answer
    tok = ByteTokenizer()
    model.eval()
    ids = torch.tensor([tok.encode("3:")])
    for _ in range(3):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert tok.decode(ids[0, 2:]) == "sky"


@pytest.mark.stage
def test_seed_readme_mock_dataset_and_trainer(tmp_path):
    """The seed README's SFT data, a 256-token model (pad id falls back into its vocabulary), trainer API."""
    torch.manual_seed(0)
    sft_dataset = create_mock_dataset(10, lambda: (torch.randint(0, 256, (40,)), torch.tensor(1)))
    model = tiny_lm(num_tokens=256, max_seq_len=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = SFTTrainer(
        model,
        sft_dataset,
        num_train_steps=3,
        batch_size=2,
        checkpoint_folder=tmp_path,
        progress=False,
        accelerate_kwargs=dict(cpu=True),
    )
    result = trainer()
    assert result.steps == 3 and result.info["num_skipped"] == 0
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items() if v.is_floating_point())
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "metrics.jsonl").is_file()


@pytest.mark.unit
def test_trainer_rejects_unknown_arguments():
    with pytest.raises(TypeError, match="num_steps"):
        SFTTrainer(tiny_lm(), [("a", "b")], num_steps=3)
    with pytest.raises(ValueError, match="empty"):
        SFTTrainer(tiny_lm(), [])
