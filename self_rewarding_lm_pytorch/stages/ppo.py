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
import warnings
from collections.abc import Sized
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import torch
from tqdm.auto import tqdm

from self_rewarding_lm_pytorch.core.distributed import Shard
from self_rewarding_lm_pytorch.core.files import JsonlAppender, resume_jsonl
from self_rewarding_lm_pytorch.core.reward_source import SELF_JUDGE, Scorer, check_reward_source, scoring_fn
from self_rewarding_lm_pytorch.core.sampling_config import JudgeSettings, SamplingConfig
from self_rewarding_lm_pytorch.core.tokenizer import encode_prompt, to_id_list
from self_rewarding_lm_pytorch.rl.ppo import PPOConfig, PPOTrainer, check_ppo_sampling
from self_rewarding_lm_pytorch.stages.context import StageContext, resolve_dataset
from self_rewarding_lm_pytorch.stages.fields import TrainingFields, describe_config, train_config_of
from self_rewarding_lm_pytorch.stages.sampling import as_sampling_config, stage_sampling
from self_rewarding_lm_pytorch.training.config import TrainConfig
from self_rewarding_lm_pytorch.training.faults import StopSignals, TrainingStopped
from self_rewarding_lm_pytorch.training.schedule import lr_multiplier

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


# PPOConfig's training settings: in the stage they are its own fields (TrainingFields and mini_batch_size).
# Given inside `ppo=` (the old spelling, deprecated) they are moved there at construction.
MOVED_TO_STAGE = (
    "learning_rate",
    "batch_size",
    "mini_batch_size",
    "max_grad_norm",
    "disable_dropout",
    "weight_decay",
    "fsdp",
)
# TrainingFields the PPO stage has no use for, with why: only their defaults are accepted.
_UNSUPPORTED = {
    "grad_accum_steps": (1, "one PPO update is one minibatch: make mini_batch_size smaller instead"),
    "valid_every": (None, "PPO has no validation set"),
    "early_stopping_patience": (None, "PPO has no validation set"),
    "tensorboard": (False, "the PPO stage logs to metrics.jsonl only"),
}
DEFAULT_NUM_STEPS = 100  # PPO steps when neither num_train_steps nor num_epochs is given
_PPO_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(PPOConfig)}


@dataclass(frozen=True)
class PPOStageConfig(TrainingFields):
    """PPO against a reward: `reward="self_judge"` (the policy judges its own responses with the run's
    `RewardConfig`), a `RewardModel` (anything with `as_reward_fn`), or a callable
    `(prompts: list[str], responses: list[str]) -> scores`. Unscored rollouts (NaN) are masked out
    of the update (never scored 0); a step where none is scored trains nothing.

    The training fields are every stage's (`TrainingFields`): `num_train_steps` PPO steps (or
    `num_epochs` passes over the prompts; neither: 100 steps), `batch_size` rollouts per step and
    `mini_batch_size` rollouts per gradient update, both global (split over the processes like every
    stage's batch), `learning_rate` (default TRL's 1.41e-5), `weight_decay`, `warmup_steps` and
    `lr_schedule`, `max_grad_norm`, `disable_dropout`, `fsdp`, `checkpoint_every`, `log_every`.
    `ppo=` holds PPO's own hyperparameters (`PPOConfig`: KL, GAE, clipping, epochs); its training
    fields and `num_ppo_steps` are the old spellings, still accepted (deprecated).

    Each step samples `batch_size` prompts (a seeded reshuffle per pass over the dataset) and makes
    one `PPOTrainer.step`. The rollouts' temperature is `temperature` (PPO's log-probs are taken at the
    sampling temperature). `top_k`, `top_p` and `min_p` must stay None: PPO cannot account for
    sampling filters (`UnsupportedSamplingError` at construction, see `ppo.check_ppo_sampling`).
    """

    kind: ClassVar[str] = "ppo"

    prompt_dataset: Any
    num_ppo_steps: int | None = None  # deprecated: num_train_steps (moved there at construction)
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
    sampling: SamplingConfig | dict | None = None
    judge_sampling: SamplingConfig | dict | None = None
    # PPO's own defaults where they differ from the other stages'; batch sizes as PPOConfig's
    learning_rate: float = field(default=_PPO_DEFAULTS["learning_rate"], kw_only=True)
    mini_batch_size: int = field(default=_PPO_DEFAULTS["mini_batch_size"], kw_only=True)
    checkpoint_every: int | None = field(default=10, kw_only=True)
    log_every: int = field(default=1, kw_only=True)

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

    def total_steps(self, num_prompts: int) -> int:
        """PPO steps for a dataset of `num_prompts`: as every stage counts them, or 100 when neither is set."""
        if self.num_train_steps is None and self.num_epochs is None:
            return DEFAULT_NUM_STEPS
        return train_config_of(self).total_steps(num_prompts)

    def __post_init__(self):
        self._move_old_spellings()
        super().__post_init__()  # the training fields, checked as TrainConfig checks them
        check_reward_source(self.reward, name="reward", allow_self_judge=True)
        for name, (default, why) in _UNSUPPORTED.items():
            if getattr(self, name) != default:
                raise ValueError(f"PPOStageConfig: {name}={getattr(self, name)!r} is not supported ({why})")
        # types are checked above (every scalar field); the ranges here, the sampling's by SamplingConfig
        if self.num_judgments < 1:
            raise ValueError(f"num_judgments must be an int >= 1, got {self.num_judgments!r}")
        if not 1 <= self.mini_batch_size <= self.batch_size:
            raise ValueError(
                f"PPOStageConfig: mini_batch_size must be in [1, batch_size={self.batch_size}], "
                f"got {self.mini_batch_size}"
            )
        for name in ("sampling", "judge_sampling"):
            object.__setattr__(self, name, as_sampling_config(getattr(self, name), where=f"PPOStageConfig.{name}"))
        for name, settings in (("sampling", self.sampling_config), ("judge_sampling", self.judge_settings.sampling)):
            if settings.max_new_tokens is None:  # a bad setting or a conflict has failed above already
                raise ValueError(f"PPOStageConfig.{name}.max_new_tokens must be set (PPO has no derived budget)")
        rollout = self.sampling_config
        check_ppo_sampling(rollout.temperature, rollout.top_k, rollout.top_p, rollout.min_p, where="PPOStageConfig")
        if self._ppo.temperature not in (_PPO_DEFAULTS["temperature"], rollout.temperature):
            raise ValueError(
                f"PPOStageConfig sampling temperature {rollout.temperature} but "
                f"ppo.temperature={self._ppo.temperature}: "
                "set the sampling temperature once, as the stage's temperature"
            )

    def _move_old_spellings(self):
        """`num_ppo_steps` and PPOConfig's training fields given in `ppo=` become the stage's own fields
        (with a DeprecationWarning); `ppo` keeps PPO's own hyperparameters only, so both spellings make
        the same config (and the same stage hash)."""
        ppo = self.ppo
        if isinstance(ppo, dict):  # from a config file: unknown keys are a TypeError from PPOConfig itself
            moved = {k: v for k, v in ppo.items() if k in MOVED_TO_STAGE}
            ppo = PPOConfig(**{k: v for k, v in ppo.items() if k not in moved})
        elif isinstance(ppo, PPOConfig):
            moved = {k: getattr(ppo, k) for k in MOVED_TO_STAGE if getattr(ppo, k) != _PPO_DEFAULTS[k]}
            ppo = dataclasses.replace(ppo, **{k: _PPO_DEFAULTS[k] for k in moved})
        else:
            raise TypeError(f"ppo must be a PPOConfig or a dict of its fields, got {type(ppo).__name__}")
        old_names = {k: f"ppo.{k}" for k in moved}
        if self.num_ppo_steps is not None:
            if not (_is_int(self.num_ppo_steps) and self.num_ppo_steps >= 1):
                raise ValueError(f"num_ppo_steps must be an int >= 1, got {self.num_ppo_steps!r}")
            moved["num_train_steps"], old_names["num_train_steps"] = self.num_ppo_steps, "num_ppo_steps"
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, value in moved.items():
            current = getattr(self, name)
            if current != defaults[name] and current != value:
                raise ValueError(
                    f"PPOStageConfig: {name}={current!r} but {old_names[name]}={value!r}; "
                    f"set it once, as {name} ({old_names[name]} is its deprecated spelling)"
                )
            warnings.warn(
                f"PPOStageConfig: {old_names[name]} is deprecated, set {name}={value!r} on the stage instead",
                DeprecationWarning,
                stacklevel=5,
            )
            object.__setattr__(self, name, value)
        object.__setattr__(self, "ppo", ppo)
        object.__setattr__(self, "num_ppo_steps", None)

    def _trainer_config(self, train: TrainConfig, num_processes: int) -> PPOConfig:
        """The PPOConfig of one process: its share of the global batch sizes, the stage's training fields."""
        for name in ("batch_size", "mini_batch_size"):
            if getattr(self, name) % num_processes:
                raise ValueError(
                    f"PPOStageConfig.{name}={getattr(self, name)} is global (over all processes) and must be "
                    f"divisible by the number of processes ({num_processes})"
                )
        return dataclasses.replace(
            self._ppo,
            seed=train.seed,
            temperature=self.sampling_config.temperature,
            learning_rate=train.learning_rate,
            weight_decay=train.weight_decay,
            batch_size=self.batch_size // num_processes,
            mini_batch_size=self.mini_batch_size // num_processes,
            max_grad_norm=train.max_grad_norm or None,  # 0 means no clipping, as in the loop
            disable_dropout=train.disable_dropout,
            fsdp=train.fsdp,
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
                # keyed by the rollout's index in the global batch, as the rollout itself was sampled
                first_pair=ctx.accelerator.process_index * len(prompts),
            ).scores

        # a RewardModel scores through its own tokenizer here, never the policy's (issue #11, defect 1)
        return scoring_fn(self.reward, name="reward", self_judge=self_judge)

    # --- running ---

    def _resume(self, ctx: StageContext, trainer: PPOTrainer) -> int:
        """The step to continue from; trims the JSONL logs to that step so no record is written twice."""
        from self_rewarding_lm_pytorch.training.checkpoint import latest_checkpoint

        checkpoint = latest_checkpoint(ctx.stage_dir) if ctx.resume else None
        # not trainer.num_steps: a step whose rollouts all went unscored trains nothing
        start = 0 if checkpoint is None else int(trainer.load_checkpoint(checkpoint)["stage_step"])
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

    @property
    def _ppo(self) -> PPOConfig:
        return cast(PPOConfig, self.ppo)  # __post_init__ turned a dict into a PPOConfig

    def _batch(self, step: int, prompts: list, ctx: StageContext) -> list[int]:
        """This process's prompt indices for `step`: its contiguous share of the global batch, positions of
        a stream of seeded per-pass permutations (as the training loop reads its data)."""
        from self_rewarding_lm_pytorch.training.loop import epoch_permutation

        share = self.batch_size // ctx.accelerator.num_processes
        first = step * self.batch_size + ctx.accelerator.process_index * share
        out = []
        for position in range(first, first + share):
            epoch, i = divmod(position, len(prompts))
            out.append(int(epoch_permutation(ctx.seed, epoch, len(prompts))[i]))
        return out

    def run(self, ctx: StageContext) -> dict:
        from self_rewarding_lm_pytorch.models import enable_gradient_checkpointing

        dataset = resolve_dataset(self.prompt_dataset, name="prompt_dataset")
        prompts = [_prompt_of(dataset[i], i) for i in range(len(cast(Sized, dataset)))]
        if not prompts:
            raise ValueError("prompt_dataset is empty")
        train = train_config_of(self, seed=ctx.seed, progress=ctx.progress)
        if train.gradient_checkpointing:
            enable_gradient_checkpointing(ctx.model)
        trainer = PPOTrainer(
            ctx.model,
            config=self._trainer_config(train, ctx.accelerator.num_processes),
            tokenizer=ctx.tokenizer,
            accelerator=ctx.accelerator,
        )
        scorer = self._scorer(ctx, trainer)
        start = self._resume(ctx, trainer)
        history = self._train(ctx, trainer, scorer, prompts, start, self.total_steps(len(prompts)))
        trainer.end_sharding()  # under fsdp: the full trained weights are back in ctx.model
        if ctx.is_main:  # the pipeline saves the policy; the value head is kept for a later PPO stage
            from self_rewarding_lm_pytorch.rl.value_head import VALUE_HEAD_FILE
            from self_rewarding_lm_pytorch.training.checkpoint import save_model

            save_model(trainer.policy.value_head, ctx.stage_dir / VALUE_HEAD_FILE)
        scored = [h for h in history if h["ppo/num_unscored"] < h["ppo/num_rollouts"]]
        return {
            "steps": self.total_steps(len(prompts)),
            "resumed_from_step": start,
            "mean_score_last": scored[-1]["ppo/mean_scores"] if scored else None,
            "kl_last": scored[-1]["objective/kl"] if scored else None,
            "kl_coef": trainer.kl_ctl.value,
        }

    def _train(self, ctx, trainer, scorer, prompts, start: int, total: int) -> list[dict]:
        """Steps `start`..`total`: every step's stats (a record per `log_every` steps goes to metrics.jsonl)."""
        train = train_config_of(self, seed=ctx.seed)
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
                    stats = self._one_step(step, prompts, ctx, trainer, scorer, rollouts)
                    history.append(stats)
                    window.append(stats)
                    is_last, stop = step + 1 == total, self._stop_agreed(signals, ctx)
                    save = not is_last and (
                        stop or bool(self.checkpoint_every and (step + 1) % self.checkpoint_every == 0)
                    )
                    # a checkpoint flushes the window too, so resumed and straight runs log the same records
                    if window and (is_last or save or (step + 1) % self.log_every == 0):
                        if metrics is not None:
                            metrics.write(_window_record(window))
                        window = []
                    if save:
                        trainer.save_checkpoint(
                            ctx.stage_dir, step + 1, state={"stage_step": step + 1}, config=describe_config(self)
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

    def _one_step(self, step, prompts, ctx, trainer, scorer, rollouts) -> dict:
        tok = ctx.tokenizer
        batch = [prompts[i] for i in self._batch(step, prompts, ctx)]
        queries = [torch.tensor(encode_prompt(tok, p) if isinstance(p, str) else p, dtype=torch.long) for p in batch]
        prompt_texts = [p if isinstance(p, str) else tok.decode(p) for p in batch]
        # Under fsdp the full weights are gathered once for both sampling and the self-judge.
        with trainer.full_policy():
            responses = trainer.generate(queries, sampling=self.sampling_config)
            # the judge and reward models read text without the EOS token
            response_texts = [
                tok.decode(r[:-1] if tok.eos_id is not None and len(r) and int(r[-1]) == tok.eos_id else r)
                for r in responses
            ]
            scores = scorer(prompt_texts, response_texts).tolist()
        # unscored (NaN) rollouts go to the step too: it masks them out, and every process keeps the same batch shape
        # the step's stats are over the global batch (every process's rollouts)
        stats = {"step": step + 1, "ppo/num_rollouts": self.batch_size, **trainer.step(queries, responses, scores)}
        # every process's rollouts, in global row order (a collective), so the file is one process's file
        written = Shard.of(ctx.accelerator).gather_lists(list(zip(prompt_texts, response_texts, scores, strict=True)))
        if rollouts is not None:
            for p, r, s in written:
                rollouts.write({"step": step + 1, "prompt": p, "response": r, "score": s if math.isfinite(s) else None})
        return stats


def _window_record(window: list[dict]) -> dict:
    """One metrics record for the steps in `window`: the last step, and each stat's mean over the steps
    that report it (a step that trained nothing has no loss)."""
    if len(window) == 1:
        return window[0]
    keys = dict.fromkeys(k for record in window for k in record if k != "step")
    means = {k: sum(r[k] for r in window if k in r) / sum(k in r for r in window) for k in keys}
    return {"step": window[-1]["step"], **means}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
