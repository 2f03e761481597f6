"""The DPO variants in the trainers and stages: per-token NLL (RPO), one forward, no reference for the
reference-free losses, every variant trains, settings reach the trainer from Python and TOML."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from self_rewarding_lm_pytorch import PreferenceLoss
from self_rewarding_lm_pytorch.core.losses import REFERENCE_FREE_LOSS_TYPES
from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
from self_rewarding_lm_pytorch.trainers import dpo
from self_rewarding_lm_pytorch.trainers.dpo import REF_LOGPROBS_FILE, DPOTask, DPOTrainer

pytestmark = pytest.mark.stage

TOK = ByteTokenizer()
LOG2 = math.log(2.0)
NEW_LOSS_TYPES = ("dpop", "simpo", "orpo", "apo_zero", "apo_down", "nca")


def preference_records(n=16):
    """A learnable set: the chosen answer repeats the prompt's letter, the rejected one does not."""
    letters = "abcdefghijklmnop"
    return [
        {
            "prompt": f"{letters[i % 16]}?",
            "chosen": letters[i % 16] * 3,
            "rejected": letters[(i + 5) % 16] * (2 + i % 3),
        }
        for i in range(n)
    ]


class FiveTokenModel(nn.Module):
    """Fixed logits over a 2-token vocabulary: row t gives the token at t + 1 of [1, 0, 1, 0, 1] the
    probability 1/2, 1/4, 1/8, 1/16, whatever the input; counts its forwards."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.forwards = 0
        ids = [1, 0, 1, 0, 1]
        logits = torch.zeros(5, 2)
        for row, q in enumerate([1 / 2, 1 / 4, 1 / 8, 1 / 16]):
            target = ids[row + 1]
            logits[row, target], logits[row, 1 - target] = math.log(q), math.log(1 - q)
        self.register_buffer("logits", logits)

    def forward(self, input_ids):
        self.forwards += 1
        return self.scale * self.logits.expand(input_ids.shape[0], -1, -1)


def five_token_batch(**ref):
    """Row 0 (chosen) [p0 p1 r0 r1 PAD]: r0, r1 have log-probs log 1/4, log 1/8 -> sum -5 log 2 over 2 tokens.
    Row 1 (rejected) [p0 p1 r0 PAD PAD]: r0 alone -> sum -2 log 2 over 1 token."""
    ids = torch.tensor([[1, 0, 1, 0, 1]] * 2)
    is_response = torch.tensor([[False, False, True, True, False], [False, False, True, False, False]])
    return {"input_ids": ids, "is_response": is_response} | {k: torch.tensor([v]) for k, v in ref.items()}


def test_rpo_nll_is_the_chosen_response_per_token_mean():
    """Reference = policy, so DPO gives log 2; the NLL term is (2 + 3) log 2 / 2 = 2.5 log 2 (the chosen
    response's mean over its 2 tokens, PAD and prompt excluded); weight 0.4 -> log 2 + log 2."""
    model = FiveTokenModel()
    task = DPOTask(pad_id=0, loss=PreferenceLoss(beta=0.5, sft_weight=0.4))
    loss, metrics = task.step(model, five_token_batch(ref_chosen=-5 * LOG2, ref_rejected=-2 * LOG2))
    assert metrics["sft_loss"].item() == pytest.approx(2.5 * LOG2, abs=1e-6)
    assert loss.item() == pytest.approx(2 * LOG2, abs=1e-6)
    assert model.forwards == 1


def test_simpo_takes_token_counts_from_the_same_forward():
    """Means -2.5 log 2 (chosen) and -2 log 2 (rejected); beta 1, gamma 0: -log s(-0.5 log 2) = log(1 + sqrt 2).
    One forward, no reference in the batch and none asked for."""
    model = FiveTokenModel()
    task = DPOTask(pad_id=0, loss=PreferenceLoss(beta=1.0, loss_type="simpo", simpo_gamma=0.0))
    loss, metrics = task.step(model, five_token_batch())
    assert loss.item() == pytest.approx(math.log(1 + math.sqrt(2)), abs=1e-6)
    assert metrics["rewards/margins"].item() == pytest.approx(-0.5 * LOG2, abs=1e-6)
    assert model.forwards == 1


class NoReference(nn.Module):
    """A reference model that must never run."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, *args, **kwargs):
        raise AssertionError("the reference model ran for a reference-free loss")


def forbid_reference(monkeypatch, module=dpo):
    def forbidden(*args, **kwargs):
        raise AssertionError("a reference pass or a reference copy was made for a reference-free loss")

    monkeypatch.setattr(module, "load_or_compute_ref_logprobs", forbidden)
    monkeypatch.setattr(module, "compute_ref_logprobs", forbidden)
    monkeypatch.setattr(module, "frozen_reference", forbidden)  # the one way trainers copy the policy


@pytest.mark.parametrize("loss_type", REFERENCE_FREE_LOSS_TYPES)
@pytest.mark.parametrize("precompute", [True, False])
@pytest.mark.parametrize("given_ref", [True, False])
def test_reference_free_losses_never_touch_a_reference(
    tiny_model, tmp_path, monkeypatch, loss_type, precompute, given_ref
):
    forbid_reference(monkeypatch)
    before = copy.deepcopy(tiny_model)
    trainer = DPOTrainer(
        tiny_model,
        preference_records(8),
        loss_type=loss_type,
        beta=2.0,
        precompute_ref_logprobs=precompute,
        ref_model=NoReference() if given_ref else None,
        checkpoint_folder=tmp_path,
        num_train_steps=3,
        batch_size=4,
        learning_rate=3e-3,
        progress=False,
    )
    assert trainer.ref_model is None or given_ref  # no copy of the policy was made
    trainer()
    assert not (tmp_path / REF_LOGPROBS_FILE).exists()
    assert not all(torch.equal(p, q) for p, q in zip(tiny_model.parameters(), before.parameters(), strict=True))


@pytest.mark.parametrize(
    "loss_type, kwargs",
    [
        ("dpop", {}),
        ("simpo", dict(beta=2.0, simpo_gamma=0.5)),
        ("orpo", dict(orpo_lambda=0.5)),
        ("apo_zero", {}),
        ("apo_down", {}),
        ("nca", {}),
        ("sigmoid", dict(sft_weight=0.5)),
    ],
)
def test_every_variant_learns_the_preference(tiny_model, loss_type, kwargs):
    """On a learnable set the chosen-over-rejected margin (rewards/margins, or the log-odds ratio for
    ORPO) grows and the loss falls."""
    history = DPOTrainer(
        tiny_model,
        preference_records(16),
        loss_type=loss_type,
        checkpoint_folder=None,
        num_train_steps=30,
        batch_size=8,
        learning_rate=3e-3,
        log_every=1,
        progress=False,
        **({"beta": 0.5} | kwargs),
    )().history
    history = [r for r in history if "loss" in r]
    first, last = history[0], history[-3:]
    assert all(math.isfinite(r["loss"]) for r in history)
    assert min(r["rewards/margins"] for r in last) > first["rewards/margins"] + 0.1
    assert max(r["loss"] for r in last) < first["loss"]


def test_spin_with_a_reference_free_loss_makes_no_reference(tiny_model, tmp_path, monkeypatch):
    from self_rewarding_lm_pytorch.trainers.spin import train_spin_iteration
    from self_rewarding_lm_pytorch.training.accelerators import make_accelerator
    from self_rewarding_lm_pytorch.training.loop import TrainConfig

    forbid_reference(monkeypatch)
    items = [(f"{i}=", w) for i, w in enumerate(["zero", "one", "two", "three"])]
    result, _ = train_spin_iteration(
        tiny_model,
        items,
        tokenizer=TOK,
        accelerator=make_accelerator(),
        run_dir=tmp_path,
        config=TrainConfig(num_train_steps=2, batch_size=4, learning_rate=3e-3, log_every=1, progress=False),
        max_seq_len=16,
        lambda_=2.0,
        loss_type="simpo",
    )
    assert result.steps == 2 and not (tmp_path / REF_LOGPROBS_FILE).exists()
    assert {"rewards/real", "rewards/generated"} <= set(result.history[0])


def test_spin_trainer_passes_the_loss_settings(tiny_model, tmp_path, monkeypatch):
    from self_rewarding_lm_pytorch.trainers import spin

    seen = []
    monkeypatch.setattr(spin, "train_spin_iteration", lambda *a, **k: seen.append(k) or (SimpleNamespace(steps=1), []))
    spin.SPINTrainer(
        tiny_model,
        [("1=", "one")],
        max_seq_len=16,
        spin_kwargs={"λ": 0.3},
        loss_type="dpop",
        dpop_lambda=5.0,
        checkpoint_folder=tmp_path,
        progress=False,
    )()
    assert {k: seen[0][k] for k in ("lambda_", "loss_type", "dpop_lambda")} == dict(
        lambda_=0.3, loss_type="dpop", dpop_lambda=5.0
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(loss_type="dpo-positive"), "loss_type must be one of"),
        (dict(loss_type="dpop", dpop_lambda=-1.0), "dpop_lambda must be"),
        (dict(loss_type="simpo", simpo_gamma=-0.1), "simpo_gamma must be"),
        (dict(loss_type="orpo", orpo_lambda=-0.1), "orpo_lambda must be"),
        (dict(sft_weight=float("nan")), "sft_weight must be >= 0"),
    ],
)
def test_bad_values_fail_at_construction_everywhere(tiny_model, kwargs, message):
    from self_rewarding_lm_pytorch.stages.external_reward_dpo import ExternalRewardDPOConfig
    from self_rewarding_lm_pytorch.stages.self_reward_dpo import SelfRewardDPOConfig
    from self_rewarding_lm_pytorch.stages.spin import SelfPlayConfig
    from self_rewarding_lm_pytorch.trainers.spin import SPINTrainer

    with pytest.raises(ValueError, match=message):
        DPOTrainer(tiny_model, preference_records(2), **kwargs)
    stage_kwargs = {("dpo_loss_type" if k == "loss_type" else k): v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=message):
        SelfRewardDPOConfig(["1+1="], 2, **stage_kwargs)
    with pytest.raises(ValueError, match=message):
        ExternalRewardDPOConfig(lambda p, r: [0.0] * len(p), ["1+1="], 2, **stage_kwargs)
    if "sft_weight" not in kwargs:  # SPIN has no NLL term
        with pytest.raises(ValueError, match=message):
            SelfPlayConfig([("1=", "one")], **stage_kwargs)
        with pytest.raises(ValueError, match=message):
            SPINTrainer(tiny_model, [("1=", "one")], max_seq_len=16, checkpoint_folder=None, **kwargs)


TOML = """
run_dir = "run"
[model]
max_seq_len = 32
[model.attn_layers]
dim = 16
depth = 1
heads = 2

[[stages]]
kind = "external-reward-dpo"
reward_model = { import = "self_rewarding_lm_pytorch.demo.task:verifier_reward" }
prompt_dataset = ["1+1=", "2+2="]
num_generated_preference_pairs = 2
dpo_loss_type = "dpop"
dpop_lambda = 5.0
sft_weight = 0.2

[[stages]]
kind = "spin"
train_dataset = "sft.jsonl"
dpo_loss_type = "simpo"
simpo_gamma = 0.25
"spin_λ" = 2.0
"""


def test_a_loss_selected_in_toml_reaches_the_trainer(tiny_model, tmp_path, monkeypatch):
    from self_rewarding_lm_pytorch.config_file import build_stage_configs, load_pipeline_file
    from self_rewarding_lm_pytorch.self_reward import preferences
    from self_rewarding_lm_pytorch.trainers import spin

    (tmp_path / "sft.jsonl").write_text('{"prompt": "1=", "response": "one"}\n')
    path = tmp_path / "pipeline.toml"
    path.write_text(TOML)
    external, self_play = build_stage_configs(load_pipeline_file(path))

    seen = {}
    record = {"prompt": "1+1=", "chosen": "2", "rejected": "3"}
    monkeypatch.setattr(
        preferences, "generate_preferences", lambda *a, **k: SimpleNamespace(records=[record], stats={})
    )

    def record_dpo(trainer):
        seen["dpo"] = trainer.loss.to_dict()
        return SimpleNamespace(steps=1)

    monkeypatch.setattr(dpo.DPOTrainer, "__call__", record_dpo)
    monkeypatch.setattr(
        spin, "train_spin_iteration", lambda *a, **k: seen.setdefault("spin", k) and (SimpleNamespace(steps=1), [])
    )
    ctx = SimpleNamespace(  # a StageContext's fields; the trainers make their own accelerator
        model=tiny_model,
        tokenizer=TOK,
        accelerator=None,
        stage_dir=tmp_path / "stage",
        seed=0,
        resume=False,
        reward_config=None,
        progress=False,
        is_main=True,
    )
    external.run(ctx)
    self_play.run(ctx)
    assert {k: seen["dpo"][k] for k in ("loss_type", "dpop_lambda", "sft_weight")} == dict(
        loss_type="dpop", dpop_lambda=5.0, sft_weight=0.2
    )
    assert {k: seen["spin"][k] for k in ("loss_type", "simpo_gamma", "lambda_")} == dict(
        loss_type="simpo", simpo_gamma=0.25, lambda_=2.0
    )


def test_a_bad_loss_setting_in_toml_fails_when_the_file_is_built(tmp_path):
    from self_rewarding_lm_pytorch.config_file import build_stage_configs, load_pipeline_file

    (tmp_path / "sft.jsonl").write_text('{"prompt": "1=", "response": "one"}\n')
    path = tmp_path / "pipeline.toml"
    path.write_text(TOML.replace("dpop_lambda = 5.0", "dpop_lambda = -5.0"))
    with pytest.raises(ValueError, match="dpop_lambda must be"):
        build_stage_configs(load_pipeline_file(path))
