"""SPIN (Chen et al. 2024, arXiv 2401.01335): self-play fine-tuning against the previous iterate.

Each iteration, the frozen previous iterate answers every SFT prompt once (batched, KV-cached,
before any training step); the policy then learns to prefer the real SFT response over that
synthetic one, with the previous iterate as the reference. That is DPO on (real, generated) pairs
with `losses.spin_loss` (or any other `dpo_loss` type, beta = lambda), run through the DPO trainer's
pair machinery (`trainers.pair_training.train_pairs`). The SFT items' encoding and the synthetic responses
are `trainers.spin_data`; their names stay importable from here.

Shapes: b batch, n sequence (the tensors live in `stages.dpo` and `sampling`; this module handles ids).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Any

from beartype import beartype
from torch import nn

from self_rewarding_lm_pytorch.core.batching import SizedDataset
from self_rewarding_lm_pytorch.core.distributed import Shard
from self_rewarding_lm_pytorch.core.files import atomic_write_json, read_json_if_exists, read_jsonl
from self_rewarding_lm_pytorch.core.sampling_config import SamplingConfig
from self_rewarding_lm_pytorch.core.seeding import derive_seed
from self_rewarding_lm_pytorch.models import as_model
from self_rewarding_lm_pytorch.trainers.dpo import default_tokenizer
from self_rewarding_lm_pytorch.trainers.pair_training import DPOTask, train_pairs
from self_rewarding_lm_pytorch.trainers.preference_loss import PreferenceLoss
from self_rewarding_lm_pytorch.trainers.spin_data import (
    SYNTHETIC_FILE,
    SFTRecordError,
    encode_sft_items,
    generate_synthetic,
    load_or_generate_synthetic,
    spin_pairs,
    spin_sampling,
)
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

DONE_FILE = "iteration_done.json"


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
    everything = load_or_generate_synthetic(
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
    pairs = spin_pairs(examples, generated)
    if previous_synthetic is not None:
        if len(previous_synthetic) != len(examples):
            raise ValueError(
                f"previous_synthetic has {len(previous_synthetic)} responses for {len(examples)} SFT items"
            )
        pairs += spin_pairs(examples, previous_synthetic)
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
        valid_pairs=spin_pairs(valid_examples, everything[len(examples) :]) or None,
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
