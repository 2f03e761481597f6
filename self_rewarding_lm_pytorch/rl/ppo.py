"""PPO fine-tuning under a KL penalty to a reference model (Ziegler et al. 2019; Stiennon et al. 2020;
TRL's PPOTrainer).

Shapes: b batch (rollouts), n sequence (query + response), v vocab. Action tensors are (b, n-1),
aligned as `logprobs.token_logprobs` aligns them (see `ppo_model`).

    trainer = PPOTrainer(model, config=PPOConfig(batch_size=8), tokenizer=tokenizer)
    responses = trainer.generate(queries, max_new_tokens=20)
    stats = trainer.step(queries, responses, scores)

This module holds the trainer: its state, where the policy's weights are read, and the order of a
step. The parts live beside it, each one job: `ppo_config` (the settings), `ppo_rollouts` (sampling,
scores, rewards and advantages, rollout stats), `ppo_update` (minibatch updates) and `ppo_weights`
(the trained module, its optimizer and the step checkpoints).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from beartype import beartype
from torch import Tensor, nn

from self_rewarding_lm_pytorch.core.logprobs import token_logprobs
from self_rewarding_lm_pytorch.core.ppo_losses import (
    AdaptiveKLController,
    FixedKLController,
    ppo_policy_loss,
    ppo_value_loss,
)
from self_rewarding_lm_pytorch.core.seeding import derive_seed
from self_rewarding_lm_pytorch.models import (
    as_model,
    frozen_reference,
    model_and_tokenizer,
)
from self_rewarding_lm_pytorch.rl.global_batch import gather_rows, process_sum
from self_rewarding_lm_pytorch.rl.ppo_config import (
    KL_ESTIMATORS,
    PPOConfig,
    UnsupportedSamplingError,
    _sampling_kwargs,
    check_ppo_sampling,
)
from self_rewarding_lm_pytorch.rl.ppo_rollouts import (
    first_global_row,
    rewards_and_advantages,
    rollout_batch,
    rollout_stats,
    sample_responses,
)
from self_rewarding_lm_pytorch.rl.ppo_update import (
    global_minibatches,
    gradient_norm,
    minibatch_shares,
    sampling_logprobs,
    summed_stats,
    trim_padding,
)
from self_rewarding_lm_pytorch.rl.ppo_weights import load_ppo_checkpoint, prepare_trained_module, save_ppo_checkpoint
from self_rewarding_lm_pytorch.rl.value_head import RunningMoments, ValueHeadModel
from self_rewarding_lm_pytorch.training.dropout import disable_dropout

__all__ = ["KL_ESTIMATORS", "PPOConfig", "PPOTrainer", "UnsupportedSamplingError", "check_ppo_sampling"]


class PPOTrainer:
    """Rollout -> score -> optimise, as in TRL's quick start: `generate`, then `step(queries, responses, scores)`.

    `model` is a `TransformerWrapper` or an HF causal LM (wrapped in a fresh `ValueHeadModel`, trained in place) or a
    `ValueHeadModel`. `ref_model=None` uses a frozen copy of the policy as it is now.
    """

    @beartype
    def __init__(
        self,
        model: nn.Module,
        ref_model: nn.Module | None = None,
        config: PPOConfig = PPOConfig(),  # noqa: B008 (frozen, so one shared default is safe)
        tokenizer: Any = None,
        *,
        accelerator: Any = None,
    ):
        from self_rewarding_lm_pytorch.training.accelerators import make_accelerator
        from self_rewarding_lm_pytorch.training.inputs import build_optimizer

        self.config = config
        if not isinstance(model, ValueHeadModel):
            model = as_model(model)
        _, self.tokenizer = model_and_tokenizer(
            model.transformer if isinstance(model, ValueHeadModel) else model, tokenizer
        )
        self.accelerator = accelerator if accelerator is not None else make_accelerator()
        device = self.accelerator.device
        vmodel = model if isinstance(model, ValueHeadModel) else ValueHeadModel(model)
        if config.disable_dropout:
            # Old log-probs are taken without dropout; with it on in the update passes the ratio would
            # start away from 1. In place and for good, as TRL does (the reference is in eval mode).
            disable_dropout(vmodel)
        is_own_reference = ref_model is None
        if ref_model is None:
            ref_model = frozen_reference(vmodel.transformer)
        elif isinstance(ref_model, ValueHeadModel):
            ref_model = ref_model.transformer
        self.ref_model = ref_model.to(device).eval().requires_grad_(False)
        self._core = vmodel.to(device)  # the unwrapped ValueHeadModel; under fsdp it lends its storage to the shards
        self.model, self.optimizer, self._params, self.sharded = prepare_trained_module(
            self._core,
            self.ref_model,
            is_own_reference=is_own_reference,
            config=config,
            accelerator=self.accelerator,
            build_optimizer=build_optimizer,
        )
        self._gathered = False  # inside `full_policy()`: the core holds the full weights
        self._ended = False  # `end_sharding()` was called
        self.kl_ctl = (
            AdaptiveKLController(config.init_kl_coef, config.target_kl, config.horizon)
            if config.adap_kl_ctrl
            else FixedKLController(config.init_kl_coef)
        )
        self.score_moments = RunningMoments()
        # The same on every process (see `rl.global_batch`): minibatches are drawn from the global batch, and
        # a rollout's sampling keys come from its global row index, not from the process that samples it.
        # (The key once used for rank 0's generators, so one-process runs repeat those of earlier versions.)
        seed = derive_seed(config.seed, "ppo-process", 0)
        self.shuffle_generator = torch.Generator().manual_seed(seed)
        self.sample_generator = torch.Generator().manual_seed(seed)  # the sampler draws its keys on CPU
        self._sum = process_sum(self.accelerator)  # None with one process
        self.num_steps = 0

    def state_dict(self) -> dict:
        """What besides weights and optimizer a resumed run needs (plain tensors/numbers: loads with weights_only)."""
        return {
            "num_steps": self.num_steps,
            "kl_coef": self.kl_ctl.value,
            "score_moments": self.score_moments.state_dict(),
            "shuffle_rng": self.shuffle_generator.get_state(),
            "sample_rng": self.sample_generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.num_steps = int(state["num_steps"])
        self.kl_ctl.value = float(state["kl_coef"])
        self.score_moments.load_state_dict(state["score_moments"])
        self.shuffle_generator.set_state(state["shuffle_rng"])
        self.sample_generator.set_state(state["sample_rng"])

    @property
    def policy(self) -> ValueHeadModel:
        """The unwrapped `ValueHeadModel` (its `.transformer` is the plain policy).

        Under fsdp its weights live in the shards between steps: read it inside `full_policy()`, or
        after `end_sharding()`.
        """
        if self.sharded is not None and not (self._gathered or self._ended):
            raise RuntimeError(
                "PPOTrainer.policy under fsdp: the weights are sharded between steps; use "
                "`with trainer.full_policy() as policy:` (on every process) or call `trainer.end_sharding()` first"
            )
        return self._core

    @contextmanager
    def full_policy(self) -> Iterator[ValueHeadModel]:
        """The policy holding its current full weights, for generation, judging or saving (read-only).

        Without fsdp this is just the policy. Under fsdp the weights are gathered on entry (a collective:
        every process enters together) and freed on exit, so a process holds them whole only meanwhile;
        the sampler then runs on a plain module, with no collective per decoded token. Re-entrant.
        """
        if self.sharded is None or self._gathered or self._ended:
            yield self._core
            return
        with self.sharded.gathered_core():
            self._gathered = True
            try:
                yield self._core
            finally:
                self._gathered = False

    def end_sharding(self) -> ValueHeadModel:
        """Put the full trained weights back into the policy for good and free the optimizer state
        (under fsdp a collective; without it nothing to do). The trainer cannot step afterwards."""
        if self.sharded is not None and not self._ended:
            self.optimizer.state.clear()  # its memory goes before the gather
            self.sharded.restore_core()
            self._ended = True
        return self._core

    # --- step checkpoints (every process calls these) ---

    def save_checkpoint(self, run_dir: str | os.PathLike, step: int, *, state: dict, config: dict) -> None:
        """Write `run_dir/checkpoint/step-*/`: full weights (the main process), optimizer state (under fsdp
        sharded, every process writing its shard with torch.distributed.checkpoint), `state` plus every
        process's `state_dict()` (each samples and shuffles with its own generators)."""
        save_ppo_checkpoint(
            run_dir,
            step,
            core=self._core,
            optimizer=self.optimizer,
            sharded=None if self._ended else self.sharded,
            accelerator=self.accelerator,
            ppo_state=self.state_dict(),
            state=state,
            config=config,
        )

    def load_checkpoint(self, path: str | os.PathLike) -> dict:
        """Restore weights, optimizer and this process's PPO state from a step folder; returns its state."""
        state, mine = load_ppo_checkpoint(
            path, core=self._core, optimizer=self.optimizer, sharded=self.sharded, accelerator=self.accelerator
        )
        self.load_state_dict(mine)
        return state

    @beartype
    def generate(self, queries: Sequence[Tensor], *, return_prompt: bool = False, **generation_kwargs) -> list[Tensor]:
        """Sample one response per query (or `num_samples`, prompt-major) with `sampling.sample`.

        Returns 1-D response tensors: the generated tokens up to and including EOS, no padding (or
        prompt + response with `return_prompt=True`). Accepts `sample`'s keywords and the common
        Hugging Face ones (`do_sample`, `top_k=0`, `top_p=1.0`, `pad_token_id`, `eos_token_id`, `min_length=-1`).
        The temperature is `PPOConfig.temperature`; filters and greedy decoding raise
        `UnsupportedSamplingError` (see `check_ppo_sampling`).

        Under several processes every process calls this together with its share of the queries (a
        collective): each row draws the random numbers of its global row index (the rows of lower
        ranks first), so the rollouts are those one process would sample from all the queries.
        """
        kwargs = _sampling_kwargs(generation_kwargs, self.tokenizer, self.config.temperature)
        kwargs.setdefault("generator", self.sample_generator)
        if "first_row" not in kwargs:
            kwargs["first_row"] = first_global_row(len(queries) * kwargs.get("num_samples", 1), self.accelerator)
        # The prepared model runs its forward under the accelerator's mixed precision; sampling from the
        # plain transformer must too, or the rollouts come from an fp32 policy the update never sees.
        with self.accelerator.autocast(), self.full_policy() as policy:
            return sample_responses(policy.transformer, queries, return_prompt=return_prompt, **kwargs)

    @torch.no_grad()
    def _rollout_forward(self, input_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Old log-probs and values (policy, eval mode: no dropout noise in the baseline) and reference log-probs."""
        was_training = self.model.training
        self.model.eval()
        logits, values = self.model(input_ids)
        self.model.train(was_training)
        old_logprobs = sampling_logprobs(logits, input_ids, self.config.temperature)
        with self.accelerator.autocast():  # the policy's precision, so KL is exactly 0 while they are equal
            ref_logits = self.ref_model(input_ids)
        ref_logprobs = sampling_logprobs(ref_logits, input_ids, self.config.temperature)
        return old_logprobs, values[:, :-1].float(), ref_logprobs

    @beartype
    def step(
        self, queries: Sequence[Any], responses: Sequence[Any], scores: Sequence[Any] | Tensor
    ) -> dict[str, float]:
        """One PPO step on these rollouts; returns stats named as TRL names them (floats).

        A NaN score marks an unscored rollout: it stays in the batch (so every process makes the same
        number of minibatch passes) but is masked out of every loss and statistic. When no rollout
        of any process is scored, nothing is trained.
        """
        if self._ended:
            raise RuntimeError("PPOTrainer.step after end_sharding(): the shards and optimizer state are gone")
        t0 = time.perf_counter()
        rollouts = rollout_batch(
            queries,
            responses,
            scores,
            tokenizer=self.tokenizer,
            max_seq_len=getattr(self._core.transformer, "max_seq_len", None),
            config=self.config,
            moments=self.score_moments,
            accelerator=self.accelerator,
        )
        old_logprobs, old_values, ref_logprobs = self._rollout_forward(rollouts["input_ids"])
        rollouts |= dict(old_logprobs=old_logprobs, old_values=old_values, ref_logprobs=ref_logprobs)
        t_forward = time.perf_counter()
        kl_coef = self.kl_ctl.value
        rewards, num_scored = rewards_and_advantages(rollouts, self.config, kl_coef, sum_over_processes=self._sum)
        rollouts |= rewards
        t_rewards = time.perf_counter()

        train_stats = {}
        if num_scored > 0:
            trained = ("input_ids", "action_mask", "mask", "old_logprobs", "old_values", "advantages", "returns")
            train_stats = self._optimize(gather_rows({k: rollouts[k] for k in trained}, self.accelerator))
        t_optimize = time.perf_counter()

        stats = rollout_stats(rollouts, sum_over_processes=self._sum)
        if num_scored > 0:
            self.kl_ctl.update(float(stats["objective/kl"]), num_scored)
        self.num_steps += 1
        stats |= {"objective/kl_coef": torch.tensor(kl_coef), **train_stats}
        out = {k: float(v) for k, v in stats.items()}  # the one host sync of the step's stats
        out["ppo/learning_rate"] = float(self.optimizer.param_groups[0]["lr"])
        out["time/ppo/forward_pass"] = t_forward - t0
        out["time/ppo/compute_rewards"] = t_rewards - t_forward
        out["time/ppo/optimize_step"] = t_optimize - t_rewards
        out["time/ppo/total"] = time.perf_counter() - t0
        return out

    def _optimize(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """`ppo_epochs` passes over shuffled minibatches of the global batch (every process's rows, held
        by every process); returns the mean of each minibatch stat over the minibatches trained on
        (those with a scored rollout). Every process draws the same order and takes its share of each
        minibatch (`rl.global_batch`)."""
        cfg, acc = self.config, self.accelerator
        collected: dict[str, list[Tensor]] = {}
        self.model.train()
        for mb, total_tokens in global_minibatches(
            batch,
            epochs=cfg.ppo_epochs,
            size=cfg.mini_batch_size * acc.num_processes,  # the global minibatch
            generator=self.shuffle_generator,
            accelerator=acc,
        ):
            for k, v in self._minibatch_step(mb, total_tokens).items():
                collected.setdefault(k, []).append(v)
        return {k: torch.stack(v).mean() for k, v in collected.items()}

    def _total(self, x: Tensor) -> Tensor:
        """`x` summed over the processes (itself with one process)."""
        return x if self._sum is None else self._sum(x)

    def _minibatch_step(self, mb: dict[str, Tensor], total_tokens: Tensor) -> dict[str, Tensor]:
        """One update on this process's rows of a minibatch whose trained tokens over every process number
        `total_tokens`; returns the minibatch's stats (global token means)."""
        cfg, mb = self.config, trim_padding(mb)
        ids, mask = mb["input_ids"], mb["mask"]
        logits, values = self.model(ids)
        logits = logits.float() / cfg.temperature  # as `sampling_logprobs` computes the old log-probs
        logprobs = token_logprobs(logits, ids)
        values = values[:, :-1].float()
        pg_loss, pg_clipfrac = ppo_policy_loss(
            logprobs, mb["old_logprobs"], mb["advantages"], mask, cfg.cliprange, total_tokens=total_tokens
        )
        vf_loss, vf_clipfrac = ppo_value_loss(
            values, mb["old_values"], mb["returns"], mask, cfg.cliprange_value, total_tokens=total_tokens
        )
        loss = pg_loss + cfg.vf_coef * vf_loss  # this process's share of the minibatch loss

        self.optimizer.zero_grad(set_to_none=True)
        # DDP and FSDP average the gradients over the processes; the minibatch loss is the sum of the shares
        self.accelerator.backward(loss * self.accelerator.num_processes)
        grad_norm = gradient_norm(self.model, self._params, self.sharded, self.accelerator, cfg.max_grad_norm)
        losses = dict(
            policy=pg_loss, value=vf_loss, total=loss, policy_clipfrac=pg_clipfrac, value_clipfrac=vf_clipfrac
        )
        shares = minibatch_shares(losses, logits, logprobs, values, mb, total_tokens)
        stats = summed_stats(
            shares,
            grad_norm,
            total=self._total,
            device=self.accelerator.device,
            optimizer=self.optimizer,
            step=self.num_steps + 1,
        )
        self.optimizer.step()
        return stats
