"""Reference log-probs of preference pairs, computed once before training (split over the
processes), stored beside the run with a digest of the pairs, and reused on resume."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch
from accelerate.utils import gather_object
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import Tensor, nn
from tqdm.auto import tqdm

from self_rewarding_lm_pytorch.core.files import atomic_write_bytes
from self_rewarding_lm_pytorch.trainers.pair_data import collate_pairs, pair_logprobs

__all__ = ["REF_LOGPROBS_FILE", "compute_ref_logprobs", "load_or_compute_ref_logprobs"]

REF_LOGPROBS_FILE = "ref_logprobs.safetensors"


@torch.no_grad()
def compute_ref_logprobs(
    ref_model: nn.Module, pairs: Sequence[dict], *, pad_id: int, batch_size: int = 16, progress: bool = True
) -> Tensor:
    """Reference log-probs (N, 2) [chosen, rejected] of every pair, in eval mode, without grad.

    Pairs are batched longest first so each batch pads little; results are scattered back to the
    dataset order. Right padding makes each row's value independent of its batch mates.
    """
    was_training = ref_model.training
    ref_model.eval()
    device = next(ref_model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: -max(len(pairs[i]["chosen"][0]), len(pairs[i]["rejected"][0])))
    out = torch.empty(len(pairs), 2, dtype=torch.float32)
    try:
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="reference log-probs", disable=not progress, leave=False):
            idx = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate_pairs([pairs[i] for i in idx], pad_id).items()}
            chosen, rejected, *_ = pair_logprobs(ref_model, batch)
            out[idx] = torch.stack((chosen, rejected), dim=-1).float().cpu()
    finally:
        ref_model.train(was_training)
    return out


def _pairs_digest(pairs: Sequence[dict]) -> str:
    """A hash of the encoded pairs, so stored reference log-probs are only reused for the same data."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(
            json.dumps(
                [
                    list(map(int, p["chosen"][0])),
                    int(p["chosen"][1]),
                    list(map(int, p["rejected"][0])),
                    int(p["rejected"][1]),
                ]
            ).encode()
        )
    return h.hexdigest()


def load_or_compute_ref_logprobs(
    ref_model: nn.Module,
    splits: dict[str, list[dict]],
    *,
    run_dir: Path | None,
    resume: bool,
    pad_id: int,
    batch_size: int,
    progress: bool,
    accelerator=None,
) -> dict[str, Tensor]:
    """Reference log-probs per split, reused from `run_dir` on resume (the policy has moved since).

    With several processes each computes an interleaved share of the pairs and all of them gather
    the whole table; only the main process writes the file.
    """
    digest = hashlib.sha256("".join(_pairs_digest(splits[k]) + k for k in sorted(splits)).encode()).hexdigest()
    path = None if run_dir is None else Path(run_dir) / REF_LOGPROBS_FILE
    if resume and path is not None and path.exists():
        with safe_open(str(path), framework="pt") as f:
            stored_digest = (f.metadata() or {}).get("digest")
        if stored_digest != digest:
            raise ValueError(f"{path} was computed for different pairs; cannot resume this run with new data")
        return load_file(str(path))
    compute = partial(compute_ref_logprobs, ref_model, pad_id=pad_id, batch_size=batch_size, progress=progress)
    with nullcontext() if accelerator is None else accelerator.autocast():  # the policy's precision
        out = {k: _sharded(compute, v, accelerator) for k, v in splits.items()}
    if path is not None and (accelerator is None or accelerator.is_main_process):
        atomic_write_bytes(path, save(out, metadata={"digest": digest, "reduction": "sum"}))
    return out


def _sharded(compute: Callable, pairs: list[dict], accelerator) -> Tensor:
    """compute(pairs) -> (N, 2), split over the processes: rank r takes pairs r, r + N, ... (balanced lengths)."""
    world = 1 if accelerator is None else accelerator.num_processes
    if world == 1:
        return compute(pairs)
    mine = list(range(accelerator.process_index, len(pairs), world))
    values = compute([pairs[i] for i in mine]) if mine else torch.empty(0, 2)
    out = torch.empty(len(pairs), 2, dtype=torch.float32)
    for indices, rows in gather_object([(mine, values.tolist())]):  # python floats hold float32 exactly
        out[indices] = torch.tensor(rows, dtype=torch.float32).reshape(-1, 2)
    return out
