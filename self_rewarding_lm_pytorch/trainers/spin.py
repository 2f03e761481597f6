"""SPIN (Chen et al. 2024, arXiv 2401.01335): self-play fine-tuning against the previous iterate.

Each iteration, the frozen previous iterate answers every SFT prompt once (batched, KV-cached,
before any training step); the policy then learns to prefer the real SFT response over that
synthetic one, with the previous iterate as the reference. That is DPO on (real, generated) pairs
with `losses.spin_loss` (or any other `dpo_loss` type, beta = lambda), run through the DPO trainer's
pair machinery (`trainers.pair_training.train_pairs`).

Shapes: b batch, n sequence (the tensors live in `stages.dpo` and `sampling`; this module handles ids).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence, Sized
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
from beartype import beartype
from torch import nn

from self_rewarding_lm_pytorch.core import sampling as sampler  # looked up per call: tests patch sampler.sample
from self_rewarding_lm_pytorch.core.batching import SizedDataset
from self_rewarding_lm_pytorch.core.distributed import Shard
from self_rewarding_lm_pytorch.core.files import atomic_write_json, read_json_if_exists, read_jsonl, write_jsonl
from self_rewarding_lm_pytorch.core.sampling_config import SamplingConfig, resolve_sampling
from self_rewarding_lm_pytorch.core.seeding import derive_seed
from self_rewarding_lm_pytorch.models import as_model
from self_rewarding_lm_pytorch.trainers.dpo import default_tokenizer
from self_rewarding_lm_pytorch.trainers.pair_training import DPOTask, train_pairs
from self_rewarding_lm_pytorch.trainers.preference_loss import PreferenceLoss
from self_rewarding_lm_pytorch.trainers.sft import NoResponseTokens, to_sft_example
from self_rewarding_lm_pytorch.training.accelerators import make_accelerator
from self_rewarding_lm_pytorch.training.checkpoint import load_model
from self_rewarding_lm_pytorch.training.loop import TrainConfig, TrainResult

__all__ = [
    "SFTRecordError",
    "SPINTrainer",
    "encode_sft_items",
    "generate_synthetic",
    "resolve_spin_kwargs",
    "spin_sampling",
    "train_spin_iteration",
]

log = logging.getLogger(__name__)
SYNTHETIC_FILE = "synthetic.jsonl"
DONE_FILE = "iteration_done.json"


class SFTRecordError(ValueError):
    """An SFT item SPIN cannot use; the message names the item."""


@beartype
def encode_sft_items(
    items: SizedDataset, tokenizer, *, max_seq_len: int, num_tokens: int | None = None
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, real response ids) per SFT item (the SFT stage's item forms), cut to `max_seq_len`.

    Items whose prompt leaves no room for a response within `max_seq_len` are skipped with a warning,
    as SFT does; a malformed item or an empty response is an error naming the item.
    """
    out: list[tuple[list[int], list[int]]] = []
    skipped, num_items = 0, len(cast(Sized, items))
    for index in range(num_items):
        item = items[index]
        try:
            to_sft_example(item, tokenizer)  # without the length limit: is the response itself empty?
        except (ValueError, TypeError) as e:
            raise SFTRecordError(f"SFT item {index}: {e}") from None
        try:
            ids, prompt_len = to_sft_example(item, tokenizer, max_seq_len)
        except NoResponseTokens:
            skipped += 1
            continue
        if prompt_len == 0:
            raise SFTRecordError(f"SFT item {index}: the prompt is empty (nothing predicts the first response token)")
        if num_tokens is not None and not 0 <= min(ids) <= max(ids) < num_tokens:
            raise SFTRecordError(
                f"SFT item {index} has token ids outside the model's vocabulary [0, {num_tokens}) "
                f"(min {min(ids)}, max {max(ids)})"
            )
        out.append((ids[:prompt_len], ids[prompt_len:]))
    if skipped:
        log.warning(
            "SPIN: skipped %d of %d SFT items whose prompt leaves no room within max_seq_len=%d",
            skipped,
            num_items,
            max_seq_len,
        )
    if not out:
        raise SFTRecordError(
            "no SFT items" if not num_items else f"no SFT item has room for a response within max_seq_len={max_seq_len}"
        )
    return out


def resolve_spin_kwargs(spin_kwargs: dict | None) -> dict:
    """{"lambda_": float} from the seed's `dict(λ=0.1)` or `dict(lambda_=0.1)`; other keys are errors."""
    spin_kwargs = dict(spin_kwargs or {})
    given = [k for k in ("λ", "lambda_") if k in spin_kwargs]
    unknown = sorted(set(spin_kwargs) - {"λ", "lambda_"})
    if unknown:
        raise TypeError(f"unknown spin_kwargs {unknown}; the only knob is λ (or lambda_)")
    if len(given) > 1:
        raise TypeError("spin_kwargs gives both λ and lambda_; pass one")
    lambda_ = float(spin_kwargs[given[0]]) if given else 0.1
    if not lambda_ > 0:
        raise ValueError(f"SPIN λ must be > 0, got {lambda_}")
    return {"lambda_": lambda_}


@torch.no_grad()
def generate_synthetic(
    model: nn.Module,
    examples: Sequence[tuple[list[int], list[int]]],
    *,
    tokenizer,
    max_seq_len: int,
    temperature: float = 0.7,
    top_p: float | None = 0.9,
    top_k: int | None = None,
    sampling: SamplingConfig | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
    shard: Shard | None = None,
) -> list[list[int]]:
    """One sampled response per prompt, each with room for at most `max_seq_len - len(prompt)` tokens.

    Prompts are grouped by that budget and each group is one sampler call (it batches and KV-caches):
    a single call with the shortest prompt's budget would run longer prompts past `max_seq_len`,
    which a model with absolute positions cannot do. Each group draws from its own generator, seeded
    by `seed` and the budget. With a `shard` of several processes each samples a contiguous share of
    every group (its rows keyed by their index in the group, see `sampling.sample`'s `first_row`) and
    the shares are gathered, so every process returns what one process would.
    """
    sampling = spin_sampling(sampling, temperature=temperature, top_p=top_p, top_k=top_k)
    shard = shard or Shard()
    device = next(model.parameters()).device
    budgets = [max_seq_len - len(p) for p, _ in examples]
    responses: list[list[int]] = [[] for _ in examples]
    for budget in sorted(set(budgets)):  # the same order on every process: one gather per group
        rows = [i for i, b in enumerate(budgets) if b == budget]
        mine = shard.share(len(rows))
        generated: list[list[int]] = []
        if mine:
            generator = torch.Generator().manual_seed(derive_seed(seed, "spin-budget", budget))
            out = sampler.sample(
                model,
                [torch.tensor(examples[rows[j]][0], dtype=torch.long, device=device) for j in mine],
                first_row=mine.start,
                sampling=dataclasses.replace(sampling, max_new_tokens=budget),
                eos_id=tokenizer.eos_id,
                pad_id=tokenizer.pad_id,
                generator=generator,
                batch_size=batch_size,
                progress=progress,
            )
            generated = [out.response_ids[r][out.response_mask[r]].tolist() for r in range(len(mine))]
        for i, ids in zip(rows, shard.gather_lists(generated), strict=True):
            responses[i] = ids
    return responses


def spin_sampling(
    sampling: SamplingConfig | None, *, temperature: float, top_p: float | None, top_k: int | None
) -> SamplingConfig:
    """SPIN's SamplingConfig from `sampling=` or the loose keywords (defaults 0.7, 0.9, None), one rule.

    Its `max_new_tokens` must stay None: SPIN gives every prompt the room left within `max_seq_len`.
    """
    loose = dict(temperature=temperature, top_p=top_p, top_k=top_k)
    defaults = dict(temperature=0.7, top_p=0.9, top_k=None)
    resolved = resolve_sampling(sampling, {k: (k, v) for k, v in loose.items()}, defaults, where="SPIN")
    if resolved.max_new_tokens is not None:
        raise ValueError("SPIN derives each prompt's new-token budget from max_seq_len: leave max_new_tokens None")
    return resolved


def _pairs(examples, generated) -> list[dict]:
    return [
        {"chosen": (p + real, len(p)), "rejected": (p + gen, len(p))}
        for (p, real), gen in zip(examples, generated, strict=True)
    ]


def _load_or_generate(model, examples, run_dir, *, resume, shard, tokenizer, num_train, **sample_kwargs):
    """This iteration's synthetic responses, reused from `run_dir` on resume (the policy has moved since).

    `examples` are the training items then the validation items (one sampler call for both).
    """
    path = None if run_dir is None else Path(run_dir) / SYNTHETIC_FILE
    if resume and path is not None and path.exists():
        records = read_jsonl(path)
        if len(records) == len(examples) and all(r["prompt"] == p for r, (p, _) in zip(records, examples, strict=True)):
            return [r["generated"] for r in records]
        raise ValueError(f"{path} holds samples for other prompts; cannot resume this SPIN run with new data")
    generated = generate_synthetic(model, examples, tokenizer=tokenizer, shard=shard, **sample_kwargs)
    if path is not None and shard.rank == 0:
        write_jsonl(
            path,
            (
                {
                    "index": i,
                    "split": "train" if i < num_train else "valid",
                    "prompt": p,
                    "real": real,
                    "generated": gen,
                    "generated_text": tokenizer.decode(gen),
                }
                for i, ((p, real), gen) in enumerate(zip(examples, generated, strict=True))
            ),
        )
    return generated


@beartype
def train_spin_iteration(
    model: nn.Module,
    sft_items: SizedDataset,
    *,
    tokenizer,
    accelerator,
    run_dir: str | Path | None,
    config: TrainConfig,
    max_seq_len: int,
    lambda_: float = 0.1,
    loss_type: str = "sigmoid",
    dpop_lambda: float = 50.0,
    simpo_gamma: float = 0.5,
    orpo_lambda: float = 0.1,
    previous_synthetic: list | None = None,
    temperature: float = 0.7,
    top_p: float | None = 0.9,
    top_k: int | None = None,
    sampling: SamplingConfig | None = None,
    sample_batch_size: int | None = None,
    precompute_ref_logprobs: bool = True,
    resume: bool = False,
    seed: int = 0,
    valid_sft_items: SizedDataset | None = None,
):
    """One SPIN iteration on `model` in place: sample once from it, then train against those samples.

    The model as it is on entry is both the sampler and the reference. `previous_synthetic` (the
    last iteration's responses, aligned with `sft_items`) adds those pairs too, as the SPIN paper
    does from its second iteration. `loss_type` "sigmoid" is the paper's loss (`losses.spin_loss`);
    the others are `dpo_loss`'s, with beta = `lambda_`. Returns (TrainResult, this iteration's synthetic
    responses).
    """
    loss = PreferenceLoss(
        beta=lambda_, loss_type=loss_type, dpop_lambda=dpop_lambda, simpo_gamma=simpo_gamma, orpo_lambda=orpo_lambda
    )
    model = as_model(model)
    tokenizer = default_tokenizer(model, tokenizer)
    encode = partial(
        encode_sft_items, tokenizer=tokenizer, max_seq_len=max_seq_len, num_tokens=getattr(model, "num_tokens", None)
    )
    examples = encode(sft_items)
    valid_examples = encode(valid_sft_items) if valid_sft_items is not None else []
    run_dir = None if run_dir is None else Path(run_dir)
    model.to(accelerator.device)
    everything = _load_or_generate(
        model,
        examples + valid_examples,
        run_dir,
        resume=resume,
        num_train=len(examples),
        shard=Shard.of(accelerator),
        tokenizer=tokenizer,
        max_seq_len=max_seq_len,
        sampling=spin_sampling(sampling, temperature=temperature, top_p=top_p, top_k=top_k),
        batch_size=sample_batch_size,
        seed=seed,
        progress=config.progress,
    )
    generated = everything[: len(examples)]
    pairs = _pairs(examples, generated)
    if previous_synthetic is not None:
        if len(previous_synthetic) != len(examples):
            raise ValueError(
                f"previous_synthetic has {len(previous_synthetic)} responses for {len(examples)} SFT items"
            )
        pairs += _pairs(examples, previous_synthetic)
    make_task = partial(DPOTask, pad_id=tokenizer.pad_id, names=("real", "generated"), loss=loss)
    result = train_pairs(
        model,
        pairs,
        make_task,
        pad_id=tokenizer.pad_id,
        accelerator=accelerator,
        run_dir=run_dir,
        config=config,
        precompute_ref_logprobs=precompute_ref_logprobs,
        resume=resume,
        desc="spin",
        valid_pairs=_pairs(valid_examples, everything[len(examples) :]) or None,
        reference_free=loss.reference_free,
    )
    return result, generated


class SPINTrainer:
    """Self-play fine-tuning, the seed README's API: `SPINTrainer(model, max_seq_len=16,
    train_sft_dataset=..., checkpoint_every=100, spin_kwargs=dict(λ=0.1))`, then `spin_trainer()`.

    Iteration k trains in `checkpoint_folder/iteration-k/` (synthetic.jsonl, reference log-probs,
    checkpoints, metrics). `loss_type` (default the paper's "sigmoid") and `dpop_lambda`, `simpo_gamma`,
    `orpo_lambda` pick another `dpo_loss` variant, with beta = λ. Remaining keyword arguments are
    `TrainConfig` fields.
    """

    @beartype
    def __init__(
        self,
        model: nn.Module,
        train_sft_dataset: Any = None,
        *,
        max_seq_len: int,
        num_iterations: int = 1,
        valid_sft_dataset: Any = None,
        spin_kwargs: dict | None = None,
        tokenizer=None,
        mix_previous_synthetic: bool = False,
        temperature: float = 0.7,
        top_p: float | None = 0.9,
        top_k: int | None = None,
        sampling: SamplingConfig | None = None,
        sample_batch_size: int | None = None,
        precompute_ref_logprobs: bool = True,
        loss_type: str = "sigmoid",
        dpop_lambda: float = 50.0,
        simpo_gamma: float = 0.5,
        orpo_lambda: float = 0.1,
        accelerator=None,
        accelerate_kwargs: dict | None = None,
        checkpoint_folder: str | Path | None = "./spin-checkpoints",
        resume: bool = False,
        peft_config: Any = None,
        chat_template: bool | None = None,
        **train_config,
    ):
        if train_sft_dataset is None:
            raise TypeError("SPINTrainer needs train_sft_dataset")
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
        model = as_model(model, peft_config=peft_config)
        model_len = getattr(model, "max_seq_len", None)
        if max_seq_len < 2 or (model_len is not None and max_seq_len > model_len):
            raise ValueError(f"max_seq_len must be in [2, {model_len}] (the model's length), got {max_seq_len}")
        self.spin = resolve_spin_kwargs({"λ": 0.1} if spin_kwargs is None else spin_kwargs)
        self.spin |= dict(
            loss_type=loss_type, dpop_lambda=dpop_lambda, simpo_gamma=simpo_gamma, orpo_lambda=orpo_lambda
        )
        PreferenceLoss(beta=self.spin["lambda_"], **{k: v for k, v in self.spin.items() if k != "lambda_"})  # checks
        self.config = TrainConfig(**train_config)  # an unknown keyword is a TypeError here
        self.model, self.tokenizer = model, default_tokenizer(model, tokenizer, chat_template=chat_template)
        # Fixed once: mock datasets draw anew per index. Bad items fail here, not mid-run.
        self.items = [train_sft_dataset[i] for i in range(len(train_sft_dataset))]
        self.valid_items = (
            None if valid_sft_dataset is None else [valid_sft_dataset[i] for i in range(len(valid_sft_dataset))]
        )
        for items in (x for x in (self.items, self.valid_items) if x is not None):
            encode_sft_items(
                items, self.tokenizer, max_seq_len=max_seq_len, num_tokens=getattr(model, "num_tokens", None)
            )
        self.max_seq_len, self.num_iterations, self.mix = max_seq_len, num_iterations, mix_previous_synthetic
        self.sampling = spin_sampling(sampling, temperature=temperature, top_p=top_p, top_k=top_k)
        self.sample_batch_size = sample_batch_size
        self.precompute_ref_logprobs, self.resume = precompute_ref_logprobs, resume
        self.checkpoint_folder = None if checkpoint_folder is None else Path(checkpoint_folder)
        self.accelerator, self.accelerate_kwargs = accelerator, accelerate_kwargs

    def _iteration_dir(self, k: int) -> Path | None:
        return None if self.checkpoint_folder is None else self.checkpoint_folder / f"iteration-{k}"

    def __call__(self) -> list:
        """Run every iteration; returns the per-iteration `TrainResult`s (None for ones finished earlier)."""
        if self.accelerator is None:
            self.accelerator = make_accelerator(self.accelerate_kwargs)
        results: list[TrainResult | None] = []
        previous = None
        self.steps: list[int | None] = []  # optimizer steps per iteration, also of ones finished in an earlier run
        for k in range(1, self.num_iterations + 1):
            run_dir = self._iteration_dir(k)
            done = read_json_if_exists(run_dir / DONE_FILE) if self.resume and run_dir is not None else None
            if done is not None and run_dir is not None:
                load_model(self.model, run_dir / "model.safetensors")  # this iteration finished in an earlier run
                previous = [r["generated"] for r in read_jsonl(run_dir / SYNTHETIC_FILE) if r["split"] == "train"]
                results.append(None)
                self.steps.append(done.get("steps"))
                continue
            seed = derive_seed(self.config.seed, "spin-iteration", k)  # sampling and data order of iteration k
            result, generated = train_spin_iteration(
                self.model,
                self.items,
                tokenizer=self.tokenizer,
                accelerator=self.accelerator,
                run_dir=run_dir,
                config=dataclasses.replace(self.config, seed=seed),
                max_seq_len=self.max_seq_len,
                previous_synthetic=previous if self.mix else None,
                precompute_ref_logprobs=self.precompute_ref_logprobs,
                resume=self.resume,
                seed=seed,
                valid_sft_items=self.valid_items,
                sampling=self.sampling,
                sample_batch_size=self.sample_batch_size,
                **self.spin,
            )
            if run_dir is not None and self.accelerator.is_main_process:
                atomic_write_json(
                    run_dir / DONE_FILE, {"iteration": k, "num_items": len(self.items), "steps": result.steps}
                )
            results.append(result)
            self.steps.append(result.steps)
            previous = generated
        return results
