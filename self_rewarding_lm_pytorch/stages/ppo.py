"""The PPO stage: roll out responses to prompts, score them (self-judge, a reward model or any callable),
and optimise the policy with `ppo.PPOTrainer` under a KL penalty to the policy as the stage found it.

Files in the stage folder: `metrics.jsonl` (one record of PPO stats per step), `rollouts.jsonl`
(step, prompt, response, score; score null when the reward could not score it),
`value_head.safetensors` at the end (the pipeline saves the policy itself), and
`checkpoint/step-*/` (policy + value head, optimizer, PPO state) every `checkpoint_every` steps,
from which a rerun resumes.

Shapes: b batch (rollouts); the tensors live in `ppo` and `sampling`, this module handles ids and text.
"""

from __future__ import annotations

import dataclasses
import math
import signal
from collections.abc import Sized
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import torch
from tqdm.auto import tqdm

from self_rewarding_lm_pytorch.core.files import JsonlAppender, resume_jsonl
from self_rewarding_lm_pytorch.core.reward_source import SELF_JUDGE, Scorer, check_reward_source, scoring_fn
from self_rewarding_lm_pytorch.core.sampling_config import JudgeSettings, SamplingConfig
from self_rewarding_lm_pytorch.core.tokenizer import encode_prompt, to_id_list
from self_rewarding_lm_pytorch.rl.ppo import PPOConfig, PPOTrainer, check_ppo_sampling
from self_rewarding_lm_pytorch.stages.context import StageContext, resolve_dataset
from self_rewarding_lm_pytorch.stages.fields import describe_config
from self_rewarding_lm_pytorch.stages.sampling import as_sampling_config, stage_sampling
from self_rewarding_lm_pytorch.training.faults import StopSignals, TrainingStopped

__all__ = ["SELF_JUDGE", "PPOStageConfig"]

METRICS_FILE = "metrics.jsonl"
ROLLOUTS_FILE = "rollouts.jsonl"


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


@dataclass(frozen=True)
class PPOStageConfig:
    """PPO against a reward: `reward="self_judge"` (the policy judges its own responses with the run's
    `RewardConfig`), a `RewardModel` (anything with `as_reward_fn`), or a callable
    `(prompts: list[str], responses: list[str]) -> scores`. Unscored rollouts (NaN) are masked out
    of the update (never scored 0); a step where none is scored trains nothing.

    Each of `num_ppo_steps` steps samples `ppo.batch_size` prompts (a seeded reshuffle per pass over
    the dataset) and makes one `PPOTrainer.step`. `ppo.seed` is replaced by the stage's seed, and
    `ppo.temperature` by `temperature` (PPO's log-probs are taken at the sampling temperature).
    `top_k`, `top_p` and `min_p` must stay None: PPO cannot account for sampling filters
    (`UnsupportedSamplingError` at construction, see `ppo.check_ppo_sampling`).
    """

    kind: ClassVar[str] = "ppo"

    prompt_dataset: Any
    num_ppo_steps: int = 100
    reward: Any = SELF_JUDGE
    ppo: PPOConfig | dict = field(default_factory=PPOConfig)
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    num_judgments: int = 3
    judge_max_new_tokens: int = 64
    judge_temperature: float = 0.7
    judge_top_p: float | None = 0.9
    checkpoint_every: int | None = 10
    sampling: SamplingConfig | dict | None = None
    judge_sampling: SamplingConfig | dict | None = None

    # the loose fields and the SamplingConfig field each stands for (`sampling=` and `judge_sampling=`)
    _SAMPLING_FIELDS: ClassVar[dict[str, str]] = {
        name: name for name in ("temperature", "top_k", "top_p", "min_p", "max_new_tokens")
    }
    _JUDGE_SAMPLING_FIELDS: ClassVar[dict[str, str]] = {
        "judge_temperature": "temperature",
        "judge_top_p": "top_p",
        "judge_max_new_tokens": "max_new_tokens",
    }

    @property
    def sampling_config(self) -> SamplingConfig:
        """How rollouts are sampled: `sampling=` or the loose fields (one rule, `stages.sampling`)."""
        return stage_sampling(self, "sampling", self._SAMPLING_FIELDS)

    @property
    def judge_settings(self) -> JudgeSettings:
        """How the self-judge samples: `judge_sampling=` or the loose `judge_*` fields, `num_judgments` each."""
        return JudgeSettings(stage_sampling(self, "judge_sampling", self._JUDGE_SAMPLING_FIELDS), self.num_judgments)

    @property
    def uses_judge(self) -> bool:
        """Whether the run's judge template decides this stage's rewards (part of its identity on resume)."""
        return isinstance(self.reward, str) and self.reward == SELF_JUDGE

    def __post_init__(self):
        if isinstance(self.ppo, dict):  # from a config file: unknown keys are a TypeError from PPOConfig itself
            object.__setattr__(self, "ppo", PPOConfig(**self.ppo))
        if not isinstance(self.ppo, PPOConfig):
            raise TypeError(f"ppo must be a PPOConfig or a dict of its fields, got {type(self.ppo).__name__}")
        check_reward_source(self.reward, name="reward", allow_self_judge=True)
        for name in ("num_ppo_steps", "num_judgments"):  # the sampling settings: SamplingConfig checks them
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.checkpoint_every is not None and (
            not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1
        ):
            raise ValueError(f"checkpoint_every must be an int >= 1 or None, got {self.checkpoint_every!r}")
        for name in ("sampling", "judge_sampling"):
            object.__setattr__(self, name, as_sampling_config(getattr(self, name), where=f"PPOStageConfig.{name}"))
        for name, settings in (("sampling", self.sampling_config), ("judge_sampling", self.judge_settings.sampling)):
            if settings.max_new_tokens is None:  # a bad setting or a conflict has failed above already
                raise ValueError(f"PPOStageConfig.{name}.max_new_tokens must be set (PPO has no derived budget)")
        rollout = self.sampling_config
        check_ppo_sampling(rollout.temperature, rollout.top_k, rollout.top_p, rollout.min_p, where="PPOStageConfig")
        default_temperature = next(f.default for f in dataclasses.fields(PPOConfig) if f.name == "temperature")
        if self._ppo.temperature not in (default_temperature, rollout.temperature):
            raise ValueError(
                f"PPOStageConfig sampling temperature {rollout.temperature} but "
                f"ppo.temperature={self._ppo.temperature}: "
                "set the sampling temperature once, as the stage's temperature"
            )

    # --- the reward source ---

    def _scorer(self, ctx: StageContext, trainer: PPOTrainer) -> Scorer:
        from self_rewarding_lm_pytorch.self_reward.judge import judge_scores

        def self_judge(prompts, responses):
            return judge_scores(
                trainer.policy.transformer,
                ctx.tokenizer,
                ctx.reward_config,
                prompts,
                responses,
                settings=self.judge_settings,
                generator=trainer.sample_generator,
            ).scores

        # a RewardModel scores through its own tokenizer here, never the policy's (issue #11, defect 1)
        return scoring_fn(self.reward, name="reward", self_judge=self_judge)

    # --- running ---

    def _resume(self, ctx: StageContext, trainer: PPOTrainer) -> int:
        """The step to continue from; trims the JSONL logs to that step so no record is written twice."""
        from self_rewarding_lm_pytorch.training.checkpoint import latest_checkpoint, load_training_state

        checkpoint = latest_checkpoint(ctx.stage_dir) if ctx.resume else None
        if checkpoint is None:
            start = 0
        else:
            state = load_training_state(checkpoint, model=trainer.policy, optimizer=trainer.optimizer)
            trainer.load_state_dict(state["ppo"])
            start = int(
                state["stage_step"]
            )  # not trainer.num_steps: a step whose rollouts all went unscored trains nothing
        if ctx.is_main:
            for name in (METRICS_FILE, ROLLOUTS_FILE):
                resume_jsonl(ctx.stage_dir / name, lambda records: [r for r in records if r["step"] <= start])
        return start

    @staticmethod
    def _stop_agreed(signals: StopSignals, ctx: StageContext) -> bool:
        """Whether any process was asked to stop: all processes stop after the same step."""
        flag = torch.tensor(float(signals.signum is not None), device=ctx.accelerator.device)
        if ctx.accelerator.num_processes > 1:
            flag = ctx.accelerator.reduce(flag, reduction="sum")
        return bool(flag.item() > 0)

    def _save(self, ctx: StageContext, trainer: PPOTrainer, step: int):
        from self_rewarding_lm_pytorch.training.checkpoint import CHECKPOINT_DIR, save_training_state

        if ctx.is_main:
            save_training_state(
                ctx.stage_dir / CHECKPOINT_DIR,
                step,
                model=trainer.policy,
                optimizer=trainer.optimizer,
                state={"ppo": trainer.state_dict(), "stage_step": step},
                config=describe_config(self),
            )
        ctx.accelerator.wait_for_everyone()

    @property
    def _ppo(self) -> PPOConfig:
        return cast(PPOConfig, self.ppo)  # __post_init__ turned a dict into a PPOConfig

    def _batch(self, step: int, prompts: list, ctx: StageContext) -> list[int]:
        """This process's prompt indices for `step`: positions of a stream of seeded per-pass permutations."""
        from self_rewarding_lm_pytorch.training.loop import epoch_permutation

        size, rank, world = self._ppo.batch_size, ctx.accelerator.process_index, ctx.accelerator.num_processes
        first = (step * world + rank) * size
        out = []
        for position in range(first, first + size):
            epoch, i = divmod(position, len(prompts))
            out.append(int(epoch_permutation(ctx.seed, epoch, len(prompts))[i]))
        return out

    def run(self, ctx: StageContext) -> dict:
        dataset = resolve_dataset(self.prompt_dataset, name="prompt_dataset")
        prompts = [_prompt_of(dataset[i], i) for i in range(len(cast(Sized, dataset)))]
        if not prompts:
            raise ValueError("prompt_dataset is empty")
        tok = ctx.tokenizer
        trainer = PPOTrainer(
            ctx.model,
            config=dataclasses.replace(self._ppo, seed=ctx.seed, temperature=self.sampling_config.temperature),
            tokenizer=tok,
            accelerator=ctx.accelerator,
        )
        scorer = self._scorer(ctx, trainer)
        start = self._resume(ctx, trainer)
        sampling = dict(sampling=self.sampling_config)

        metrics = JsonlAppender(ctx.stage_dir / METRICS_FILE) if ctx.is_main else None
        rollouts = JsonlAppender(ctx.stage_dir / ROLLOUTS_FILE) if ctx.is_main else None
        history = []
        try:
            with StopSignals() as signals:
                for step in tqdm(
                    range(start, self.num_ppo_steps), desc="ppo", disable=not (ctx.progress and ctx.is_main)
                ):
                    stats = self._one_step(step, prompts, ctx, trainer, scorer, sampling, rollouts)
                    history.append(stats)
                    if metrics is not None:
                        metrics.write(stats)
                    is_last = step + 1 == self.num_ppo_steps
                    if self._stop_agreed(signals, ctx) and not is_last:
                        # pre-empted (SIGTERM) or Ctrl-C: a checkpoint at this step, then a non-zero exit
                        self._save(ctx, trainer, step + 1)
                        signum = signals.signum or signal.SIGTERM  # None here: another process got it
                        raise TrainingStopped(
                            signum, f"ppo: stopped by signal {signum} after step {step + 1}; rerun to resume"
                        )
                    if self.checkpoint_every and (step + 1) % self.checkpoint_every == 0 and not is_last:
                        self._save(ctx, trainer, step + 1)
        finally:
            for appender in (metrics, rollouts):
                if appender is not None:
                    appender.close()
        if ctx.is_main:  # the pipeline saves the policy; the value head is kept for a later PPO stage
            from self_rewarding_lm_pytorch.rl.value_head import VALUE_HEAD_FILE
            from self_rewarding_lm_pytorch.training.checkpoint import save_model

            save_model(trainer.policy.value_head, ctx.stage_dir / VALUE_HEAD_FILE)
        scored = [h for h in history if h["ppo/num_unscored"] < h["ppo/num_rollouts"]]
        return {
            "steps": self.num_ppo_steps,
            "resumed_from_step": start,
            "mean_score_last": scored[-1]["ppo/mean_scores"] if scored else None,
            "kl_last": scored[-1]["objective/kl"] if scored else None,
            "kl_coef": trainer.kl_ctl.value,
        }

    def _one_step(self, step, prompts, ctx, trainer, scorer, sampling, rollouts) -> dict:
        tok = ctx.tokenizer
        batch = [prompts[i] for i in self._batch(step, prompts, ctx)]
        queries = [torch.tensor(encode_prompt(tok, p) if isinstance(p, str) else p, dtype=torch.long) for p in batch]
        responses = trainer.generate(queries, **sampling)
        # the judge and reward models read text without the EOS token
        response_texts = [
            tok.decode(r[:-1] if tok.eos_id is not None and len(r) and int(r[-1]) == tok.eos_id else r)
            for r in responses
        ]
        prompt_texts = [p if isinstance(p, str) else tok.decode(p) for p in batch]
        scores = scorer(prompt_texts, response_texts).tolist()
        # unscored (NaN) rollouts go to the step too: it masks them out, and every process keeps the same batch shape
        stats = {"step": step + 1, "ppo/num_rollouts": len(batch), **trainer.step(queries, responses, scores)}
        if rollouts is not None:
            for p, r, s in zip(prompt_texts, response_texts, scores, strict=True):
                rollouts.write({"step": step + 1, "prompt": p, "response": r, "score": s if math.isfinite(s) else None})
        return stats
