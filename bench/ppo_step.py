"""Time of one `PPOTrainer.step` against the cost of the model passes it cannot avoid, measured in the same run.

    python bench/ppo_step.py                      # prints a markdown table
    python bench/ppo_step.py --write bench/results/ppo_step.md

A PPO step over b rollouts with minibatches of m and E epochs makes, at least:
- rollout forwards: one no-grad forward of the policy+value model and one of the reference over b rows;
- updates: U = E * ceil(b / m) forward+backward passes of the policy+value model over m rows
  (timed with the trivial loss `logits.mean() + values.mean()`), and U Adam steps.
The floor is "rollout forwards + U forward+backward"; the ratio step / floor is what PPO's own
bookkeeping (log-probs, KL, per-token rewards, GAE, whitening, clipped losses, stats, gradient
clipping) and the optimizer add. Each round times the step and every component back to back, and
each row reports its median over rounds, so machine load shifts them alike.
CPU, one thread; the same fixed random batch (no EOS, full-length responses) every time.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from report import benchmark_parser, write_report


def build(args):
    from x_transformers import Decoder, TransformerWrapper

    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.rl.ppo import PPOConfig, PPOTrainer

    torch.manual_seed(0)
    model = TransformerWrapper(
        num_tokens=259,
        max_seq_len=args.query_len + args.response_len,
        attn_layers=Decoder(dim=args.dim, depth=args.depth, heads=args.heads),
    )
    config = PPOConfig(
        batch_size=args.batch, mini_batch_size=args.mini_batch, ppo_epochs=args.epochs, learning_rate=1e-5
    )
    trainer = PPOTrainer(model, config=config, tokenizer=ByteTokenizer())
    g = torch.Generator().manual_seed(0)
    queries = [torch.randint(0, 256, (args.query_len,), generator=g) for _ in range(args.batch)]
    responses = [torch.randint(0, 256, (args.response_len,), generator=g) for _ in range(args.batch)]
    scores = torch.rand(args.batch, generator=g).tolist()
    return trainer, queries, responses, scores


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def components(trainer, queries, responses, args):
    """Callables for the floor's parts, on the same rows the step sees."""
    ids = torch.cat([torch.stack(queries), torch.stack(responses)], dim=1)
    updates = args.epochs * math.ceil(args.batch / args.mini_batch)
    model, ref, opt = trainer.model, trainer.ref_model, trainer.optimizer

    @torch.no_grad()
    def rollout_forwards():
        model(ids)
        ref(ids)

    def forward_backwards():
        for u in range(updates):
            rows = ids[(u * args.mini_batch) % args.batch :][: args.mini_batch]
            opt.zero_grad(set_to_none=True)
            logits, values = model(rows)
            (logits.mean() + values.mean()).backward()

    def adam_steps():
        for _ in range(updates):
            opt.step()  # on the gradients the last forward_backwards left

    return updates, rollout_forwards, forward_backwards, adam_steps


def run(args) -> dict:
    trainer, queries, responses, scores = build(args)
    updates, rollout_forwards, forward_backwards, adam_steps = components(trainer, queries, responses, args)
    rows = {k: [] for k in ("step", "rollout", "fwd_bwd", "adam", "t_forward", "t_rewards", "t_optimize")}
    for round_ in range(args.warmup + args.rounds):
        stats: dict = {}
        step_time = timed(lambda stats=stats: stats.update(trainer.step(queries, responses, scores)))
        times = {
            "step": step_time,
            "rollout": timed(rollout_forwards),
            "fwd_bwd": timed(forward_backwards),
            "adam": timed(adam_steps),
            "t_forward": stats["time/ppo/forward_pass"],
            "t_rewards": stats["time/ppo/compute_rewards"],
            "t_optimize": stats["time/ppo/optimize_step"],
        }
        if round_ >= args.warmup:
            for k, v in times.items():
                rows[k].append(v)
    return {
        "updates": updates,
        "median": {k: statistics.median(v) for k, v in rows.items()},
        "spread": {k: (min(v), max(v)) for k, v in rows.items()},
        "params": sum(p.numel() for p in trainer.model.parameters()),
    }


def report(result) -> str:
    med, spread, u = result["median"], result["spread"], result["updates"]
    floor = med["rollout"] + med["fwd_bwd"]
    lines = ["| what | median ms | min-max ms | ratio to floor |", "|---|---|---|---|"]

    def row(name, key=None, value=None):
        v = med[key] if key else value
        lo_hi = f"{spread[key][0] * 1e3:.1f}-{spread[key][1] * 1e3:.1f}" if key else "-"
        lines.append(f"| {name} | {v * 1e3:.1f} | {lo_hi} | {v / floor:.3f}x |")

    row("rollout forwards (policy+value, reference; no grad)", "rollout")
    row(f"{u} x forward+backward (policy+value, one minibatch each)", "fwd_bwd")
    row("**floor** = the two rows above", value=floor)
    row(f"{u} x Adam step", "adam")
    row("floor + Adam steps", value=floor + med["adam"])
    row("**`PPOTrainer.step`**", "step")
    row("  of which `time/ppo/forward_pass`", "t_forward")
    row("  of which `time/ppo/compute_rewards` (KL, rewards, GAE, whitening)", "t_rewards")
    row("  of which `time/ppo/optimize_step` (all minibatch updates)", "t_optimize")
    lines.append(
        f"\nStep / floor: **{med['step'] / floor:.2f}x**; step / (floor + Adam): "
        f"**{med['step'] / (floor + med['adam']):.2f}x**. Parameters (policy + value head): "
        f"{result['params'] / 1e6:.2f} M; the reference copy adds the policy's again."
    )
    return "\n".join(lines)


def main():
    parser = benchmark_parser(__doc__)
    parser.add_argument("--batch", type=int, default=16, help="rollouts per PPO step")
    parser.add_argument("--mini-batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--query-len", type=int, default=32)
    parser.add_argument("--response-len", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = run(args)
    table = report(result)
    print(table)
    if args.write:
        write_report(
            args.write,
            "PPO step vs its own forward and backward passes",
            f"Model: x-transformers decoder dim {args.dim}, depth {args.depth}, heads {args.heads}, vocab 259, "
            f"with a value head; {args.batch} rollouts of {args.query_len} + {args.response_len} tokens, "
            f"minibatches of {args.mini_batch}, {args.epochs} PPO epochs ({result['updates']} updates per step); "
            f"CPU, 1 thread, torch {torch.__version__}. Medians over {args.rounds} rounds after {args.warmup} warm-up.",
            table,
        )


if __name__ == "__main__":
    main()
