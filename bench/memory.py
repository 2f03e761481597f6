"""Memory per process, DDP vs FSDP (`fsdp=True`), 2 CPU processes (gloo), a ~50M-parameter model.

    python bench/memory.py --write bench/results/memory.md
    python bench/memory.py --dim 128 --depth 2 --steps 2      # a quick smoke run

The parent launches the same training twice under `accelerate launch --multi_gpu --num_processes 2`
(gloo on CPU): once data-parallel (DDP through accelerate), once sharded. Each process reports, at
the start of its last training step (before the forward gathers anything),
- the bytes it holds in parameters and AdamW state (counted from the tensors themselves: its local
  shards under FSDP) and its resident memory then (which adds the interpreter, torch, the data), and
- its peak resident memory over the whole run (ru_maxrss), which also counts the full model every
  process builds before training starts and the gathers at the end.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

MIB = 2**20


def _bytes(tensors) -> int:
    total = 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(out: Path, fsdp: bool, dim: int, depth: int, steps: int):
    """One process of one launch: train `steps` steps, record what it holds, write report-rank{r}.json."""
    from x_transformers import Decoder, TransformerWrapper

    from self_rewarding_lm_pytorch.trainers.sft import SFTTask, train_sft
    from self_rewarding_lm_pytorch.training import loop
    from self_rewarding_lm_pytorch.training.accelerators import make_accelerator
    from self_rewarding_lm_pytorch.training.loop import TrainConfig

    torch.set_num_threads(1)
    accelerator = make_accelerator(dict(cpu=True))
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=259, max_seq_len=64, attn_layers=Decoder(dim=dim, depth=depth, heads=8))
    held: dict = {}
    inner, build, optimizers = SFTTask.step, loop.build_optimizer, []

    def build_and_keep(*args):
        optimizer, params = build(*args)
        optimizers.append(optimizer)
        return optimizer, params

    def step(self, module, batch):
        # Before the forward: FSDP has not gathered any block yet. Adam's state exists from step 2 on.
        states = [v for s in optimizers[0].state.values() for v in s.values()]
        held.update(
            rss_in_step=_current_rss(),
            parameters=_bytes(module.parameters()),
            adam_state=_bytes(t for t in states if isinstance(t, torch.Tensor) and t.numel() > 1),
        )
        return inner(self, module, batch)

    SFTTask.step, loop.build_optimizer = step, build_and_keep
    data = [{"prompt": "q" * 8, "response": "a" * 48} for _ in range(8)]
    config = TrainConfig(num_train_steps=steps, batch_size=2, progress=False, fsdp=fsdp)
    train_sft(model, data, accelerator=accelerator, run_dir=None, config=config)
    report = {
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        **held,
    }
    (out / f"report-rank{accelerator.process_index}.json").write_text(json.dumps(report))


def launch(out: Path, fsdp: bool, args) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu", "--num_processes"]
    cmd += ["2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--main_process_port", str(port), __file__, "--worker", str(out), str(int(fsdp))]
    cmd += [str(args.dim), str(args.depth), str(args.steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return [json.loads((out / f"report-rank{r}.json").read_text()) for r in (0, 1)]


def main():
    from report import benchmark_parser, write_report

    parser = benchmark_parser(__doc__)
    parser.set_defaults(dim=640, depth=10)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, fsdp in (("DDP", False), ("FSDP", True)):
            out = Path(tmp) / name
            out.mkdir()
            rows.append((name, launch(out, fsdp, args)))
    n = rows[0][1][0]["num_parameters"]
    full_fp32 = n * 4
    lines = [
        "| mode | process | parameters held | AdamW state held | RSS in the last step | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for name, reports in rows:
        for r, rep in enumerate(reports):
            lines.append(
                f"| {name} | {r} | {rep['parameters'] / MIB:.1f} MiB ({rep['parameters'] / full_fp32:.0%}) "
                f"| {rep['adam_state'] / MIB:.1f} MiB ({rep['adam_state'] / (2 * full_fp32):.0%}) "
                f"| {rep['rss_in_step'] / MIB:.0f} MiB | {rep['peak_rss'] / MIB:.0f} MiB |"
            )
    body = "\n".join(lines)
    setup = (
        f"Model: TransformerWrapper(num_tokens=259, max_seq_len=64, Decoder(dim={args.dim}, depth={args.depth}, "
        f"heads=8)), {n / 1e6:.1f}M parameters ({full_fp32 / MIB:.0f} MiB in fp32); SFT, batch 2 (global), "
        f"{args.steps} steps, AdamW; 2 processes, gloo on CPU. Percentages: of the full model's parameters, "
        "and of AdamW's two moments for the full model."
    )
    print(setup + "\n\n" + body)
    if args.write:
        write_report(args.write, "Memory per process: DDP vs FSDP", setup, body)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        out, fsdp, dim, depth, steps = sys.argv[2:7]
        worker(Path(out), fsdp == "1", int(dim), int(depth), int(steps))
    else:
        main()
