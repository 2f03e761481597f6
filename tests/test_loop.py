"""The training loop: exact resume, schedules, accumulation, early stopping, metrics, data order."""

import json
import math
import random

import pytest
import torch
from conftest import assert_same_weights, weights
from torch import nn

from self_rewarding_lm_pytorch.training.accelerators import make_accelerator
from self_rewarding_lm_pytorch.training.loop import TrainConfig, epoch_permutation, lr_multiplier, train


@pytest.fixture
def accelerator():
    return make_accelerator(dict(cpu=True))


class RegressionTask:
    """y = f(x) regression; draws from python `random` and torch so that RNG restore matters."""

    key_metric = "mse"

    def __init__(self, crash_at_call=None, noise=0.0):
        self.calls, self.crash_at_call, self.noise, self.seen = 0, crash_at_call, noise, []

    def collate(self, items):
        self.seen.extend(int(i[2]) for i in items)
        return {"x": torch.stack([i[0] for i in items]), "y": torch.stack([i[1] for i in items])}

    def step(self, model, batch):
        self.calls += 1
        if self.calls == self.crash_at_call:
            raise RuntimeError("simulated crash")
        jitter = 1.0 + self.noise * random.random()  # python RNG
        noise = self.noise * torch.randn_like(batch["y"])  # torch RNG (besides dropout)
        mse = ((model(batch["x"]) * jitter - batch["y"] - noise) ** 2).mean()
        return mse, {"mse": mse.detach()}


def make_data(n=24, sign=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 2, generator=torch.Generator().manual_seed(123))
    out = []
    for i in range(n):
        x = torch.randn(4, generator=g)
        out.append((x, sign * (x @ w), torch.tensor(i)))
    return out


def make_model(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 32), nn.GELU(), nn.Dropout(dropout), nn.Linear(32, 2))


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


RESUME_CONFIG = dict(
    num_train_steps=20,
    batch_size=4,
    grad_accum_steps=2,
    learning_rate=3e-3,
    weight_decay=0.1,
    warmup_steps=3,
    lr_schedule="cosine",
    log_every=1,
    checkpoint_every=5,
    progress=False,
)


@pytest.mark.stage
def test_resume_after_crash_matches_uninterrupted_run(tmp_path, accelerator):
    """20 steps straight vs a crash inside step 11 (after the step-10 checkpoint), then resume:
    per-step losses and final weights agree to 1e-5. Dropout + python/torch noise make RNG restore matter;
    24 items at 8 per step cross epoch boundaries; cosine warmup and AdamW state must be restored too."""
    config = TrainConfig(**RESUME_CONFIG)
    straight = make_model(dropout=0.2)
    train(straight, RegressionTask(noise=0.1), make_data(), config, accelerator=accelerator, run_dir=tmp_path / "a")

    crashed = make_model(dropout=0.2)
    # 2 micro-steps per optimizer step: call 21 is the first micro-step of step 11.
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(
            crashed,
            RegressionTask(noise=0.1, crash_at_call=21),
            make_data(),
            config,
            accelerator=accelerator,
            run_dir=tmp_path / "b",
        )
    assert read_metrics(tmp_path / "b")[-1]["step"] == 10

    resumed = make_model(dropout=0.2, seed=99)  # different init: everything must come from the checkpoint
    torch.manual_seed(12345)  # and a different global RNG
    result = train(
        resumed,
        RegressionTask(noise=0.1),
        make_data(),
        config,
        accelerator=accelerator,
        run_dir=tmp_path / "b",
        resume=True,
    )

    assert result.steps == 20
    losses_a = [r["loss"] for r in read_metrics(tmp_path / "a")]
    losses_b = [r["loss"] for r in read_metrics(tmp_path / "b")]
    assert [r["step"] for r in read_metrics(tmp_path / "b")] == list(range(1, 21))
    assert losses_a == pytest.approx(losses_b, abs=1e-5)
    assert [r["loss"] for r in result.history] == pytest.approx(losses_a, abs=1e-5)
    assert_same_weights(weights(straight), weights(resumed))


@pytest.mark.stage
def test_resume_without_checkpoint_starts_fresh(tmp_path, accelerator):
    config = TrainConfig(num_train_steps=5, batch_size=4, log_every=1, progress=False)
    a, b = make_model(), make_model()
    ra = train(a, RegressionTask(), make_data(), config, accelerator=accelerator, run_dir=tmp_path / "a")
    rb = train(b, RegressionTask(), make_data(), config, accelerator=accelerator, run_dir=tmp_path / "b", resume=True)
    assert ra.steps == rb.steps == 5
    assert_same_weights(weights(a), weights(b), atol=0)


@pytest.mark.stage
def test_resume_of_finished_run_does_nothing_more(tmp_path, accelerator):
    config = TrainConfig(num_train_steps=4, batch_size=4, log_every=1, progress=False)
    model = make_model()
    train(model, RegressionTask(), make_data(), config, accelerator=accelerator, run_dir=tmp_path)
    task = RegressionTask()
    again = make_model(seed=5)
    result = train(again, task, make_data(), config, accelerator=accelerator, run_dir=tmp_path, resume=True)
    assert task.calls == 0 and result.steps == 4
    assert_same_weights(weights(model), weights(again), atol=0)


@pytest.mark.stage
def test_resume_with_changed_batch_size_is_an_error(tmp_path, accelerator):
    train(
        make_model(),
        RegressionTask(),
        make_data(),
        TrainConfig(num_train_steps=2, batch_size=4, progress=False),
        accelerator=accelerator,
        run_dir=tmp_path,
    )
    with pytest.raises(ValueError, match="batch_size: 4 -> 8"):
        train(
            make_model(),
            RegressionTask(),
            make_data(),
            TrainConfig(num_train_steps=4, batch_size=8, progress=False),
            accelerator=accelerator,
            run_dir=tmp_path,
            resume=True,
        )


@pytest.mark.unit
def test_lr_schedules_against_hand_values():
    """warmup 2, total 6: warmup gives (s+1)/2 = 0.5, 1.0; then p = (s-2)/4 for s = 2..5 is 0, .25, .5, .75;
    linear 1-p = 1, .75, .5, .25; cosine (1+cos(pi p))/2 = 1, .853553, .5, .146447; constant 1."""

    def values(schedule):
        return [lr_multiplier(s, warmup_steps=2, total_steps=6, schedule=schedule) for s in range(6)]

    assert values("constant") == pytest.approx([0.5, 1, 1, 1, 1, 1])
    assert values("linear") == pytest.approx([0.5, 1, 1, 0.75, 0.5, 0.25])
    assert values("cosine") == pytest.approx([0.5, 1, 1, 0.8535534, 0.5, 0.1464466], abs=1e-6)
    assert lr_multiplier(0, warmup_steps=0, total_steps=4, schedule="linear") == 1.0


@pytest.mark.stage
@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_loop_applies_the_schedule(schedule, accelerator):
    config = TrainConfig(
        num_train_steps=6,
        batch_size=4,
        warmup_steps=2,
        lr_schedule=schedule,
        learning_rate=0.1,
        log_every=1,
        progress=False,
    )
    result = train(make_model(), RegressionTask(), make_data(), config, accelerator=accelerator)
    expected = [0.1 * lr_multiplier(s, warmup_steps=2, total_steps=6, schedule=schedule) for s in range(6)]
    assert [r["lr"] for r in result.history] == pytest.approx(expected)


@pytest.mark.stage
def test_grad_accumulation_equals_the_full_batch(accelerator):
    """accum 2 x batch 4 reads the same 8 items per step as batch 8; equal-sized micro-batches make
    the mean of the two mean losses the mean over 8, so losses and updates match exactly (to 1e-5)."""
    base = dict(num_train_steps=6, learning_rate=1e-2, log_every=1, progress=False, max_grad_norm=0.5)
    a, b = make_model(), make_model()
    ra = train(a, RegressionTask(), make_data(), TrainConfig(batch_size=8, **base), accelerator=accelerator)
    rb = train(
        b, RegressionTask(), make_data(), TrainConfig(batch_size=4, grad_accum_steps=2, **base), accelerator=accelerator
    )
    assert [r["loss"] for r in ra.history] == pytest.approx([r["loss"] for r in rb.history], abs=1e-5)
    assert [r["grad_norm"] for r in ra.history] == pytest.approx([r["grad_norm"] for r in rb.history], abs=1e-5)
    assert_same_weights(weights(a), weights(b))


@pytest.mark.stage
def test_early_stopping_restores_the_best_weights(tmp_path, accelerator):
    """Validation targets are the negated training targets, so validation loss only rises after the first
    check (step 2): with patience 2 training stops at step 6 and the weights are those of step 2."""
    config = TrainConfig(
        num_train_steps=50,
        batch_size=4,
        learning_rate=3e-2,
        valid_every=2,
        early_stopping_patience=2,
        log_every=2,
        progress=False,
    )
    model = make_model()
    result = train(
        model,
        RegressionTask(),
        make_data(),
        config,
        accelerator=accelerator,
        run_dir=tmp_path,
        valid_dataset=make_data(8, sign=-1.0, seed=1),
    )
    valid = [r["valid/loss"] for r in result.history if "valid/loss" in r]
    assert valid == sorted(valid) and len(valid) == 3  # rising: the premise of the test
    assert result.stopped_early and result.steps == 6 and result.best_step == 2
    assert result.best_metrics["loss"] == pytest.approx(valid[0])

    reference = make_model()
    train(
        reference,
        RegressionTask(),
        make_data(),
        TrainConfig(num_train_steps=2, batch_size=4, learning_rate=3e-2, progress=False),
        accelerator=accelerator,
    )
    assert_same_weights(weights(model), weights(reference))
    from self_rewarding_lm_pytorch.training.checkpoint import load_model

    saved = make_model(seed=3)
    load_model(saved, tmp_path / "model.safetensors")
    assert_same_weights(weights(saved), weights(reference))


@pytest.mark.stage
def test_metrics_jsonl_content(tmp_path, accelerator):
    """log_every 3 over 7 steps logs steps 3, 6 and the last (7); each record averages its window."""
    config = TrainConfig(num_train_steps=7, batch_size=4, log_every=3, valid_every=5, progress=False)
    every = train(
        make_model(),
        RegressionTask(),
        make_data(),
        TrainConfig(num_train_steps=7, batch_size=4, log_every=1, progress=False),
        accelerator=accelerator,
    )
    result = train(
        make_model(),
        RegressionTask(),
        make_data(),
        config,
        accelerator=accelerator,
        run_dir=tmp_path,
        valid_dataset=make_data(6, seed=2),
    )
    records = read_metrics(tmp_path)
    assert records == json.loads(json.dumps(result.history))
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [3, 6, 7]
    assert set(train_records[0]) == {"step", "epoch", "lr", "loss", "mse", "grad_norm"}
    per_step = [r["loss"] for r in every.history]
    assert train_records[0]["loss"] == pytest.approx(sum(per_step[:3]) / 3, abs=1e-6)
    assert train_records[2]["loss"] == pytest.approx(per_step[6], abs=1e-6)
    assert train_records[1]["epoch"] == pytest.approx(6 * 4 / 24)
    valid_records = [r for r in records if "valid/loss" in r]
    assert [r["step"] for r in valid_records] == [5, 7]  # every 5 steps and at the end
    assert set(valid_records[0]) == {"step", "valid/loss", "valid/mse"}


@pytest.mark.stage
def test_each_epoch_visits_every_item_once(accelerator):
    task = RegressionTask()
    result = train(
        make_model(),
        task,
        make_data(12),
        TrainConfig(num_epochs=2, batch_size=4, progress=False),
        accelerator=accelerator,
    )
    assert result.steps == 6  # ceil(2 epochs * 12 items / 4 per step)
    assert sorted(task.seen[:12]) == list(range(12)) and sorted(task.seen[12:]) == list(range(12))
    assert task.seen[:12] != task.seen[12:]  # a fresh permutation per epoch
    assert torch.equal(epoch_permutation(0, 1, 12), epoch_permutation(0, 1, 12))


@pytest.mark.stage
def test_only_trainable_parameters_change(accelerator):
    model = make_model()
    model[0].requires_grad_(False)
    before = weights(model)
    train(
        model,
        RegressionTask(),
        make_data(),
        TrainConfig(num_train_steps=3, batch_size=4, weight_decay=0.5, learning_rate=1e-2, progress=False),
        accelerator=accelerator,
    )
    after = weights(model)
    assert torch.equal(before["0.weight"], after["0.weight"]) and torch.equal(before["0.bias"], after["0.bias"])
    assert not torch.equal(before["3.weight"], after["3.weight"])


@pytest.mark.unit
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(lr_schedule="step"), "lr_schedule"),
        (dict(num_epochs=0.0), "num_epochs"),
        (dict(early_stopping_patience=2), "needs valid_every"),
        (dict(early_stopping_mode="up"), "early_stopping_mode"),
        (dict(learning_rate=0.0), "learning_rate"),
    ],
)
def test_bad_config_is_rejected_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


@pytest.mark.unit
def test_bad_task_and_metrics_are_typed_errors(accelerator):
    with pytest.raises(TypeError, match="collate"):
        train(
            make_model(), object(), make_data(), TrainConfig(num_train_steps=1, progress=False), accelerator=accelerator
        )

    class VectorMetric(RegressionTask):
        def step(self, model, batch):
            loss, _ = super().step(model, batch)
            return loss, {"per_row": torch.zeros(3)}

    with pytest.raises(ValueError, match="per_row"):
        train(
            make_model(),
            VectorMetric(),
            make_data(),
            TrainConfig(num_train_steps=1, progress=False),
            accelerator=accelerator,
        )


@pytest.mark.unit
def test_make_accelerator_reuses_and_refuses_accumulation():
    assert make_accelerator(dict(cpu=True)) is make_accelerator(dict(cpu=True))
    with pytest.raises(ValueError, match="grad_accum_steps"):
        make_accelerator(dict(cpu=True, gradient_accumulation_steps=2))
    # accelerate 1.15 keeps one process-wide state: a second precision setting is a clear error
    with pytest.raises(ValueError, match="cannot create an Accelerator"):
        make_accelerator(dict(cpu=True, mixed_precision="bf16"))


@pytest.mark.unit
def test_total_steps_from_epochs():
    assert TrainConfig(batch_size=4, grad_accum_steps=2).total_steps(20) == math.ceil(20 / 8)
    assert TrainConfig(num_epochs=2.5, batch_size=4).total_steps(10) == math.ceil(25 / 4)
    assert TrainConfig(num_train_steps=7).total_steps(1000) == 7
    # both: epochs over the data actually given, num_train_steps the upper bound
    assert TrainConfig(num_epochs=2, num_train_steps=100, batch_size=16).total_steps(93) == math.ceil(2 * 93 / 16)
    assert TrainConfig(num_epochs=2, num_train_steps=100, batch_size=16).total_steps(1000) == 100


@pytest.mark.stage
def test_tensorboard_requested_but_missing_still_logs_jsonl(tmp_path, accelerator, caplog):
    """tensorboard is not installed here: asking for it warns and metrics.jsonl is still written."""
    try:
        import torch.utils.tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed; the fallback path is not reachable")
    except ImportError:
        pass
    config = TrainConfig(num_train_steps=2, batch_size=4, log_every=1, tensorboard=True, progress=False)
    with caplog.at_level("WARNING"):
        train(make_model(), RegressionTask(), make_data(), config, accelerator=accelerator, run_dir=tmp_path)
    assert "tensorboard" in caplog.text
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


@pytest.mark.stage
def test_task_valid_step_is_used_and_weighted_by_items(accelerator):
    """valid_step's per-batch metrics are averaged weighted by batch size: 5 items in batches of 4 and 1,
    metric = batch size, so the mean is (4*4 + 1*1) / 5 = 3.4."""

    class Sized(RegressionTask):
        def valid_step(self, model, batch):
            return {"size": torch.tensor(float(len(batch["x"])))}

    config = TrainConfig(num_train_steps=1, batch_size=4, progress=False)
    result = train(make_model(), Sized(), make_data(), config, accelerator=accelerator, valid_dataset=make_data(5))
    assert result.history[-1] == {"step": 1, "valid/size": pytest.approx(3.4)}
