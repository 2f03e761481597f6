"""The PPO stage: roll out responses to prompts, score them (self-judge, a reward model or any callable),
and optimise the policy with `ppo.PPOTrainer` under a KL penalty to the policy as the stage found it.

Files in the stage folder: `metrics.jsonl` (one record of PPO stats per step), `rollouts.jsonl`
(step, prompt, response, score; score null when the reward could not score it),
`value_head.safetensors` at the end (the pipeline saves the policy itself), and
`checkpoint/step-*/` (policy + value head, optimizer, PPO state) every `checkpoint_every` steps,
from which a rerun resumes.

This module holds the stage's config: its fields, their checks at construction, the deprecated
spellings it still accepts and the `PPOConfig` it hands the trainer. The steps themselves (rollouts,
scoring, logs, checkpoints, resume) run in `stages.ppo_run`.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

from self_rewarding_lm_pytorch.core.reward_source import SELF_JUDGE, check_reward_source
from self_rewarding_lm_pytorch.core.sampling_config import JudgeSettings, SamplingConfig
from self_rewarding_lm_pytorch.rl.ppo_config import PPOConfig, check_ppo_sampling
from self_rewarding_lm_pytorch.stages.context import StageContext
from self_rewarding_lm_pytorch.stages.fields import TrainingFields, train_config_of
from self_rewarding_lm_pytorch.stages.sampling import as_sampling_config, stage_sampling
from self_rewarding_lm_pytorch.training.config import TrainConfig

__all__ = ["SELF_JUDGE", "PPOStageConfig"]

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

    def run(self, ctx: StageContext) -> dict:
        """Runs the stage (`stages.ppo_run`, the one PPO stage driver: rollouts, steps, logs, resume)."""
        from self_rewarding_lm_pytorch.stages.ppo_run import run_ppo_stage

        return run_ppo_stage(self, ctx)

    @property
    def _ppo(self) -> PPOConfig:
        return cast(PPOConfig, self.ppo)  # __post_init__ turned a dict into a PPOConfig


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
