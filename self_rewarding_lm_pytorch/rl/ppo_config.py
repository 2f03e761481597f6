"""PPO's settings: `PPOConfig` (TRL's names and defaults), and what sampling PPO can account for.

Split from `rl.ppo` (which re-exports every name here) so the trainer module stays one job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from self_rewarding_lm_pytorch.core.field_types import check_field_types

__all__ = ["KL_ESTIMATORS", "PPOConfig", "UnsupportedSamplingError", "check_ppo_sampling"]

KL_ESTIMATORS = ("k1", "k3")


def _check(condition: bool, message: str):
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters; defaults follow TRL's PPOConfig except the batch sizes (sized for CPU) and
    `max_grad_norm` (clipped by default, like the rest of this package's trainers).

    `batch_size` is the number of rollouts a stage samples per PPO step (`step` accepts any number).
    `target_kl` and `horizon` drive the adaptive KL controller (summed per-sequence KL; Ziegler et al. 2019).
    `reward_norm` divides scores by a running std after subtracting a running mean (over all scores seen
    so far); `reward_clip` then clips them to [-reward_clip, reward_clip].

    `disable_dropout` (TRL's name and default) sets the policy's dropout rates to 0 in place.
    `weight_decay` is AdamW's, on weight matrices only (as the training loop applies it).
    `fsdp=True` shards the policy, its value head, gradients and optimizer state over the processes with
    FSDP2 (see `training.sharding`; with one process a no-op with a warning).

    `temperature` is the sampling temperature of the rollouts; old, new and reference log-probs are all
    taken from logits / temperature, the distribution the tokens were actually drawn from (as TRL
    does), so the clipped ratio and the KL penalty are those of the sampling policy.
    """

    learning_rate: float = 1.41e-5
    batch_size: int = 8
    mini_batch_size: int = 4
    ppo_epochs: int = 4
    init_kl_coef: float = 0.2
    adap_kl_ctrl: bool = True
    target_kl: float = 6.0
    horizon: float = 10000.0
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    kl_estimator: str = "k1"
    whiten_advantages: bool = True
    reward_clip: float | None = None
    reward_norm: bool = False
    max_grad_norm: float | None = 1.0
    temperature: float = 1.0
    disable_dropout: bool = True
    seed: int = 0
    weight_decay: float = 0.0
    fsdp: bool = False

    def __post_init__(self):
        check_field_types(self)  # types by beartype (an int is a fine float); the values below
        _check(
            self.temperature > 0, f"temperature must be > 0 (PPO needs a sampling distribution), got {self.temperature}"
        )
        _check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(
            1 <= self.mini_batch_size <= self.batch_size,
            f"mini_batch_size must be in [1, batch_size={self.batch_size}], got {self.mini_batch_size}",
        )
        _check(self.ppo_epochs >= 1, f"ppo_epochs must be >= 1, got {self.ppo_epochs}")
        _check(self.init_kl_coef >= 0, f"init_kl_coef must be >= 0, got {self.init_kl_coef}")
        _check(self.target_kl > 0, f"target_kl must be > 0, got {self.target_kl}")
        _check(self.horizon > 0, f"horizon must be > 0, got {self.horizon}")
        _check(0 < self.gamma <= 1, f"gamma must be in (0, 1], got {self.gamma}")
        _check(0 <= self.lam <= 1, f"lam must be in [0, 1], got {self.lam}")
        _check(self.cliprange > 0, f"cliprange must be > 0, got {self.cliprange}")
        _check(self.cliprange_value > 0, f"cliprange_value must be > 0, got {self.cliprange_value}")
        _check(self.vf_coef >= 0, f"vf_coef must be >= 0, got {self.vf_coef}")
        _check(
            self.kl_estimator in KL_ESTIMATORS,
            f"kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}",
        )
        _check(
            self.reward_clip is None or self.reward_clip > 0, f"reward_clip must be > 0 or None, got {self.reward_clip}"
        )
        _check(
            self.max_grad_norm is None or self.max_grad_norm > 0,
            f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}",
        )


class UnsupportedSamplingError(ValueError):
    """Sampling settings under which PPO's log-probs would not be those of the distribution sampled."""


def check_ppo_sampling(
    temperature: float, top_k: int | float | None, top_p: float | None, min_p: float | None, *, where: str
) -> None:
    """Refuse what PPO cannot account for: greedy decoding and top-k / top-p / min-p filters.

    A filter makes the sampling distribution a truncation of softmax(logits / T) whose support moves
    with the weights: the new policy (or the reference) can put a sampled token outside its own
    support, so the ratio and the KL would be taken against a distribution other than the one
    sampled. TRL's PPO samples unfiltered for the same reason. Disabled values (top_k 0/None,
    top_p 1/None, min_p 0/None) are accepted.
    """
    active = {
        "top_k": top_k not in (None, 0),
        "top_p": top_p is not None and top_p != 1.0,
        "min_p": min_p not in (None, 0),
    }
    filters = [f"{name}={value}" for name, value in zip(active, (top_k, top_p, min_p), strict=True) if active[name]]
    if filters:
        raise UnsupportedSamplingError(
            f"{where}: PPO cannot use the sampling filter(s) {', '.join(filters)}: its log-probs, ratio and "
            "KL are those of softmax(logits / temperature), so sample unfiltered (set them to None)"
        )
    if not temperature > 0:
        raise UnsupportedSamplingError(
            f"{where}: PPO needs a sampling temperature > 0 (greedy decoding has no log-probs to take a ratio of), "
            f"got {temperature}"
        )


# Hugging Face `generate` keywords (as in TRL's quick start) mapped onto `sampling.sample`'s.
def _sampling_kwargs(kwargs: dict, tokenizer, temperature: float) -> dict:
    kwargs = dict(kwargs)
    sampling = kwargs.pop("sampling", None)
    if sampling is not None:  # a SamplingConfig: its fields are checked below like the loose keywords
        for name in ("temperature", "top_k", "top_p", "min_p", "max_new_tokens"):
            if getattr(sampling, name) is not None and kwargs.setdefault(name, getattr(sampling, name)) != getattr(
                sampling, name
            ):
                raise ValueError(f"generate: {name}={kwargs[name]} disagrees with sampling.{name}")
    out: dict[str, Any] = {"eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id}
    if "pad_token_id" in kwargs:
        out["pad_id"] = kwargs.pop("pad_token_id")
    if "eos_token_id" in kwargs:
        out["eos_id"] = kwargs.pop("eos_token_id")
    given = 0.0 if kwargs.pop("do_sample", True) is False else kwargs.pop("temperature", temperature)
    if given != temperature:
        raise UnsupportedSamplingError(
            f"generate: sampling at temperature {given} but PPOConfig.temperature is {temperature}; the log-probs "
            "are taken at PPOConfig.temperature, so set the temperature there (do_sample=False is temperature 0)"
        )
    filters = {name: kwargs.pop(name, None) for name in ("top_k", "top_p", "min_p")}
    check_ppo_sampling(temperature, **filters, where="PPOTrainer.generate")
    min_length = kwargs.pop("min_length", -1)
    if min_length > 0:
        raise ValueError(f"min_length={min_length} is not supported by the sampler (only -1/0, i.e. none)")
    out.update(kwargs, temperature=temperature)
    return out
