"""Running the PPO stage: each step rolls out responses to a batch of prompts, scores them with the
stage's reward and makes one `PPOTrainer.step`; logs, checkpoints and resumes in the stage folder
(its files are listed in `stages.ppo`, which holds the stage's config and calls `run_ppo_stage`).

Split from `stages.ppo` so that file stays the config (its fields, their checks, the deprecated
spellings) and this one the driver. Shapes: b batch (rollouts); the tensors live in `rl.ppo` and
`sampling`, this module handles ids and text.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Sized
from typing import TYPE_CHECKING, Any, cast

import torch
from tqdm.auto import tqdm

from self_rewarding_lm_pytorch.core.distributed import Shard
from self_rewarding_lm_pytorch.core.files import JsonlAppender, resume_jsonl
from self_rewarding_lm_pytorch.core.reward_source import Scorer, scoring_fn
from self_rewarding_lm_pytorch.core.tokenizer import encode_prompt, to_id_list
from self_rewarding_lm_pytorch.rl.ppo import PPOTrainer
from self_rewarding_lm_pytorch.stages.context import StageContext, resolve_dataset
from self_rewarding_lm_pytorch.stages.fields import describe_config, train_config_of
from self_rewarding_lm_pytorch.training.faults import StopSignals, TrainingStopped
from self_rewarding_lm_pytorch.training.schedule import epoch_permutation, lr_multiplier

if TYPE_CHECKING:
    from self_rewarding_lm_pytorch.stages.ppo import PPOStageConfig

__all__ = ["METRICS_FILE", "ROLLOUTS_FILE", "run_ppo_stage"]

METRICS_FILE = "metrics.jsonl"
ROLLOUTS_FILE = "rollouts.jsonl"


def run_ppo_stage(stage: PPOStageConfig, ctx: StageContext) -> dict:
    """Build the `PPOTrainer`, resume from the stage's latest checkpoint, train to the last step and
    save the value head; returns the stage's summary."""
    from self_rewarding_lm_pytorch.models import enable_gradient_checkpointing

    dataset = resolve_dataset(stage.prompt_dataset, name="prompt_dataset")
    prompts = [_prompt_of(dataset[i], i) for i in range(len(cast(Sized, dataset)))]
    if not prompts:
        raise ValueError("prompt_dataset is empty")
    train = train_config_of(stage, seed=ctx.seed, progress=ctx.progress)
    if train.gradient_checkpointing:
        enable_gradient_checkpointing(ctx.model)
    trainer = PPOTrainer(
        ctx.model,
        config=stage._trainer_config(train, ctx.accelerator.num_processes),
        tokenizer=ctx.tokenizer,
        accelerator=ctx.accelerator,
    )
    scorer = _scorer(stage, ctx, trainer)
    start = _resume(ctx, trainer)
    history = _train(stage, ctx, trainer, scorer, prompts, start, stage.total_steps(len(prompts)))
    trainer.end_sharding()  # under fsdp: the full trained weights are back in ctx.model
    if ctx.is_main:  # the pipeline saves the policy; the value head is kept for a later PPO stage
        from self_rewarding_lm_pytorch.rl.value_head import VALUE_HEAD_FILE
        from self_rewarding_lm_pytorch.training.checkpoint import save_model

        save_model(trainer.policy.value_head, ctx.stage_dir / VALUE_HEAD_FILE)
    scored = [h for h in history if h["ppo/num_unscored"] < h["ppo/num_rollouts"]]
    return {
        "steps": stage.total_steps(len(prompts)),
        "resumed_from_step": start,
        "mean_score_last": scored[-1]["ppo/mean_scores"] if scored else None,
        "kl_last": scored[-1]["objective/kl"] if scored else None,
        "kl_coef": trainer.kl_ctl.value,
    }


def _train(stage: PPOStageConfig, ctx, trainer, scorer, prompts, start: int, total: int) -> list[dict]:
    """Steps `start`..`total`: every step's stats (a record per `log_every` steps goes to metrics.jsonl)."""
    train = train_config_of(stage, seed=ctx.seed)
    metrics = JsonlAppender(ctx.stage_dir / METRICS_FILE) if ctx.is_main else None
    rollouts = JsonlAppender(ctx.stage_dir / ROLLOUTS_FILE) if ctx.is_main else None
    history: list[dict] = []
    window: list[dict] = []  # the steps since the last metrics record
    try:
        with StopSignals() as signals:
            for step in tqdm(range(start, total), desc="ppo", disable=not (ctx.progress and ctx.is_main)):
                multiplier = lr_multiplier(
                    step, warmup_steps=train.warmup_steps, total_steps=total, schedule=train.lr_schedule
                )
                for group in trainer.optimizer.param_groups:
                    group["lr"] = train.learning_rate * multiplier
                stats = _one_step(stage, step, prompts, ctx, trainer, scorer, rollouts)
                history.append(stats)
                window.append(stats)
                is_last, stop = step + 1 == total, _stop_agreed(signals, ctx)
                save = not is_last and (
                    stop or bool(stage.checkpoint_every and (step + 1) % stage.checkpoint_every == 0)
                )
                # a checkpoint flushes the window too, so resumed and straight runs log the same records
                if window and (is_last or save or (step + 1) % stage.log_every == 0):
                    if metrics is not None:
                        metrics.write(_window_record(window))
                    window = []
                if save:
                    trainer.save_checkpoint(
                        ctx.stage_dir, step + 1, state={"stage_step": step + 1}, config=describe_config(stage)
                    )
                if stop and not is_last:  # pre-empted (SIGTERM) or Ctrl-C: checkpointed above, a non-zero exit
                    signum = signals.signum or signal.SIGTERM  # None here: another process got it
                    raise TrainingStopped(
                        signum, f"ppo: stopped by signal {signum} after step {step + 1}; rerun to resume"
                    )
    finally:
        for appender in (metrics, rollouts):
            if appender is not None:
                appender.close()
    return history


def _one_step(stage: PPOStageConfig, step, prompts, ctx, trainer, scorer, rollouts) -> dict:
    """Roll out, score and step on this process's prompts of `step`; writes the global batch's rollouts."""
    tok = ctx.tokenizer
    batch = [prompts[i] for i in _batch(stage, step, prompts, ctx)]
    queries = [torch.tensor(encode_prompt(tok, p) if isinstance(p, str) else p, dtype=torch.long) for p in batch]
    prompt_texts = [p if isinstance(p, str) else tok.decode(p) for p in batch]
    # Under fsdp the full weights are gathered once for both sampling and the self-judge.
    with trainer.full_policy():
        responses = trainer.generate(queries, sampling=stage.sampling_config)
        # the judge and reward models read text without the EOS token
        response_texts = [
            tok.decode(r[:-1] if tok.eos_id is not None and len(r) and int(r[-1]) == tok.eos_id else r)
            for r in responses
        ]
        scores = scorer(prompt_texts, response_texts).tolist()
    # unscored (NaN) rollouts go to the step too: it masks them out, and every process keeps the same batch shape
    # the step's stats are over the global batch (every process's rollouts)
    stats = {"step": step + 1, "ppo/num_rollouts": stage.batch_size, **trainer.step(queries, responses, scores)}
    # every process's rollouts, in global row order (a collective), so the file is one process's file
    written = Shard.of(ctx.accelerator).gather_lists(list(zip(prompt_texts, response_texts, scores, strict=True)))
    if rollouts is not None:
        for p, r, s in written:
            rollouts.write({"step": step + 1, "prompt": p, "response": r, "score": s if math.isfinite(s) else None})
    return stats


def _batch(stage: PPOStageConfig, step: int, prompts: list, ctx: StageContext) -> list[int]:
    """This process's prompt indices for `step`: its contiguous share of the global batch, positions of
    a stream of seeded per-pass permutations (as the training loop reads its data)."""
    share = stage.batch_size // ctx.accelerator.num_processes
    first = step * stage.batch_size + ctx.accelerator.process_index * share
    out = []
    for position in range(first, first + share):
        epoch, i = divmod(position, len(prompts))
        out.append(int(epoch_permutation(ctx.seed, epoch, len(prompts))[i]))
    return out


def _scorer(stage: PPOStageConfig, ctx: StageContext, trainer: PPOTrainer) -> Scorer:
    """The stage's reward as a scorer of (prompts, responses) texts; the self-judge judges with the policy."""
    from self_rewarding_lm_pytorch.self_reward.judge import judge_scores

    def self_judge(prompts, responses):
        return judge_scores(
            trainer.policy.transformer,
            ctx.tokenizer,
            ctx.reward_config,
            prompts,
            responses,
            settings=stage.judge_settings,
            generator=trainer.sample_generator,
            # keyed by the rollout's index in the global batch, as the rollout itself was sampled
            first_pair=ctx.accelerator.process_index * len(prompts),
        ).scores

    # a RewardModel scores through its own tokenizer here, never the policy's (issue #11, defect 1)
    return scoring_fn(stage.reward, name="reward", self_judge=self_judge)


def _resume(ctx: StageContext, trainer: PPOTrainer) -> int:
    """The step to continue from; trims the JSONL logs to that step so no record is written twice."""
    from self_rewarding_lm_pytorch.training.checkpoint import latest_checkpoint

    checkpoint = latest_checkpoint(ctx.stage_dir) if ctx.resume else None
    # not trainer.num_steps: a step whose rollouts all went unscored trains nothing
    start = 0 if checkpoint is None else int(trainer.load_checkpoint(checkpoint)["stage_step"])
    if ctx.is_main:
        for name in (METRICS_FILE, ROLLOUTS_FILE):
            resume_jsonl(ctx.stage_dir / name, lambda records: [r for r in records if r["step"] <= start])
    return start


def _stop_agreed(signals: StopSignals, ctx: StageContext) -> bool:
    """Whether any process was asked to stop: all processes stop after the same step."""
    flag = torch.tensor(float(signals.signum is not None), device=ctx.accelerator.device)
    if ctx.accelerator.num_processes > 1:
        flag = ctx.accelerator.reduce(flag, reduction="sum")
    return bool(flag.item() > 0)


def _window_record(window: list[dict]) -> dict:
    """One metrics record for the steps in `window`: the last step, and each stat's mean over the steps
    that report it (a step that trained nothing has no loss)."""
    if len(window) == 1:
        return window[0]
    keys = dict.fromkeys(k for record in window for k in record if k != "step")
    means = {k: sum(r[k] for r in window if k in r) / sum(k in r for r in window) for k in keys}
    return {"step": window[-1]["step"], **means}


def _prompt_of(item: Any, index: int) -> Any:
    """A prompt string or id list from a dataset item: a str, ids, or a dict with "prompt"."""
    if isinstance(item, dict):
        if "prompt" not in item:
            raise ValueError(f"prompt_dataset item {index} is a dict without a 'prompt' key")
        item = item["prompt"]
    if isinstance(item, str):
        if not item:
            raise ValueError(f"prompt_dataset item {index} is an empty prompt")
        return item
    return to_id_list(item)
