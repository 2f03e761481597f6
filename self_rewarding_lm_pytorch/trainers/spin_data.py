"""SPIN's data: the SFT items as (prompt, real response) ids, and the previous iterate's synthetic responses.

Each iteration, the frozen previous iterate answers every SFT prompt once (`generate_synthetic`: batched,
KV-cached, split across processes), the answers are saved in the iteration's folder so a resumed run
trains on the same ones (`load_or_generate_synthetic`), and each (real, synthetic) becomes a pair
(`spin_pairs`). The training itself is `trainers.spin`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence, Sized
from pathlib import Path
from typing import cast

import torch
from beartype import beartype
from torch import nn

from self_rewarding_lm_pytorch.core import sampling as sampler  # looked up per call: tests patch sampler.sample
from self_rewarding_lm_pytorch.core.batching import SizedDataset
from self_rewarding_lm_pytorch.core.distributed import Shard
from self_rewarding_lm_pytorch.core.files import read_jsonl, write_jsonl
from self_rewarding_lm_pytorch.core.sampling_config import SamplingConfig, resolve_sampling
from self_rewarding_lm_pytorch.core.seeding import derive_seed
from self_rewarding_lm_pytorch.trainers.sft import NoResponseTokens, to_sft_example

__all__ = [
    "SYNTHETIC_FILE",
    "SFTRecordError",
    "encode_sft_items",
    "generate_synthetic",
    "load_or_generate_synthetic",
    "spin_pairs",
    "spin_sampling",
]

log = logging.getLogger(__name__)
SYNTHETIC_FILE = "synthetic.jsonl"


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


def spin_pairs(examples, generated) -> list[dict]:
    """(real, generated) pairs in the pair trainer's form: the real response is the chosen one."""
    return [
        {"chosen": (p + real, len(p)), "rejected": (p + gen, len(p))}
        for (p, real), gen in zip(examples, generated, strict=True)
    ]


def load_or_generate_synthetic(model, examples, run_dir, *, resume, shard, tokenizer, num_train, **sample_kwargs):
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
