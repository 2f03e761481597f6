"""Reward-model training: rows encoded per step equal the outputs, not the pairs.

    python bench/reward_model.py           # writes bench/results/reward_model.md
    python bench/reward_model.py --quick   # fewer steps, no file

Trains the same reward model twice with `RewardModelTrainer` on the shared loop, on 64 prompts
with K ranked outputs each, 16 prompts per step:
- multinomial: the ranked lists as they are (rank-major batch, each output encoded once);
- pairwise expansion: every ranked list split into its C(K,2) pairs (what a binomial reward model
  trains on), all pairs of the same 16 prompts in one step, so both see the same comparisons.
A forward hook on the network counts the rows it encodes per step.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
import time
from math import comb
from pathlib import Path

import torch

from self_rewarding_lm_pytorch.core.files import atomic_write_text
from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
from self_rewarding_lm_pytorch.trainers.reward_model import RewardModel, RewardModelTrainer


def ranked_records(prompts: int, k: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    recs = []
    for p in range(prompts):
        outs = ["".join(chr(97 + int(c)) for c in torch.randint(26, (24,), generator=g)) for _ in range(k)]
        recs.append({"prompt": f"question {p}: what is good?", "ranked_outputs": outs})
    return recs


def pair_records(records: list[dict]) -> list[dict]:
    return [
        {"prompt": r["prompt"], "ranked_outputs": [a, b]}
        for r in records
        for a, b in itertools.combinations(r["ranked_outputs"], 2)
    ]


def run(records, batch_size: int, steps: int, max_ranks: int, dim: int) -> tuple[list[int], float]:
    torch.manual_seed(0)
    rm = RewardModel(num_tokens=259, max_seq_len=128, dim=dim, depth=2, heads=4)
    rows: list[int] = []
    rm.net.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = RewardModelTrainer(
            rm,
            ByteTokenizer(),
            records,
            max_ranks_per_batch=max_ranks,
            batch_size=batch_size,
            num_train_steps=steps,
            progress=False,
            log_every=steps,
            accelerate_kwargs=dict(cpu=True),
            checkpoint_folder=tmp,
        )
        t0 = time.perf_counter()
        trainer()
        return rows, (time.perf_counter() - t0) / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="bench/results/reward_model.md")
    args = ap.parse_args()
    if args.quick:
        args.steps = 3
    torch.set_num_threads(1)
    records = ranked_records(args.prompts, args.k)
    pairs_per_prompt = comb(args.k, 2)
    multi_rows, multi_s = run(records, args.batch_size, args.steps, args.k, args.dim)
    pair_rows, pair_s = run(pair_records(records), args.batch_size * pairs_per_prompt, args.steps, 2, args.dim)
    outputs, pairs = args.batch_size * args.k, args.batch_size * pairs_per_prompt
    assert set(multi_rows) == {outputs}, multi_rows  # each output once per step, one forward per step
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    report = "\n".join(
        [
            f"{args.batch_size} prompts per step, K={args.k} ranked outputs each ({outputs} outputs, {pairs} pairs), "
            f"reward model dim {args.dim} depth 2, {args.steps} steps, 1 torch thread.",
            "",
            "| training | outputs/step | pairs/step | rows encoded/step (hook) | s/step |",
            "|---|---|---|---|---|",
            f"| multinomial (rank-major) | {outputs} | {pairs} | {multi_rows[0]} | {multi_s:.3f} |",
            f"| pairwise expansion | {outputs} | {pairs} | {pair_rows[0]} | {pair_s:.3f} |",
            "",
            f"Rows: multinomial encodes {multi_rows[0]} = outputs; pairwise {pair_rows[0]} = 2 x pairs "
            f"({pair_rows[0] / multi_rows[0]:.1f}x the rows, {pair_s / multi_s:.1f}x the time per step).",
            "",
            f"uptime at the end: `{uptime}`",
        ]
    )
    print(report)
    if not args.quick:
        cmd = "python " + " ".join(sys.argv)
        atomic_write_text(Path(args.out), f"# Reward-model training: rows per step\n\nCommand: `{cmd}`\n\n{report}\n")


if __name__ == "__main__":
    main()
