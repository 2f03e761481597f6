"""DPO stage: record checks, the concatenated forward, the reference (live or precomputed), training."""

import copy

import pytest
import torch
from conftest import letter_preferences, params_equal

from self_rewarding_lm_pytorch import PreferenceLoss
from self_rewarding_lm_pytorch.core.batching import collate_examples
from self_rewarding_lm_pytorch.core.files import read_jsonl
from self_rewarding_lm_pytorch.core.logprobs import model_sequence_logprobs
from self_rewarding_lm_pytorch.core.losses import dpo_loss
from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
from self_rewarding_lm_pytorch.trainers.dpo import (
    REF_LOGPROBS_FILE,
    DPOTask,
    DPOTrainer,
    PreferenceRecordError,
    collate_pairs,
    compute_ref_logprobs,
    encode_pairs,
    pair_logprobs,
)

TOK = ByteTokenizer()


def train_records(result):
    """The loop's logged training records (validation records carry only "valid/" keys)."""
    return [r for r in result.history if "loss" in r]


# --- records -------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    "bad, message",
    [
        ({"prompt": "p", "chosen": "c"}, r"record 1 lacks key\(s\) \['rejected'\]"),
        ({"prompt": "p", "chosen": "", "rejected": "r"}, "record 1: chosen response is empty"),
        (("p", "c", []), "record 1: rejected response is empty"),
        (("p", "c"), "record 1 must be a dict"),
        ({"prompt": 3, "chosen": "c", "rejected": "r"}, "record 1: prompt must be a str or token ids"),
        ({"prompt": "", "chosen": "c", "rejected": "r"}, "record 1: the prompt is empty"),
    ],
)
def test_bad_records_are_errors_naming_the_record(bad, message):
    with pytest.raises(PreferenceRecordError, match=message):
        encode_pairs([("ok", "yes", "no"), bad], TOK)


@pytest.mark.unit
def test_records_as_dicts_tuples_and_ids_encode_alike():
    """'ab' is bytes [97, 98]; EOS (258) ends each response; prompt_len counts the prompt only."""
    from_dict = encode_pairs([{"prompt": "ab", "chosen": "c", "rejected": "dd"}], TOK)
    from_ids = encode_pairs([([97, 98], torch.tensor([99]), [100, 100])], TOK)
    assert from_dict == from_ids == [{"chosen": ([97, 98, 99, 258], 2), "rejected": ([97, 98, 100, 100, 258], 2)}]


@pytest.mark.unit
def test_max_seq_len_cuts_responses_and_rejects_overlong_prompts():
    pairs = encode_pairs([("ab", "cccccc", "d")], TOK, max_seq_len=4)
    assert pairs[0]["chosen"] == ([97, 98, 99, 99], 2)
    with pytest.raises(PreferenceRecordError, match="record 0: prompt of 4 tokens"):
        encode_pairs([("abcd", "c", "d")], TOK, max_seq_len=4)


# --- one forward, reference log-probs -----------------------------------------------------------------


@pytest.mark.unit
def test_concatenated_forward_equals_separate_forwards(tiny_model):
    pairs = encode_pairs(letter_preferences(6), TOK)
    batch = collate_pairs(pairs, TOK.pad_id)
    assert batch["input_ids"].shape[0] == 12  # 2b rows in one forward
    chosen, rejected, *_ = pair_logprobs(tiny_model, batch)
    for key, got in (("chosen", chosen), ("rejected", rejected)):
        alone = collate_examples([p[key] for p in pairs], TOK.pad_id)
        expected = model_sequence_logprobs(tiny_model, alone["input_ids"], alone["is_response"])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.unit
def test_ref_logprobs_do_not_depend_on_batching(tiny_model):
    pairs = encode_pairs(letter_preferences(7), TOK)
    one_by_one = torch.cat([compute_ref_logprobs(tiny_model, [p], pad_id=TOK.pad_id, progress=False) for p in pairs])
    batched = compute_ref_logprobs(tiny_model, pairs, pad_id=TOK.pad_id, batch_size=3, progress=False)
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=0)
    assert tiny_model.training  # the mode is restored


@pytest.mark.unit
def test_task_step_with_stored_and_live_reference_agree(tiny_model):
    """Same loss and metrics whether the reference log-probs ride in the batch or a frozen copy runs."""
    pairs = encode_pairs(letter_preferences(4), TOK)
    ref = copy.deepcopy(tiny_model)
    with torch.no_grad():  # move the policy away from the reference so the loss is not trivially log 2
        for p in tiny_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    stored = compute_ref_logprobs(ref, pairs, pad_id=TOK.pad_id, progress=False)
    items = [p | {"ref": tuple(r.tolist())} for p, r in zip(pairs, stored, strict=True)]
    live_task = DPOTask(pad_id=TOK.pad_id, ref_model=ref.eval())
    stored_task = DPOTask(pad_id=TOK.pad_id)
    live_loss, live_metrics = live_task.step(tiny_model, live_task.collate(pairs))
    stored_loss, stored_metrics = stored_task.step(tiny_model, stored_task.collate(items))
    torch.testing.assert_close(live_loss, stored_loss, atol=1e-6, rtol=0)
    assert (
        live_metrics.keys()
        == stored_metrics.keys()
        == {
            "loss",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "rewards/accuracies",
            "logps/chosen",
            "logps/rejected",
        }
    )
    for k in live_metrics:
        torch.testing.assert_close(live_metrics[k], stored_metrics[k], atol=1e-6, rtol=0)


@pytest.mark.unit
def test_sft_term_adds_weighted_chosen_cross_entropy(tiny_model):
    """loss = mean DPO loss + w * mean token NLL of the chosen responses (the first b rows)."""
    from self_rewarding_lm_pytorch.core.losses import sft_loss

    pairs = encode_pairs(letter_preferences(4), TOK)
    items = [p | {"ref": (-30.0, -31.0)} for p in pairs]
    task = DPOTask(pad_id=TOK.pad_id, loss=PreferenceLoss(sft_weight=0.5, beta=0.2))
    batch = task.collate(items)
    loss, metrics = task.step(tiny_model, batch)
    with torch.no_grad():
        logits = tiny_model(batch["input_ids"])
        chosen, rejected, *_ = pair_logprobs(tiny_model, batch)
        dpo = dpo_loss(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"], beta=0.2)[0].mean()
        sft = sft_loss(logits[:4], batch["input_ids"][:4], batch["is_response"][:4]).mean()
    torch.testing.assert_close(loss.detach(), dpo + 0.5 * sft, atol=1e-5, rtol=0)
    torch.testing.assert_close(metrics["sft_loss"], sft, atol=1e-5, rtol=0)


@pytest.mark.unit
@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(loss_type="kto"), "loss_type must be one of"),
        (dict(loss_type="ipo", label_smoothing=0.1), "label_smoothing is not defined"),
        (dict(beta=0.0), "beta must be > 0"),
        (dict(sft_weight=-1.0), "sft_weight must be >= 0"),
    ],
)
def test_bad_knobs_fail_at_construction(tiny_model, kwargs, error):
    with pytest.raises(ValueError, match=error):
        DPOTrainer(tiny_model, letter_preferences(2), **kwargs)


@pytest.mark.unit
def test_unknown_train_config_key_fails_at_construction(tiny_model):
    with pytest.raises(TypeError):
        DPOTrainer(tiny_model, letter_preferences(2), num_train_step=3)


# --- training through the loop ----------------------------------------------------------------------


def train_kwargs(**overrides):
    return dict(num_train_steps=6, batch_size=4, learning_rate=3e-3, log_every=1, progress=False) | overrides


@pytest.mark.stage
def test_live_reference_never_changes_and_every_policy_param_moves(tiny_model, tmp_path):
    initial = copy.deepcopy(tiny_model)
    trainer = DPOTrainer(
        tiny_model, letter_preferences(8), precompute_ref_logprobs=False, checkpoint_folder=tmp_path, **train_kwargs()
    )
    ref = trainer.ref_model
    assert ref is not tiny_model and params_equal(ref, initial)
    trainer()
    assert params_equal(ref, initial)  # bitwise: the frozen copy saw no optimizer step
    assert not any(p.requires_grad for p in ref.parameters())
    for (name, p), q in zip(tiny_model.named_parameters(), initial.parameters(), strict=True):
        assert not torch.equal(p, q), f"{name} did not change"


@pytest.mark.stage
def test_precomputed_reference_is_the_policy_at_entry(tiny_model, tmp_path):
    """train_dpo's stored log-probs equal a fresh computation from the policy as it was on entry."""
    from safetensors.torch import load_file

    from self_rewarding_lm_pytorch.trainers.dpo import train_dpo
    from self_rewarding_lm_pytorch.training.accelerators import make_accelerator
    from self_rewarding_lm_pytorch.training.loop import TrainConfig

    records = letter_preferences(8)
    initial = copy.deepcopy(tiny_model)
    result = train_dpo(
        tiny_model,
        records,
        tokenizer=TOK,
        accelerator=make_accelerator(),
        run_dir=tmp_path,
        config=TrainConfig(**train_kwargs()),
    )
    assert result.steps == 6
    stored = load_file(str(tmp_path / REF_LOGPROBS_FILE))["train"]
    fresh = compute_ref_logprobs(initial, encode_pairs(records, TOK), pad_id=TOK.pad_id, progress=False)
    torch.testing.assert_close(stored, fresh, atol=1e-5, rtol=0)
    now = compute_ref_logprobs(tiny_model, encode_pairs(records, TOK), pad_id=TOK.pad_id, progress=False)
    assert (now - fresh).abs().max() > 1e-3  # the policy moved; the stored reference did not
    for (name, p), q in zip(tiny_model.named_parameters(), initial.parameters(), strict=True):
        assert not torch.equal(p, q), f"{name} did not change"


@pytest.mark.stage
def test_accuracies_rise_to_near_one_on_a_learnable_set(tiny_model, tmp_path):
    trainer = DPOTrainer(
        tiny_model, letter_preferences(16), checkpoint_folder=tmp_path, **train_kwargs(num_train_steps=40, batch_size=8)
    )
    history = train_records(trainer())
    assert len(history) == 40
    first, last = history[0], history[-5:]
    assert abs(first["rewards/margins"]) < 1e-4  # the policy starts as its own reference
    assert min(r["rewards/accuracies"] for r in last) >= 0.95
    assert last[-1]["rewards/margins"] > 1.0 and last[-1]["loss"] < 0.5 * first["loss"]
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == list(range(1, 41))


@pytest.mark.stage
def test_precomputed_and_live_reference_give_the_same_per_step_losses(tiny_model, tmp_path):
    runs = {}
    for precompute in (True, False):
        model = copy.deepcopy(tiny_model)
        trainer = DPOTrainer(
            model,
            letter_preferences(8),
            precompute_ref_logprobs=precompute,
            checkpoint_folder=tmp_path / str(precompute),
            **train_kwargs(num_train_steps=10),
        )
        runs[precompute] = ([r["loss"] for r in train_records(trainer())], model)
    (stored_losses, stored_model), (live_losses, live_model) = runs[True], runs[False]
    assert len(stored_losses) == 10
    torch.testing.assert_close(torch.tensor(stored_losses), torch.tensor(live_losses), atol=1e-5, rtol=0)
    for p, q in zip(stored_model.parameters(), live_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0)


@pytest.mark.stage
def test_resume_reuses_the_stored_reference_and_matches_a_straight_run(tiny_model, tmp_path, monkeypatch):
    from self_rewarding_lm_pytorch.trainers import reference_logprobs

    records = letter_preferences(8)
    straight = copy.deepcopy(tiny_model)
    straight_run = DPOTrainer(
        straight, records, checkpoint_folder=tmp_path / "straight", **train_kwargs(num_train_steps=8)
    )
    losses = [r["loss"] for r in train_records(straight_run())]
    DPOTrainer(tiny_model, records, checkpoint_folder=tmp_path / "split", **train_kwargs(num_train_steps=4))()

    def must_not_recompute(*args, **kwargs):
        raise AssertionError("resume recomputed the reference from a policy that has already moved")

    monkeypatch.setattr(reference_logprobs, "compute_ref_logprobs", must_not_recompute)
    # The moved policy is passed in on purpose: only the stored file knows the reference now.
    resumed = DPOTrainer(
        tiny_model, records, checkpoint_folder=tmp_path / "split", resume=True, **train_kwargs(num_train_steps=8)
    )()
    assert resumed.steps == 8
    resumed_losses = [r["loss"] for r in train_records(resumed)]
    torch.testing.assert_close(torch.tensor(resumed_losses), torch.tensor(losses), atol=1e-5, rtol=0)
    for p, q in zip(tiny_model.parameters(), straight.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="computed for different pairs"):
        DPOTrainer(tiny_model, records[:6], checkpoint_folder=tmp_path / "split", resume=True, **train_kwargs())()


@pytest.mark.stage
@pytest.mark.parametrize(
    "loss_type, label_smoothing", [("sigmoid", 0.1), ("robust", 0.2), ("ipo", 0.0), ("hinge", 0.0)]
)
def test_every_loss_type_trains(tiny_model, loss_type, label_smoothing):
    before = copy.deepcopy(tiny_model)
    trainer = DPOTrainer(
        tiny_model,
        letter_preferences(4),
        loss_type=loss_type,
        label_smoothing=label_smoothing,
        checkpoint_folder=None,
        **train_kwargs(num_train_steps=2),
    )
    history = train_records(trainer())
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in history)
    assert not params_equal(tiny_model, before)


@pytest.mark.unit
def test_a_response_that_encodes_to_nothing_is_an_error():
    from self_rewarding_lm_pytorch.core.tokenizer import CallableTokenizer

    drops_x = CallableTokenizer(lambda s: [ord(c) for c in s if c != "x"], lambda ids: "", pad_id=0)
    with pytest.raises(PreferenceRecordError, match="record 0: the rejected response encodes to no tokens"):
        encode_pairs([("p", "c", "xx")], drops_x)


@pytest.mark.stage
def test_validation_pairs_get_their_own_reference(tiny_model, tmp_path):
    from safetensors.torch import load_file

    records = letter_preferences(12)
    result = DPOTrainer(
        tiny_model,
        records[:8],
        valid_data=records[8:],
        checkpoint_folder=tmp_path,
        **train_kwargs(num_train_steps=4, valid_every=2),
    )()
    valid = [r for r in result.history if "valid/rewards/accuracies" in r]
    assert [r["step"] for r in valid] == [2, 4]
    assert load_file(str(tmp_path / REF_LOGPROBS_FILE))["valid"].shape == (4, 2)


@pytest.mark.unit
def test_ids_outside_the_vocabulary_and_default_length_limit(tiny_model):
    with pytest.raises(PreferenceRecordError, match=r"record 1: rejected has token ids outside .*\[0, 259\)"):
        DPOTrainer(tiny_model, [([1], [2], [3]), ([1], [2], [300])])
    trainer = DPOTrainer(tiny_model, [("p", "c" * 100, "r")])  # cut to the model's 64 positions by default
    assert len(trainer.pairs[0]["chosen"][0]) == 64


TWO_PROCESS_SCRIPT = """
import json, sys, torch
from pathlib import Path
from x_transformers import Decoder, TransformerWrapper
from safetensors.torch import load_file
from self_rewarding_lm_pytorch.training.loop import TrainConfig
from self_rewarding_lm_pytorch.training.accelerators import make_accelerator
from self_rewarding_lm_pytorch.trainers import dpo
from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer

torch.set_num_threads(1)
out, acc, tok = Path(sys.argv[1]), make_accelerator(dict(cpu=True)), ByteTokenizer()
torch.manual_seed(0)
model = TransformerWrapper(num_tokens=259, max_seq_len=64, attn_layers=Decoder(dim=32, depth=1, heads=2))
records = [{"prompt": f"{i}?", "chosen": "yes" * (1 + i % 3), "rejected": "no" * (1 + i % 5)} for i in range(11)]
pairs = dpo.encode_pairs(records, tok)
fresh = dpo.compute_ref_logprobs(model, pairs, pad_id=tok.pad_id, progress=False)
calls = []
from self_rewarding_lm_pytorch.trainers import reference_logprobs
inner = reference_logprobs.compute_ref_logprobs
def counted(ref, share, **kw):
    calls.append(len(share))
    return inner(ref, share, **kw)
reference_logprobs.compute_ref_logprobs = counted
config = TrainConfig(num_train_steps=2, batch_size=4, progress=False)
dpo.train_dpo(model, records, tokenizer=tok, accelerator=acc, run_dir=out, config=config)
acc.wait_for_everyone()
stored = load_file(str(out / dpo.REF_LOGPROBS_FILE))["train"]
report = {"world": acc.num_processes, "calls": calls, "diff": float((stored - fresh).abs().max()),
          "sums": [float(p.detach().double().sum()) for p in model.parameters()]}
(out / f"rank{acc.process_index}.json").write_text(json.dumps(report))
"""


@pytest.mark.distributed
def test_two_processes_split_the_reference_pass(tmp_path):
    """Under `accelerate launch` (2 CPU processes, gloo) each process computes its share of the reference
    log-probs (6 + 5 of 11 pairs); the gathered table equals a one-process computation and both
    processes end with the same weights."""
    import json

    from launcher import launch

    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    launch(script, tmp_path / "run", timeout=180)
    reports = [json.loads((tmp_path / "run" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in reports] == [2, 2]
    assert sorted(r["calls"][0] for r in reports) == [5, 6]
    assert all(r["diff"] < 1e-5 for r in reports)
    assert reports[0]["sums"] == reports[1]["sums"]
