"""Time and memory of one DPO step against the floor of a plain forward+backward on the same rows.

    python bench/dpo_step.py                      # timing + memory, prints a markdown table
    python bench/dpo_step.py --write bench/results/dpo_step.md

What is timed (CPU, one thread, the same pre-collated batch of 2B right-padded rows every time):
- floor:        logits = policy(ids); logits.mean().backward()   (a forward+backward and nothing else)
- floor (CE):   the same with a plain next-token cross-entropy over all positions, for context
- precomputed:  DPOTask.step (one forward over chosen+rejected, log-probs, dpo_loss) + backward,
                reference log-probs read from the batch
- live:         the same with a frozen reference copy run (no grad) inside every step
The optimizer step is left out of every row: it is the loop's, identical across modes. Modes are
interleaved round by round and each reports its median, so machine load shifts them alike.

Time: CPU time of this process (one torch thread), median over rounds; wall-time ratios beside it.
Memory: each mode runs in a fresh subprocess; RSS is read after the setup all modes share (imports,
policy, batch), the peak-RSS mark is reset there, and the peak (VmHWM) is read after the mode's own
setup and steps. The difference is what the mode adds: activations kept for backward, gradients,
and for "live" the reference copy and its forward.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from report import benchmark_parser, write_report

MODES = ("floor", "floor_ce", "precomputed", "live")
HOW = """How: every mode runs on the same pre-collated batch, without the optimizer step (the loop's, the
same for all). Modes are interleaved round by round (1 warm-up round, then `--rounds` rounds of
`--steps` steps) and each reports its median CPU time per step (`time.process_time`, one torch
thread): on a machine shared with other jobs wall time also counts waiting for a core, so the wall
ratio is shown only for reference. Memory: each mode runs in a fresh subprocess; after the setup all
modes share (imports, policy, batch) the peak-RSS mark is reset (`/proc/self/clear_refs`), and the
peak (`VmHWM`) after the mode's own setup and steps, minus the RSS at the reset, is what the mode
adds (activations kept for backward, gradients, and for "live" the reference copy and its forward).
`ru_maxrss` is not used: Linux carries it over from the parent process across exec."""


def build(args):
    from x_transformers import Decoder, TransformerWrapper

    from self_rewarding_lm_pytorch.trainers.dpo import DPOTask, collate_pairs

    torch.manual_seed(0)
    model = TransformerWrapper(
        num_tokens=259,
        max_seq_len=args.prompt_len + args.response_len,
        attn_layers=Decoder(dim=args.dim, depth=args.depth, heads=args.heads),
    )
    g = torch.Generator().manual_seed(0)
    pairs = []
    for _ in range(args.batch):
        prompt = torch.randint(0, 256, (args.prompt_len,), generator=g).tolist()
        chosen = torch.randint(0, 256, (args.response_len,), generator=g).tolist()
        rejected = torch.randint(0, 256, (args.response_len,), generator=g).tolist()
        pairs.append(
            {
                "chosen": (prompt + chosen, args.prompt_len),
                "rejected": (prompt + rejected, args.prompt_len),
                "ref": (-500.0, -510.0),
            }
        )
    batch = collate_pairs(pairs, pad_id=256)
    return model, pairs, batch, DPOTask


def make_step(mode, model, pairs, batch, DPOTask):
    ids = batch["input_ids"]
    if mode == "floor":
        return lambda: model(ids).mean().backward()
    if mode == "floor_ce":
        return lambda: F.cross_entropy(model(ids)[:, :-1].transpose(1, 2), ids[:, 1:]).backward()
    if mode == "precomputed":
        task = DPOTask(pad_id=256)
        return lambda: task.step(model, batch)[0].backward()
    if mode == "live":
        ref = copy.deepcopy(model).eval().requires_grad_(False)
        task = DPOTask(pad_id=256, ref_model=ref)
        live_batch = {k: v for k, v in batch.items() if not k.startswith("ref_")}
        return lambda: task.step(model, live_batch)[0].backward()
    raise ValueError(mode)


def time_modes(args) -> dict:
    """Per mode, the median over rounds of CPU seconds (process_time) and wall seconds per step.

    CPU time is the primary figure: on a machine shared with other jobs, wall time also counts the
    time this process waited for a core; with one torch thread the CPU time is the work done.
    """
    model, pairs, batch, DPOTask = build(args)
    steps = {m: make_step(m, model, pairs, batch, DPOTask) for m in MODES}
    cpu, wall = {m: [] for m in MODES}, {m: [] for m in MODES}
    for round_ in range(args.warmup + args.rounds):
        for mode, step in steps.items():
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(args.steps):
                model.zero_grad(set_to_none=True)
                step()
            if round_ >= args.warmup:
                cpu[mode].append((time.process_time() - c0) / args.steps)
                wall[mode].append((time.perf_counter() - w0) / args.steps)
    task = DPOTask(pad_id=256)
    c0 = time.process_time()
    for _ in range(20):
        task.collate(pairs)
    collate = (time.process_time() - c0) / 20
    return {
        "cpu": {m: statistics.median(t) for m, t in cpu.items()},
        "cpu_spread": {m: (min(t), max(t)) for m, t in cpu.items()},
        "wall": {m: statistics.median(t) for m, t in wall.items()},
        "collate_s": collate,
    }


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(args):
    """Run one mode in this (fresh) process; print RSS figures (KiB) as JSON.

    Not ru_maxrss: Linux carries it over from the parent across exec, so a child of the big timing
    process would inherit its peak. VmHWM belongs to this process's address space; writing "5" to
    clear_refs resets it to the current RSS, so the peak below is reached by the mode alone.
    """
    torch.set_num_threads(1)
    model, pairs, batch, DPOTask = build(args)
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kib("VmRSS")
    step = make_step(args.memory_mode, model, pairs, batch, DPOTask)
    for _ in range(args.steps):
        model.zero_grad(set_to_none=True)
        step()
    print(json.dumps({"base_kib": base, "peak_kib": _status_kib("VmHWM")}))


def memory_modes(args) -> dict:
    out = {}
    for mode in MODES:
        cmd = [sys.executable, __file__, "--memory-mode", mode, *shape_args(args)]
        result = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[mode] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def shape_args(args) -> list[str]:
    return [
        f"--{k.replace('_', '-')}={getattr(args, k)}"
        for k in ("dim", "depth", "heads", "batch", "prompt_len", "response_len", "steps")
    ]


def report(args, timing, memory, params) -> str:
    cpu, wall = timing["cpu"], timing["wall"]
    names = {
        "floor": "floor: forward + backward of `logits.mean()`",
        "floor_ce": "floor with a plain LM cross-entropy",
        "precomputed": "DPO step, precomputed reference",
        "live": "DPO step, live reference copy",
    }
    lines = [
        "| step | CPU ms (median) | CPU min-max ms | **ratio to floor (CPU medians)** | ratio (CPU minima) "
        "| ratio (wall medians) | peak RSS added (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    floor_min = timing["cpu_spread"]["floor"][0]
    for m in MODES:
        lo, hi = timing["cpu_spread"][m]
        added = (memory[m]["peak_kib"] - memory[m]["base_kib"]) / 1024
        lines.append(
            f"| {names[m]} | {cpu[m] * 1e3:.1f} | {lo * 1e3:.1f}-{hi * 1e3:.1f} | "
            f"**{cpu[m] / cpu['floor']:.3f}x** | {lo / floor_min:.3f}x | {wall[m] / wall['floor']:.3f}x | {added:.1f} |"
        )
    lines.append(
        f"\nCollating the batch (the loop does it once per step, outside `step`): "
        f"{timing['collate_s'] * 1e3:.2f} ms CPU."
    )
    lines.append(
        f"Policy parameters: {params / 1e6:.2f} M ({params * 4 / 2**20:.1f} MiB fp32); the live mode's "
        f"reference copy adds the same again."
    )
    return "\n".join(lines)


def main():
    parser = benchmark_parser(__doc__)
    parser.add_argument("--batch", type=int, default=8, help="pairs per step (2x rows)")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--response-len", type=int, default=96)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--memory-mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_mode:
        return memory_child(args)
    torch.set_num_threads(1)
    memory = memory_modes(args)  # first, while this process is still small
    timing = time_modes(args)
    model = build(args)[0]
    table = report(args, timing, memory, sum(p.numel() for p in model.parameters()))
    print(table)
    if args.write:
        write_report(
            args.write,
            "DPO step vs the forward+backward floor",
            f"Model: x-transformers decoder dim {args.dim}, depth {args.depth}, heads {args.heads}, vocab 259; "
            f"{args.batch} pairs = {2 * args.batch} rows of {args.prompt_len + args.response_len} tokens; "
            f"CPU, 1 thread, torch {torch.__version__}.",
            f"{table}\n\n{HOW}",
        )


if __name__ == "__main__":
    main()
