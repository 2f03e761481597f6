"""SPIN stage: item handling, λ spellings, sampling once per iteration, the real-vs-generated margin."""

import copy

import pytest
import torch
from conftest import tiny_lm

from self_rewarding_lm_pytorch.core.batching import create_mock_dataset
from self_rewarding_lm_pytorch.core.files import read_jsonl
from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
from self_rewarding_lm_pytorch.trainers.spin import SFTRecordError, SPINTrainer, encode_sft_items, resolve_spin_kwargs

TOK = ByteTokenizer()


def train_records(result):
    """The loop's logged training records (validation records carry only "valid/" keys)."""
    return [r for r in result.history if "loss" in r]


def sft_items(n=8):
    """A fixed, learnable SFT set: the answer spells out the prompt's digit."""
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven"]
    return [(f"{i}=", words[i % 8]) for i in range(n)]


# --- knobs and items ---------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("kwargs, expected", [({"λ": 0.3}, 0.3), ({"lambda_": 0.2}, 0.2), ({}, 0.1), (None, 0.1)])
def test_lambda_spellings(kwargs, expected):
    assert resolve_spin_kwargs(kwargs) == {"lambda_": expected}


@pytest.mark.unit
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"λ": 0.1, "lambda_": 0.2}, TypeError, "both λ and lambda_"),
        ({"lambda": 0.1}, TypeError, r"unknown spin_kwargs \['lambda'\]"),
        ({"beta": 0.1}, TypeError, "unknown spin_kwargs"),
        ({"λ": 0.0}, ValueError, "must be > 0"),
    ],
)
def test_bad_spin_kwargs_are_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        resolve_spin_kwargs(kwargs)


@pytest.mark.unit
def test_spin_trainer_rejects_bad_settings_at_construction(tiny_model, tmp_path):
    with pytest.raises(TypeError, match="unknown spin_kwargs"):
        SPINTrainer(tiny_model, sft_items(), max_seq_len=16, spin_kwargs=dict(lam=0.1), checkpoint_folder=tmp_path)
    with pytest.raises(ValueError, match="max_seq_len must be in"):
        SPINTrainer(tiny_model, sft_items(), max_seq_len=65, checkpoint_folder=tmp_path)
    with pytest.raises(TypeError):  # a misspelt TrainConfig field
        SPINTrainer(tiny_model, sft_items(), max_seq_len=16, num_train_step=3, checkpoint_folder=tmp_path)
    with pytest.raises(SFTRecordError, match="SFT item 1"):
        SPINTrainer(tiny_model, [("a", "b"), ("a", "b", "c")], max_seq_len=16, checkpoint_folder=tmp_path)


@pytest.mark.unit
def test_sft_items_in_every_form():
    """(ids, prompt_len) is taken as is (no EOS); strings and dicts get the tokenizer's EOS (258)."""
    items = [
        (torch.tensor([5, 6, 7, 8]), torch.tensor(1)),
        ("ab", "c"),
        {"prompt": [97], "response": [98, 99]},
    ]
    assert encode_sft_items(items, TOK, max_seq_len=16) == [
        ([5], [6, 7, 8]),
        ([97, 98], [99, 258]),
        ([97], [98, 99, 258]),
    ]
    # cut to max_seq_len = 3 tokens in all: the response loses its end
    assert encode_sft_items(items[:1], TOK, max_seq_len=3) == [([5], [6, 7])]


@pytest.mark.unit
def test_bad_sft_items_name_the_item(caplog):
    with pytest.raises(SFTRecordError, match="SFT item 1: no response tokens"):
        encode_sft_items([("a", "b"), (torch.tensor([1, 2]), torch.tensor(2))], TOK, max_seq_len=8)
    with pytest.raises(SFTRecordError, match="SFT item 0: the prompt is empty"):
        encode_sft_items([(torch.tensor([1, 2]), torch.tensor(0))], TOK, max_seq_len=8)
    # a prompt too long for max_seq_len is skipped (as SFT does) and said so
    assert encode_sft_items([("abcdefgh", "x"), ("a", "b")], TOK, max_seq_len=4) == [([97], [98, 258])]
    assert "skipped 1 of 2" in caplog.text


# --- iterations ----------------------------------------------------------------------------------


def config(**overrides):
    from self_rewarding_lm_pytorch.training.loop import TrainConfig

    return TrainConfig(
        **(dict(num_train_steps=12, batch_size=8, learning_rate=3e-3, log_every=1, progress=False) | overrides)
    )


def margins(model, examples, generated):
    """(N,) log p(real response) - log p(own sample) under `model`, per SFT item."""
    from self_rewarding_lm_pytorch.trainers.dpo import compute_ref_logprobs

    pairs = [
        {"chosen": (p + r, len(p)), "rejected": (p + g, len(p))} for (p, r), g in zip(examples, generated, strict=True)
    ]
    logps = compute_ref_logprobs(model, pairs, pad_id=TOK.pad_id, progress=False)
    return logps[:, 0] - logps[:, 1]


@pytest.mark.stage
def test_an_iteration_raises_real_over_generated_likelihood(tiny_model, tmp_path):
    from self_rewarding_lm_pytorch.trainers.spin import train_spin_iteration
    from self_rewarding_lm_pytorch.training.accelerators import make_accelerator

    initial = copy.deepcopy(tiny_model)
    items = sft_items(8)
    result, generated = train_spin_iteration(
        tiny_model,
        items,
        tokenizer=TOK,
        accelerator=make_accelerator(),
        run_dir=tmp_path,
        config=config(),
        max_seq_len=16,
        lambda_=0.1,
    )
    examples = encode_sft_items(items, TOK, max_seq_len=16)
    assert len(generated) == 8 and all(
        1 <= len(g) <= 16 - len(p) for g, (p, _) in zip(generated, examples, strict=True)
    )
    before, after = margins(initial, examples, generated), margins(tiny_model, examples, generated)
    assert bool((after > before + 1.0).all()), (before, after)
    assert train_records(result)[-1]["rewards/accuracies"] == 1.0
    assert {"rewards/real", "rewards/generated", "logps/real", "logps/generated"} <= set(train_records(result)[0])
    records = read_jsonl(tmp_path / "synthetic.jsonl")
    assert [r["generated"] for r in records] == generated
    assert [(r["prompt"], r["real"]) for r in records] == [tuple(e) for e in examples]


def seed_readme_trainer(model, folder, dataset, **kwargs):
    """The seed README call, plus test-sized TrainConfig fields."""
    return SPINTrainer(
        model,
        max_seq_len=16,
        train_sft_dataset=dataset,
        checkpoint_every=100,
        spin_kwargs=dict(λ=0.1),
        checkpoint_folder=folder,
        batch_size=4,
        learning_rate=3e-3,
        progress=False,
        **kwargs,
    )


@pytest.fixture
def seed_model():
    """The seed README's 256-token model, shrunk (no pad or EOS id of its own)."""
    return tiny_lm(num_tokens=256, max_seq_len=32)


@pytest.mark.stage
def test_seed_readme_api_samples_once_per_iteration_and_mixes_previous(seed_model, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from self_rewarding_lm_pytorch.core import sampling
    from self_rewarding_lm_pytorch.trainers.dpo import REF_LOGPROBS_FILE
    from self_rewarding_lm_pytorch.training.checkpoint import load_model

    calls = []
    real_sample = sampling.sample
    monkeypatch.setattr(sampling, "sample", lambda *a, **k: calls.append(len(a[1])) or real_sample(*a, **k))
    dataset = create_mock_dataset(8, lambda: (torch.randint(0, 256, (256,)), torch.tensor(1)))
    trainer = seed_readme_trainer(seed_model, tmp_path, dataset, num_iterations=2, mix_previous_synthetic=True)
    results = trainer()
    assert calls == [8, 8]  # one batched sampler call per iteration, none inside training steps
    assert [r.steps for r in results] == [2, 4]  # 8 pairs, then 8 + the previous iteration's 8, batch 4
    for k in (1, 2):
        records = read_jsonl(tmp_path / f"iteration-{k}" / "synthetic.jsonl")
        assert len(records) == 8
        assert all(len(r["prompt"]) == 1 and len(r["real"]) == 15 and 1 <= len(r["generated"]) <= 15 for r in records)
    # Iteration 2's reference is iteration 1's final model: its stored log-probs say so.
    iterate_1 = copy.deepcopy(seed_model)
    load_model(iterate_1, tmp_path / "iteration-1" / "model.safetensors")
    examples = [(r["prompt"], r["real"]) for r in read_jsonl(tmp_path / "iteration-2" / "synthetic.jsonl")]
    generated = [r["generated"] for r in read_jsonl(tmp_path / "iteration-2" / "synthetic.jsonl")]
    previous = [r["generated"] for r in read_jsonl(tmp_path / "iteration-1" / "synthetic.jsonl")]
    stored = load_file(str(tmp_path / "iteration-2" / REF_LOGPROBS_FILE))["train"]
    from self_rewarding_lm_pytorch.trainers.dpo import compute_ref_logprobs

    pairs = [
        {"chosen": (p + r, 1), "rejected": (p + g, 1)}
        for (p, r), g in zip(examples * 2, generated + previous, strict=True)
    ]
    torch.testing.assert_close(
        stored, compute_ref_logprobs(iterate_1, pairs, pad_id=0, progress=False), atol=1e-5, rtol=0
    )


@pytest.mark.stage
def test_resume_after_a_finished_iteration_matches_a_straight_run(seed_model, tmp_path, monkeypatch):
    from self_rewarding_lm_pytorch.core import sampling

    torch.manual_seed(1)
    dataset = [(torch.randint(0, 256, (20,)), torch.tensor(2)) for _ in range(8)]
    straight = copy.deepcopy(seed_model)
    seed_readme_trainer(straight, tmp_path / "straight", dataset, num_iterations=2)()
    split = copy.deepcopy(seed_model)
    seed_readme_trainer(split, tmp_path / "split", dataset, num_iterations=1)()
    # A new process: the initial model again; iteration 1 is loaded from disk, iteration 2 trains.
    restarted = copy.deepcopy(seed_model)
    results = seed_readme_trainer(restarted, tmp_path / "split", dataset, num_iterations=2, resume=True)()
    assert results[0] is None and results[1].steps == 2
    for p, q in zip(restarted.parameters(), straight.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0)
    # Both iterations done: a resume trains and samples nothing, and ends at the same weights.
    monkeypatch.setattr(sampling, "sample", lambda *a, **k: pytest.fail("sampled on a finished run"))
    again = copy.deepcopy(seed_model)
    assert seed_readme_trainer(again, tmp_path / "split", dataset, num_iterations=2, resume=True)() == [None, None]
    for p, q in zip(again.parameters(), straight.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0)


@pytest.mark.stage
def test_live_reference_spin_matches_precomputed(tiny_model, tmp_path):
    from self_rewarding_lm_pytorch.trainers.spin import train_spin_iteration
    from self_rewarding_lm_pytorch.training.accelerators import make_accelerator

    losses = {}
    for precompute in (True, False):
        model = copy.deepcopy(tiny_model)
        result, _ = train_spin_iteration(
            model,
            sft_items(8),
            tokenizer=TOK,
            accelerator=make_accelerator(),
            run_dir=tmp_path / str(precompute),
            config=config(num_train_steps=5),
            max_seq_len=16,
            precompute_ref_logprobs=precompute,
        )
        losses[precompute] = torch.tensor([r["loss"] for r in train_records(result)])
    torch.testing.assert_close(losses[True], losses[False], atol=1e-5, rtol=0)


@pytest.mark.stage
def test_resume_mid_iteration_reuses_samples_and_reference(tiny_model, tmp_path, monkeypatch):
    """A crash after sampling: the rerun must not sample again from (or take as reference) a moved policy."""
    from self_rewarding_lm_pytorch.core import sampling
    from self_rewarding_lm_pytorch.trainers import reference_logprobs
    from self_rewarding_lm_pytorch.trainers.spin import train_spin_iteration
    from self_rewarding_lm_pytorch.training.accelerators import make_accelerator

    run = dict(tokenizer=TOK, accelerator=make_accelerator(), run_dir=tmp_path, max_seq_len=16)
    straight = copy.deepcopy(tiny_model)
    straight_result, straight_generated = train_spin_iteration(
        straight, sft_items(8), config=config(num_train_steps=6), **run | {"run_dir": tmp_path / "straight"}
    )
    _, generated = train_spin_iteration(
        tiny_model, sft_items(8), config=config(num_train_steps=3, checkpoint_every=3), **run
    )
    monkeypatch.setattr(sampling, "sample", lambda *a, **k: pytest.fail("sampled again on resume"))
    recompute = lambda *a, **k: pytest.fail("recomputed the reference")
    monkeypatch.setattr(reference_logprobs, "compute_ref_logprobs", recompute)
    result, again = train_spin_iteration(tiny_model, sft_items(8), config=config(num_train_steps=6), resume=True, **run)
    assert again == generated == straight_generated and result.steps == 6
    torch.testing.assert_close(
        torch.tensor([r["loss"] for r in train_records(result)]),
        torch.tensor([r["loss"] for r in train_records(straight_result)]),
        atol=1e-5,
        rtol=0,
    )


@pytest.mark.unit
def test_ids_outside_the_vocabulary_are_an_error_naming_the_item(seed_model, tmp_path):
    items = [(torch.tensor([1, 2, 3]), torch.tensor(1)), (torch.tensor([1, 300, 3]), torch.tensor(1))]
    with pytest.raises(SFTRecordError, match=r"SFT item 1 has token ids outside the model's vocabulary \[0, 256\)"):
        SPINTrainer(seed_model, items, max_seq_len=8, checkpoint_folder=tmp_path)


@pytest.mark.stage
def test_validation_items_are_sampled_in_the_same_call_and_validated(tiny_model, tmp_path, monkeypatch):
    from self_rewarding_lm_pytorch.core import sampling

    calls = []
    real_sample = sampling.sample
    monkeypatch.setattr(sampling, "sample", lambda *a, **k: calls.append(len(a[1])) or real_sample(*a, **k))
    items = sft_items(8)
    trainer = SPINTrainer(
        tiny_model,
        items[:6],
        valid_sft_dataset=items[6:],
        max_seq_len=16,
        checkpoint_folder=tmp_path,
        num_train_steps=4,
        valid_every=2,
        batch_size=2,
        progress=False,
    )
    [result] = trainer()
    assert calls == [8]
    assert [r["step"] for r in result.history if "valid/rewards/accuracies" in r] == [2, 4]
    records = read_jsonl(tmp_path / "iteration-1" / "synthetic.jsonl")
    assert [r["split"] for r in records] == ["train"] * 6 + ["valid"] * 2
