"""PPO fine-tuning under a KL penalty to a reference model (Ziegler et al. 2019; Stiennon et al. 2020;
TRL's PPOTrainer).

Shapes: b batch (rollouts), n sequence (query + response), v vocab. Action tensors are (b, n-1),
aligned as `logprobs.token_logprobs` aligns them (see `ppo_model`).

    trainer = PPOTrainer(model, config=PPOConfig(batch_size=8), tokenizer=tokenizer)
    responses = trainer.generate(queries, max_new_tokens=20)
    stats = trainer.step(queries, responses, scores)
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from beartype import beartype
from torch import Tensor, nn

from self_rewarding_lm_pytorch.core.logprobs import token_logprobs
from self_rewarding_lm_pytorch.core.ppo_losses import (
    AdaptiveKLController,
    FixedKLController,
    gae_advantages,
    kl_penalty,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    whiten,
)
from self_rewarding_lm_pytorch.core.seeding import derive_seed
from self_rewarding_lm_pytorch.models import (
    AdapterOffReference,
    AdapterSnapshotReference,
    as_model,
    frozen_reference,
    model_and_tokenizer,
)
from self_rewarding_lm_pytorch.rl.global_batch import gather_rows, global_means, minibatch_share, process_sum
from self_rewarding_lm_pytorch.rl.ppo_config import (
    KL_ESTIMATORS,
    PPOConfig,
    UnsupportedSamplingError,
    _sampling_kwargs,
    check_ppo_sampling,
)
from self_rewarding_lm_pytorch.rl.value_head import (
    RunningMoments,
    ValueHeadModel,
    assemble_rollouts,
    per_token_rewards,
    token_entropy,
)
from self_rewarding_lm_pytorch.training.dropout import disable_dropout
from self_rewarding_lm_pytorch.training.faults import NonFiniteLossError
from self_rewarding_lm_pytorch.training.sharding import OPTIMIZER_DIR, ShardedTraining, fsdp_enabled, shard_in_place

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
        self._prepare(is_own_reference, build_optimizer)
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

    def _prepare(self, is_own_reference: bool, build_optimizer):
        """The trained module (DDP-prepared, or FSDP2 shards) and its optimizer."""
        config, acc = self.config, self.accelerator
        self.sharded: ShardedTraining | None = None
        self._gathered = False  # inside `full_policy()`: the core holds the full weights
        self._ended = False  # `end_sharding()` was called
        if not fsdp_enabled(config.fsdp, acc.num_processes):
            optimizer, self._params = build_optimizer(self._core, config)
            self.model, self.optimizer = acc.prepare(self._core, optimizer)
            return
        if is_own_reference:
            if isinstance(self.ref_model, (AdapterOffReference, AdapterSnapshotReference)):
                # that view reads the policy's own base weights, which the shards hold while training
                raise ValueError("PPOConfig.fsdp=True with a LoRA policy needs a ref_model (not supported yet)")
            # As DPO does: our own copy is sharded like the policy (its forward then runs in step on every
            # process); a reference you pass is left whole.
            shard_in_place(self.ref_model, mixed_precision=acc.mixed_precision)
        # No accelerate.prepare: the shards replace DDP, and the optimizer sees only this process's slices.
        self.sharded = ShardedTraining(self._core, device=acc.device, mixed_precision=acc.mixed_precision)
        self.model = self.sharded.module
        self.optimizer, self._params = build_optimizer(self.model, config)

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
        from accelerate.utils import gather_object

        from self_rewarding_lm_pytorch.training.checkpoint import (
            CHECKPOINT_DIR,
            clear_staging,
            save_training_state,
            staging_dir,
        )

        acc, root = self.accelerator, Path(run_dir) / CHECKPOINT_DIR
        mine = self.state_dict()
        state = {**state, "ppo": gather_object([mine]) if acc.num_processes > 1 else [mine]}
        if self.sharded is None or self._ended:
            if acc.is_main_process:
                save_training_state(root, step, model=self._core, optimizer=self.optimizer, state=state, config=config)
        else:
            full = self.sharded.full_state_dict(all_ranks=False)
            staging = staging_dir(run_dir, step)
            if acc.is_main_process:
                clear_staging(staging)
            acc.wait_for_everyone()
            self.sharded.save_optimizer(self.optimizer, staging / OPTIMIZER_DIR)
            acc.wait_for_everyone()
            if acc.is_main_process:
                with self.sharded.full_core(full) as core:
                    save_training_state(
                        root, step, model=core, optimizer=None, state=state, config=config, staging=staging
                    )
        acc.wait_for_everyone()

    def load_checkpoint(self, path: str | os.PathLike) -> dict:
        """Restore weights, optimizer and this process's PPO state from a step folder; returns its state."""
        from self_rewarding_lm_pytorch.training.checkpoint import load_training_state

        path, acc = Path(path), self.accelerator
        if self.sharded is None:
            state = load_training_state(path, model=self._core, optimizer=self.optimizer)
        else:
            state = load_training_state(path, model=None)
            if not (path / OPTIMIZER_DIR / ".metadata").is_file():
                raise ValueError(f"cannot resume sharded PPO from {path}: it holds no sharded optimizer state")
            self.sharded.load_full_file(path / "model.safetensors")
            self.sharded.load_optimizer(self.optimizer, path / OPTIMIZER_DIR)
        saved = state["ppo"]
        if isinstance(saved, dict):  # written by one process before the per-process list
            saved = [saved]
        if len(saved) != acc.num_processes:
            raise ValueError(
                f"{path} was written by {len(saved)} process(es), not {acc.num_processes}: resume as it ran"
            )
        self.load_state_dict(saved[acc.process_index])
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
        from self_rewarding_lm_pytorch.core.sampling import sample

        kwargs = _sampling_kwargs(generation_kwargs, self.tokenizer, self.config.temperature)
        kwargs.setdefault("generator", self.sample_generator)
        if "first_row" not in kwargs:
            kwargs["first_row"] = self._first_row(len(queries) * kwargs.get("num_samples", 1))
        # The prepared model runs its forward under the accelerator's mixed precision; sampling from the
        # plain transformer must too, or the rollouts come from an fp32 policy the update never sees.
        with self.accelerator.autocast(), self.full_policy() as policy:
            out = sample(policy.transformer, list(queries), **kwargs)
        rows = [
            ids[mask] for ids, mask in zip(out.response_ids, out.response_mask, strict=True)
        ]  # on CPU, as sample returns them
        if return_prompt:
            rows = [torch.cat([queries[int(p)].cpu(), r]) for p, r in zip(out.prompt_index, rows, strict=True)]
        return rows

    def _first_row(self, num_rows: int) -> int:
        """The global index of this process's first row: the rows of the processes before it."""
        if self._sum is None:
            return 0
        counts = self.accelerator.gather(torch.tensor([num_rows], device=self.accelerator.device))
        return int(counts[: self.accelerator.process_index].sum())

    def _scores(self, scores: Sequence[Any] | Tensor, b: int) -> tuple[Tensor, Tensor, Tensor]:
        """(raw, processed, scored) (b,): processed is normalised and/or clipped as configured and 0 where
        the score is NaN; `scored` is False there."""
        values = []
        for i, s in enumerate(scores):
            if isinstance(s, Tensor):
                if s.numel() != 1:
                    raise ValueError(f"score {i} must be a scalar, got a tensor of shape {tuple(s.shape)}")
                s = s.item()
            values.append(float(s))
        if len(values) != b:
            raise ValueError(f"got {len(values)} scores for {b} rollouts")
        if any(math.isinf(v) for v in values):
            raise ValueError(f"scores must be finite, or NaN for an unscored rollout: {values}")
        raw = torch.tensor(values, dtype=torch.float32, device=self.accelerator.device)
        scored = ~raw.isnan()
        processed = torch.where(scored, raw, torch.zeros_like(raw))
        if self.config.reward_norm:
            # every process's scores, in rank order: all processes hold the same running moments
            self.score_moments.update(self._gather_scored(raw))
            processed = (processed - self.score_moments.mean) / max(self.score_moments.std, 1e-8)
        if self.config.reward_clip is not None:
            processed = processed.clamp(-self.config.reward_clip, self.config.reward_clip)
        return raw, torch.where(scored, processed, torch.zeros_like(processed)), scored

    def _gather_scored(self, raw: Tensor) -> Tensor:
        """The scored (non-NaN) values of `raw` (b,) from every process, concatenated in rank order."""
        if self.accelerator.num_processes == 1:
            return raw[~raw.isnan()]
        sizes = self.accelerator.gather(torch.tensor([raw.numel()], device=raw.device))
        padded = torch.full((int(sizes.max()),), math.nan, dtype=raw.dtype, device=raw.device)
        padded[: raw.numel()] = raw
        everything = self.accelerator.gather(padded)  # NaN marks padding and unscored rollouts alike
        return everything[~everything.isnan()]

    def _check_length(self, input_ids: Tensor):
        max_len = getattr(self._core.transformer, "max_seq_len", None)
        if max_len and input_ids.shape[1] > max_len:
            raise ValueError(
                f"query + response is {input_ids.shape[1]} tokens, more than the model's max_seq_len {max_len}"
            )

    def _logprobs(self, logits: Tensor, input_ids: Tensor) -> Tensor:
        """(b, n-1) log-probs under the sampling distribution softmax(logits / temperature).

        Divided in fp32: a bf16 quotient would round differently for the policy (whose prepared forward
        returns fp32 logits) and the reference (bf16 under autocast), and KL would not start at 0.
        """
        return token_logprobs(logits.float() / self.config.temperature, input_ids)

    @torch.no_grad()
    def _rollout_forward(self, input_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Old log-probs and values (policy, eval mode: no dropout noise in the baseline) and reference log-probs."""
        was_training = self.model.training
        self.model.eval()
        logits, values = self.model(input_ids)
        self.model.train(was_training)
        old_logprobs = self._logprobs(logits, input_ids)
        with self.accelerator.autocast():  # the policy's precision, so KL is exactly 0 while they are equal
            ref_logits = self.ref_model(input_ids)
        ref_logprobs = self._logprobs(ref_logits, input_ids)
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
        cfg, t0 = self.config, time.perf_counter()
        input_ids, action_mask = assemble_rollouts(
            queries, responses, pad_id=self.tokenizer.pad_id, eos_id=self.tokenizer.eos_id
        )
        self._check_length(input_ids)
        device = self.accelerator.device
        input_ids, action_mask = input_ids.to(device), action_mask.to(device)
        raw_scores, scores_t, scored = self._scores(scores, input_ids.shape[0])
        train_mask = action_mask & scored[:, None]

        old_logprobs, old_values, ref_logprobs = self._rollout_forward(input_ids)
        t_forward = time.perf_counter()
        kl = kl_penalty(old_logprobs, ref_logprobs, cfg.kl_estimator)
        kl_coef = self.kl_ctl.value
        rewards, non_score = per_token_rewards(kl, scores_t, action_mask, kl_coef)
        advantages, returns = gae_advantages(rewards, old_values, train_mask, cfg.gamma, cfg.lam)
        counts = self._total(torch.stack([scored.sum(), train_mask.sum()]))  # over every process's rollouts
        num_scored, num_train_tokens = int(counts[0]), int(counts[1])
        if cfg.whiten_advantages and num_train_tokens >= 2:
            advantages = whiten(advantages, train_mask, sum_over_processes=self._sum)
        t_rewards = time.perf_counter()

        train_stats = {}
        if num_scored > 0:
            batch = dict(
                input_ids=input_ids,
                action_mask=action_mask,
                mask=train_mask,
                old_logprobs=old_logprobs,
                old_values=old_values,
                advantages=advantages,
                returns=returns,
            )
            train_stats = self._optimize(gather_rows(batch, self.accelerator))
        t_optimize = time.perf_counter()

        # means over every process's scored rollouts (per rollout) or their trained tokens (per token)
        per_row = {
            "objective/kl": (kl * train_mask).sum(-1),
            "objective/entropy": (-old_logprobs * train_mask).sum(-1),
            "ppo/mean_scores": torch.where(scored, raw_scores, torch.zeros_like(raw_scores)),
            "ppo/mean_processed_scores": scores_t,
            "ppo/mean_non_score_reward": non_score.sum(-1),
            "tokens/responses_len_mean": train_mask.float().sum(-1),
        }
        per_token = {"ppo/returns/mean": returns, "ppo/val/mean": old_values, "ppo/policy/advantages_mean": advantages}
        unscored = {"ppo/num_unscored": (~scored).sum()}
        stats = global_means(per_row, scored, per_token, train_mask, unscored, sum_over_processes=self._sum)
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
        b = batch["input_ids"].shape[0]
        size = cfg.mini_batch_size * acc.num_processes  # the global minibatch
        collected: dict[str, list[Tensor]] = {}
        self.model.train()
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(b, generator=self.shuffle_generator).to(batch["input_ids"].device)
            for start in range(0, b, size):
                rows = order[start : start + size]
                # A minibatch with no scored rollout has nothing to learn from, yet an optimizer step would
                # still move the weights (Adam's momentum). Every process holds the same rows, so all skip it.
                total_tokens = batch["mask"][rows].sum().float()
                if not int(total_tokens):
                    continue
                mine, is_placeholder = minibatch_share(rows, acc.process_index, acc.num_processes)
                mb = {k: v[mine] for k, v in batch.items()}
                if is_placeholder:  # nothing of this minibatch here: a forward and backward that count nothing
                    mb["mask"] = torch.zeros_like(mb["mask"])
                for k, v in self._minibatch_step(mb, total_tokens).items():
                    collected.setdefault(k, []).append(v)
        return {k: torch.stack(v).mean() for k, v in collected.items()}

    def _total(self, x: Tensor) -> Tensor:
        """`x` summed over the processes (itself with one process)."""
        return x if self._sum is None else self._sum(x)

    def _global_stats(self, shares: dict[str, Tensor], grad_norm: Tensor) -> dict[str, Tensor]:
        """The minibatch stats (each process holds its share of the global token means) summed over the
        processes, in one reduction that also refuses a NaN/inf loss or gradient: it must be caught
        before optimizer.step() applies it (afterwards every weight and checkpoint carries it), and every
        process raises at the same minibatch."""
        grad_is_bad = ~torch.isfinite(torch.as_tensor(grad_norm).float())
        device = self.accelerator.device
        totals = self._total(
            torch.stack([v.detach().float() for v in shares.values()] + [grad_is_bad.float()]).to(device)
        )
        loss = totals[list(shares).index("ppo/loss/total")]
        if not bool(torch.isfinite(loss)) or bool(totals[-1] > 0):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(
                f"ppo: non-finite loss or gradient in PPO step {self.num_steps + 1} (loss {loss.item()}); "
                "the update was not applied and the checkpoints written so far are intact"
            )
        return dict(zip(shares, totals, strict=False))

    def _minibatch_step(self, mb: dict[str, Tensor], total_tokens: Tensor) -> dict[str, Tensor]:
        """One update on this process's rows of a minibatch whose trained tokens over every process number
        `total_tokens`; returns the minibatch's stats (global token means)."""
        cfg = self.config
        # right padding: columns past the longest row of this minibatch hold only pad, drop them
        length = int(mb["action_mask"].any(0).nonzero().max()) + 2
        ids, mask = mb["input_ids"][:, :length], mb["mask"][:, : length - 1]
        old_lp, old_v = mb["old_logprobs"][:, : length - 1], mb["old_values"][:, : length - 1]
        adv, ret = mb["advantages"][:, : length - 1], mb["returns"][:, : length - 1]

        logits, values = self.model(ids)
        logits = logits.float() / cfg.temperature  # as `_logprobs` computes the old log-probs
        logprobs = token_logprobs(logits, ids)
        values = values[:, :-1].float()
        pg_loss, pg_clipfrac = ppo_policy_loss(logprobs, old_lp, adv, mask, cfg.cliprange, total_tokens=total_tokens)
        vf_loss, vf_clipfrac = ppo_value_loss(values, old_v, ret, mask, cfg.cliprange_value, total_tokens=total_tokens)
        loss = pg_loss + cfg.vf_coef * vf_loss  # this process's share of the minibatch loss

        self.optimizer.zero_grad(set_to_none=True)
        # DDP and FSDP average the gradients over the processes; the minibatch loss is the sum of the shares
        self.accelerator.backward(loss * self.accelerator.num_processes)
        if self.sharded is not None:  # the norm over every shard; an infinite bound clips nothing
            grad_norm = self.sharded.clip_grad_norm(self._params, cfg.max_grad_norm or math.inf)
        elif cfg.max_grad_norm is not None:
            grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        else:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))

        with torch.no_grad():
            log_ratio = logprobs - old_lp

            def share(x: Tensor) -> Tensor:
                return masked_mean(x, mask, count=total_tokens)

            shares = {
                "ppo/loss/policy": pg_loss,
                "ppo/loss/value": vf_loss,
                "ppo/loss/total": loss,
                "ppo/policy/entropy": share(token_entropy(logits[:, :-1])),
                "ppo/policy/approxkl": 0.5 * share(log_ratio**2),
                "ppo/policy/policykl": share(-log_ratio),
                "ppo/policy/clipfrac": pg_clipfrac,
                "ppo/val/vpred": share(values),
                "ppo/val/error": share((values - ret) ** 2),
                "ppo/val/clipfrac": vf_clipfrac,
            }
        stats = self._global_stats(shares, grad_norm)
        self.optimizer.step()
        return stats
