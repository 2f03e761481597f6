"""A scalar reward model trained on ranked lists of K >= 2 outputs per prompt (multinomial ranking).

Shapes: b batch (records), n sequence, d model dim, k ranks (best first), r encoded rows.

The loss is Ouyang et al. 2022's: for each prompt the mean over its C(K,2) pairs of
-log sigmoid(r_better - r_worse) (`losses.ranking_loss`). Every output is encoded once per step:
the real outputs of a batch are stacked rank-major (all best outputs first, then all second-best,
...) into one forward, and their rewards are scattered into a (b, k) grid with a mask for the
ranks a record lacks, so a record with K outputs costs K rows, not K(K-1) pair rows.

The network is an x-transformers model or a Hugging Face causal LM (checked in `reward_nets`); a
Hugging Face reward model saves to a `save_pretrained` folder plus its head (`reward_model_hf`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from beartype import beartype
from einops import rearrange
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from self_rewarding_lm_pytorch.core.batching import ListDataset, collate_examples, encode_example
from self_rewarding_lm_pytorch.core.files import atomic_write_bytes, read_records
from self_rewarding_lm_pytorch.core.hf_tokenizer import HFTokenizer
from self_rewarding_lm_pytorch.core.tokenizer import encode_prompt
from self_rewarding_lm_pytorch.models import HFCausalLM, as_model, is_hf_model, max_seq_len_of
from self_rewarding_lm_pytorch.trainers.reward_nets import hf_net, reward_tokenizer, x_transformers_net

__all__ = ["RankingTask", "RewardModel", "RewardModelTrainer", "load_ranked_records", "pairwise_metrics"]


class RewardModel(nn.Module):
    """A network with a scalar head: a decoder read at its last real token, or an encoder mean-pooled
    over its real tokens.

    Build it from sizes, `RewardModel(num_tokens=259, max_seq_len=128, dim=64, depth=2, heads=4)`
    (an x-transformers decoder; `encoder=True` for an encoder), or wrap a network: an x-transformers
    `TransformerWrapper`, or a Hugging Face causal LM (or a `peft.PeftModel` around one) with its
    tokenizer, `RewardModel(net=AutoModelForCausalLM.from_pretrained(...), tokenizer=AutoTokenizer...)`,
    read at the last real token's final hidden state (the decoder stack alone: no logits computed).
    `peft_config=` applies LoRA to an HF model; `chat_template=False` turns off its tokenizer's chat template.
    `score(prompts, responses)` scores strings with `tokenizer` (default: `ByteTokenizer`).
    Calling the model on strings, `rm(prompts, responses)`, is `score`, so a `RewardModel` is a
    `reward_fn(prompts, responses) -> scores` wherever one is expected.
    """

    net: Any  # an x-transformers TransformerWrapper or an HFCausalLM (typed loosely: both are optional imports)

    @beartype
    def __init__(
        self,
        num_tokens: int | None = None,
        max_seq_len: int | None = None,
        dim: int | None = None,
        depth: int | None = None,
        heads: int | None = None,
        *,
        encoder: bool = False,
        net: nn.Module | None = None,
        tokenizer: Any = None,
        score_batch_size: int = 32,
        peft_config: Any = None,
        chat_template: bool | None = None,
    ):
        super().__init__()
        sizes = dict(num_tokens=num_tokens, max_seq_len=max_seq_len, dim=dim, depth=depth, heads=heads)
        if score_batch_size < 1:
            raise ValueError(f"score_batch_size must be >= 1, got {score_batch_size}")
        if net is not None and any(v is not None for v in sizes.values()):
            raise ValueError("pass either net= or the sizes (num_tokens, ...), not both")
        # A custom net: `load` fills an existing instance, `from_pretrained` cannot rebuild it from sizes.
        self.config: dict[str, Any] | None = None if net is not None else dict(sizes, encoder=encoder)
        self.is_hf = net is not None and (is_hf_model(net) or isinstance(net, HFCausalLM))
        if self.is_hf:
            assert net is not None
            self.net, net_dim, embedded = hf_net(net, tokenizer, peft_config)
        else:
            if peft_config is not None:
                raise TypeError(f"peft_config applies to Hugging Face models only, not to a {type(net).__name__}")
            self.net, net_dim, embedded = x_transformers_net(net, sizes, encoder)
        self.causal = self.is_hf or bool(getattr(self.net.attn_layers, "causal", True))
        self.max_seq_len: int | None = max_seq_len_of(self.net)
        self.to_reward = nn.Linear(net_dim, 1)
        self.tokenizer = reward_tokenizer(tokenizer, chat_template)
        vocab = getattr(self.tokenizer, "vocab_size", None)
        if vocab is not None and embedded is not None and vocab > embedded:
            raise ValueError(f"tokenizer has {vocab} ids but the network embeds only {embedded}")
        self.score_batch_size = score_batch_size

    def forward(self, input_ids, lengths=None, *, mask: Tensor | None = None) -> Tensor:
        """(b,) rewards of right-padded `input_ids` (b, n), given `lengths` (b,) or a bool `mask` (b, n).

        Called with two lists of strings instead, `rm(prompts, responses)`, it is `score`.
        """
        if _is_text_list(input_ids):
            return self.score(input_ids, lengths)
        if mask is None:
            if lengths is None:
                raise ValueError("RewardModel.forward needs lengths or mask to find the real tokens")
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            mask = positions[None, :] < lengths.to(input_ids.device)[:, None]
        if bool((mask.sum(-1) == 0).any()):
            raise ValueError("every row needs at least one real token")
        if self.causal:
            # right padding: a real token never attends to the pads after it, so no mask is needed
            # and the last real token has read the whole sequence
            embeds = (
                self.net.last_hidden_state(input_ids) if self.is_hf else self.net(input_ids, return_embeddings=True)
            )
            last = mask.long().sum(-1) - 1
            pooled = embeds[torch.arange(embeds.shape[0], device=embeds.device), last]
        else:
            embeds = self.net(input_ids, return_embeddings=True, mask=mask)
            weights = rearrange(mask.to(embeds.dtype), "b n -> b n 1")
            pooled = (embeds * weights).sum(1) / weights.sum(1)
        # the head keeps its own dtype (fp32) when the network runs in another (a bf16 HF model)
        return rearrange(self.to_reward(pooled.to(self.to_reward.weight.dtype)), "b 1 -> b")

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str], tokenizer: Any = None) -> Tensor:
        """(b,) float rewards of (prompt, response) pairs, in eval mode, micro-batched; mode restored after.

        Texts longer than `max_seq_len` lose tokens from the end of the response. Rows are batched in
        order of length (less padding); a row's reward does not depend on its batch.
        """
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        tok = reward_tokenizer(tokenizer, None) if tokenizer is not None else self.tokenizer
        rows = [encode_example(tok, p, r, max_len=self.max_seq_len) for p, r in zip(prompts, responses, strict=True)]
        by_length = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
        was_training, device = self.training, next(self.parameters()).device
        out = torch.zeros(len(rows))
        self.eval()
        try:
            for start in range(0, len(rows), self.score_batch_size):
                idx = by_length[start : start + self.score_batch_size]
                batch = collate_examples([rows[i] for i in idx], tok.pad_id)
                lengths = torch.tensor([len(rows[i][0]) for i in idx], device=device)
                out[torch.tensor(idx)] = self(batch["input_ids"].to(device), lengths).float().cpu()
        finally:
            self.train(was_training)
        return out

    def as_reward_fn(self, tokenizer: Any = None):
        """A plain `(prompts, responses) -> Tensor (b,)` callable (for stages that take a reward_fn).

        `tokenizer` overrides the model's own; leave it None unless the model was trained with it.
        """
        return lambda prompts, responses: self.score(prompts, responses, tokenizer)

    def save(self, path: str | os.PathLike) -> Path:
        """x-transformers: weights (and the sizes, when built from sizes) to one safetensors file.
        Hugging Face: the folder `path` (see `reward_model_hf.save_hf_reward_model`). Written atomically."""
        if self.is_hf:
            from self_rewarding_lm_pytorch.trainers.reward_model_hf import save_hf_reward_model

            return save_hf_reward_model(self, path)
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
        meta = {"reward_model_config": json.dumps(self.config)} if self.config else None
        return atomic_write_bytes(path, st_save(tensors, metadata=meta))

    def load(self, path: str | os.PathLike) -> RewardModel:
        """Loads weights saved by `save` into this model (strict: every key must match)."""
        if self.is_hf:
            from self_rewarding_lm_pytorch.trainers.reward_model_hf import load_hf_reward_model_weights

            return load_hf_reward_model_weights(self, path)
        device = next(self.parameters()).device
        self.load_state_dict({k: v.to(device) for k, v in st_load(Path(path).read_bytes()).items()})
        return self

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, tokenizer: Any = None, *, base_model: Any = None) -> RewardModel:
        """Rebuilds a model saved by `save`: a size-built one from its file, or a Hugging Face one from its
        folder (a LoRA adapter onto `base_model`, a model or path; None: the base path the adapter names).
        A custom x-transformers `net=` model: build it, then `load`."""
        if Path(path).is_dir():
            from self_rewarding_lm_pytorch.trainers.reward_model_hf import load_hf_reward_model

            return load_hf_reward_model(cls, path, tokenizer=tokenizer, base_model=base_model)
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "reward_model_config" not in meta:
            raise ValueError(
                f"{path} has no RewardModel sizes (saved from a net= model): build the model and call load()"
            )
        return cls(**json.loads(meta["reward_model_config"]), tokenizer=tokenizer).load(path)


def _is_text_list(x) -> bool:
    return isinstance(x, (list, tuple)) and all(isinstance(s, str) for s in x)


# --- data: {"prompt": str, "ranked_outputs": [best, ..., worst]} records ---


def load_ranked_records(data) -> list[dict]:
    """Validated ranking records from a list of dicts or a .json (a list) / .jsonl file.

    A record with fewer than two outputs, a duplicate output, or an empty output (or a prompt that
    is not a string) is a ValueError naming its index (and file line): never silently dropped.
    """
    if isinstance(data, (str, os.PathLike)):
        if not Path(data).exists():
            raise FileNotFoundError(f"no such ranking data file: {data}")
        records, where = read_records(data)
    else:
        records, where = list(data), None
    for i, rec in enumerate(records):
        loc = f"record {i}" + (f" ({where[i]})" if where else "")
        _check_record(rec, loc)
    return records


def _check_record(rec, loc: str):
    if not isinstance(rec, dict) or "prompt" not in rec or "ranked_outputs" not in rec:
        raise ValueError(f"{loc}: expected a dict with 'prompt' and 'ranked_outputs'")
    if not isinstance(rec["prompt"], str):
        raise ValueError(f"{loc}: prompt must be a string, got {type(rec['prompt']).__name__}")
    outs = rec["ranked_outputs"]
    if not isinstance(outs, list) or len(outs) < 2:
        raise ValueError(
            f"{loc}: needs at least two ranked_outputs, got {len(outs) if isinstance(outs, list) else outs!r}"
        )
    for j, o in enumerate(outs):
        if not isinstance(o, str) or not o.strip():
            raise ValueError(f"{loc}: ranked_outputs[{j}] is empty or not a string")
    if len(set(outs)) != len(outs):
        dup = next(o for o in outs if outs.count(o) > 1)
        raise ValueError(f"{loc}: duplicate output in ranked_outputs: {dup[:60]!r}")


def pairwise_metrics(rewards: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(accuracy, margin) of a (b, k) reward grid (best first), each a mean over records of the mean
    over that record's valid pairs i < j: accuracy counts r_i > r_j (a tie is wrong), margin is r_i - r_j.

    Per record, as the loss is averaged: a mean over records aggregates exactly across batches and
    processes (the loop weights validation batches by their record counts). K = 2: plain pair accuracy.
    """
    diff = rearrange(rewards, "b i -> b i 1") - rearrange(rewards, "b j -> b 1 j")
    k = rewards.shape[-1]
    pairs = torch.ones(k, k, dtype=torch.bool, device=rewards.device).triu(1)
    pairs = pairs & rearrange(mask, "b i -> b i 1") & rearrange(mask, "b j -> b 1 j")
    count = pairs.sum(dim=(-1, -2)).clamp(min=1)
    # where-sums, not boolean indexing: no host sync inside a training step
    correct = ((diff > 0) & pairs).sum(dim=(-1, -2)) / count
    margin = torch.where(pairs, diff, torch.zeros_like(diff)).sum(dim=(-1, -2)) / count
    return correct.mean(), margin.mean()


@dataclass
class RankingTask:
    """The loop task: collate records into one rank-major batch; step = ranking loss over it.

    A record with more than `max_ranks_per_batch` outputs contributes a random subset of that size
    each time it is drawn, kept in rank order, so over steps every pair of its ranking is seen
    (a contiguous window would rarely pair the best with the worst).
    """

    tokenizer: Any
    max_ranks_per_batch: int = 4
    max_seq_len: int | None = None
    key_metric: str = "rewards/accuracies"

    def collate(self, records: list) -> dict:
        ranked = [self._pick_ranks(rec) for rec in records]
        b, k = len(ranked), max(len(outs) for _, outs in ranked)
        rows, slots = [], []
        for rank in range(k):  # rank-major: all best outputs, then all second-best, ...
            for i, (prompt, outs) in enumerate(ranked):
                if rank < len(outs):
                    rows.append(encode_example(self.tokenizer, prompt, outs[rank], max_len=self.max_seq_len))
                    slots.append(rank * b + i)
        batch = collate_examples(rows, self.tokenizer.pad_id)
        slot = torch.tensor(slots)
        mask = torch.zeros(k * b, dtype=torch.bool)
        mask[slot] = True
        return {
            "input_ids": batch["input_ids"],
            "lengths": torch.tensor([len(ids) for ids, _ in rows]),
            "slot": slot,
            "mask": rearrange(mask, "(k b) -> b k", k=k),
        }

    def _pick_ranks(self, rec: dict) -> tuple[str, list[str]]:
        outs = rec["ranked_outputs"]
        if len(outs) > self.max_ranks_per_batch:
            keep = torch.randperm(len(outs))[: self.max_ranks_per_batch].sort().values
            outs = [outs[j] for j in keep.tolist()]
        return rec["prompt"], outs

    def _rewards(self, model, batch) -> tuple[Tensor, Tensor]:
        flat = model(batch["input_ids"], batch["lengths"])  # (r,): one row per real output
        mask = batch["mask"]
        grid = flat.new_zeros(mask.numel()).index_copy(0, batch["slot"].to(flat.device), flat)
        return rearrange(grid, "(k b) -> b k", b=mask.shape[0]), mask.to(flat.device)

    def step(self, model, batch) -> tuple[Tensor, dict[str, Tensor]]:
        from self_rewarding_lm_pytorch.core.losses import ranking_loss

        rewards, mask = self._rewards(model, batch)
        loss = ranking_loss(rewards, mask).mean()
        accuracy, margin = pairwise_metrics(rewards.detach(), mask)
        return loss, {"loss": loss.detach(), "rewards/accuracies": accuracy, "rewards/margins": margin}

    def valid_step(self, model, batch) -> dict[str, Tensor]:
        with torch.no_grad():
            return self.step(model, batch)[1]


class RewardModelTrainer:
    """Trains a `RewardModel` on ranked lists with the shared loop (`loop.train`).

    `RewardModelTrainer(rm, tokenizer, "train.jsonl", valid_data=..., max_ranks_per_batch=4,
    batch_size=8, num_train_steps=1000)` then `trainer()`. Data: a list of
    `{"prompt", "ranked_outputs": [best, ..., worst]}` or a .json/.jsonl path, validated here.
    Other keyword arguments are `TrainConfig` fields (learning_rate, valid_every, ...). For a reward model
    around a Hugging Face model, `peft_config=` applies LoRA (only the adapter and the head train) and
    `chat_template=False` turns off the tokenizer's chat template.
    Validation reports `rewards/accuracies` (pairwise accuracy) and `rewards/margins`.
    """

    @beartype
    def __init__(
        self,
        reward_model: RewardModel,
        tokenizer: Any = None,
        train_data: Any = None,
        valid_data: Any = None,
        *,
        max_ranks_per_batch: int = 4,
        max_seq_len: int | None = None,
        accelerator=None,
        accelerate_kwargs: dict | None = None,
        checkpoint_folder: str | os.PathLike | None = None,
        resume: bool = False,
        peft_config: Any = None,
        chat_template: bool | None = None,
        **train_config,
    ):
        from self_rewarding_lm_pytorch.training.loop import TrainConfig

        if train_data is None:
            raise ValueError("RewardModelTrainer needs train_data")
        if max_ranks_per_batch < 2:
            raise ValueError(f"max_ranks_per_batch must be >= 2 (a pair), got {max_ranks_per_batch}")
        unknown = set(train_config) - {f.name for f in fields(TrainConfig)}
        if unknown:
            raise TypeError(f"unknown RewardModelTrainer arguments: {sorted(unknown)}")
        self.reward_model = reward_model
        self.config = TrainConfig(**train_config)
        if peft_config is not None:  # LoRA on the HF model, in place (a TypeError for any other network)
            reward_model.net = as_model(reward_model.net, peft_config=peft_config, seed=self.config.seed)
        if tokenizer is not None:  # the model scores strings later with the tokenizer it was trained with
            reward_model.tokenizer = reward_tokenizer(tokenizer, chat_template)
        elif chat_template is not None and isinstance(reward_model.tokenizer, HFTokenizer):
            reward_model.tokenizer = reward_model.tokenizer.with_chat_template(chat_template)
        self.tokenizer = reward_model.tokenizer
        self.train_records = load_ranked_records(train_data)
        self.valid_records = load_ranked_records(valid_data) if valid_data is not None else None
        max_len = max_seq_len or reward_model.max_seq_len
        self.task = RankingTask(self.tokenizer, max_ranks_per_batch, max_len)
        for name, records in (("train_data", self.train_records), ("valid_data", self.valid_records or [])):
            for i, rec in enumerate(records):  # raised now, not mid-training from collate
                if max_len is not None and len(encode_prompt(self.tokenizer, rec["prompt"])) >= max_len:
                    raise ValueError(
                        f"{name} record {i}: its prompt leaves no room for an output within max_seq_len={max_len}"
                    )
        self.accelerator, self.accelerate_kwargs = accelerator, accelerate_kwargs
        self.checkpoint_folder, self.resume = checkpoint_folder, resume

    def __call__(self):
        from self_rewarding_lm_pytorch.training.accelerators import make_accelerator
        from self_rewarding_lm_pytorch.training.loop import train

        accelerator = self.accelerator or make_accelerator(self.accelerate_kwargs)
        valid = ListDataset(self.valid_records) if self.valid_records is not None else None
        return train(
            self.reward_model,
            self.task,
            ListDataset(self.train_records),
            self.config,
            accelerator=accelerator,
            run_dir=self.checkpoint_folder,
            valid_dataset=valid,
            resume=self.resume,
            desc="reward model",
        )
