"""Seconds per SPIN training step with the iteration's generation amortised, vs the same step without it.

    python bench/spin_iteration.py
    python bench/spin_iteration.py --write bench/results/spin_iteration.md

One real `train_spin_iteration` runs end to end (CPU, one thread): it samples one response per SFT
prompt once (one batched, KV-cached `sampling.sample` call), computes the reference log-probs once,
then runs the loop for `num_epochs` over the pairs. The sampler and the reference pass are wrapped
with timers, so the iteration's time W splits into generation G, reference R and the rest
(training steps, loop bookkeeping, files). Per step: with generation W / T, without it (W - G) / T.
Times are CPU seconds of this process (one torch thread): on a machine shared with other jobs,
wall time would also count waiting for a core. The wall clock of the whole iteration is shown too.
For context it also times the same generation without the KV cache (`use_cache=False`).
"""

from __future__ import annotations

import tempfile
import time

import torch
from report import benchmark_parser, write_report

HOW = """How: one real `train_spin_iteration` (sampling, reference pass, loop with its checkpoint files)
runs end to end; `sampling.sample` and `compute_ref_logprobs` are wrapped with timers. Times are CPU
seconds of the process (one torch thread), robust to other jobs on the machine; the wall clock is
shown beside. "Without generation" keeps everything else, the reference pass included; the last
row also counts the once-per-iteration reference pass as overhead. The ratio falls as epochs per
iteration grow (generation is paid once per iteration, training steps once per batch per epoch)."""


def timed(module, name, bucket):
    """Wrap module.name so each call's wall time is added to bucket[name]."""
    inner = getattr(module, name)

    def wrapper(*args, **kwargs):
        start = time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            bucket[name] = bucket.get(name, 0.0) + time.process_time() - start

    setattr(module, name, wrapper)
    return inner


def run(args) -> dict:
    from x_transformers import Decoder, TransformerWrapper

    from self_rewarding_lm_pytorch.core import sampling
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.trainers import dpo
    from self_rewarding_lm_pytorch.trainers.spin import encode_sft_items, train_spin_iteration
    from self_rewarding_lm_pytorch.training.accelerators import make_accelerator
    from self_rewarding_lm_pytorch.training.loop import TrainConfig

    torch.manual_seed(0)
    max_seq_len = args.prompt_len + args.response_len
    model = TransformerWrapper(
        num_tokens=259, max_seq_len=max_seq_len, attn_layers=Decoder(dim=args.dim, depth=args.depth, heads=args.heads)
    )
    g = torch.Generator().manual_seed(0)
    items = [
        (torch.randint(0, 256, (max_seq_len,), generator=g), torch.tensor(args.prompt_len)) for _ in range(args.items)
    ]
    config = TrainConfig(num_epochs=args.epochs, batch_size=args.batch, progress=False, log_every=10)
    bucket: dict[str, float] = {}
    real_sample = timed(sampling, "sample", bucket)
    timed(dpo, "compute_ref_logprobs", bucket)
    with tempfile.TemporaryDirectory() as tmp:
        start, wall_start = time.process_time(), time.perf_counter()
        result, generated = train_spin_iteration(
            model,
            items,
            tokenizer=ByteTokenizer(),
            accelerator=make_accelerator(),
            run_dir=tmp,
            config=config,
            max_seq_len=max_seq_len,
        )
        wall, real_wall = time.process_time() - start, time.perf_counter() - wall_start
    examples = encode_sft_items(items, ByteTokenizer(), max_seq_len=max_seq_len)
    prompts = [torch.tensor(p) for p, _ in examples]
    start = time.process_time()
    real_sample(
        model,
        prompts,
        max_new_tokens=args.response_len,
        temperature=0.7,
        top_p=0.9,
        eos_id=258,
        pad_id=256,
        generator=torch.Generator().manual_seed(0),
        use_cache=False,
    )
    no_cache = time.process_time() - start
    return {
        "wall": wall,
        "gen": bucket["sample"],
        "ref": bucket["compute_ref_logprobs"],
        "steps": result.steps,
        "gen_tokens": sum(len(x) for x in generated),
        "gen_no_cache": no_cache,
        "real_wall": real_wall,
    }


def report(args, r) -> str:
    w, g, ref, t = r["wall"], r["gen"], r["ref"], r["steps"]
    lines = [
        "| quantity | value |",
        "|---|---|",
        f"| SFT prompts sampled (once, one batched call) | {args.items} ({r['gen_tokens']} tokens generated) |",
        f"| training steps in the iteration | {t} ({args.epochs} epochs, batch {args.batch}) |",
        f"| iteration CPU time W (wall clock: {r['real_wall']:.2f} s) | {w:.2f} s |",
        f"| generation G (KV-cached) | {g:.2f} s |",
        f"| same generation without KV cache | {r['gen_no_cache']:.2f} s ({r['gen_no_cache'] / g:.1f}x) |",
        f"| reference log-probs R (once) | {ref:.2f} s |",
        f"| s/step with amortised generation, W / T | {w / t:.3f} |",
        f"| s/step without generation, (W - G) / T | {(w - g) / t:.3f} |",
        f"| **ratio** | **{w / (w - g):.3f}x** |",
        f"| ratio counting the reference pass as overhead too, W / (W - G - R) | {w / (w - g - ref):.3f}x |",
    ]
    return "\n".join(lines)


def main():
    parser = benchmark_parser(__doc__)
    parser.add_argument("--items", type=int, default=64, help="SFT items (prompts sampled per iteration)")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--response-len", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = report(args, run(args))
    print(table)
    if args.write:
        write_report(
            args.write,
            "SPIN: generation once per iteration, amortised over the training steps",
            f"Model: x-transformers decoder dim {args.dim}, depth {args.depth}, heads {args.heads}, vocab 259; "
            f"prompts of {args.prompt_len} tokens, up to {args.response_len} generated (temperature 0.7, "
            f"top-p 0.9); CPU, 1 thread, torch {torch.__version__}.",
            f"{table}\n\n{HOW}",
        )


if __name__ == "__main__":
    main()
