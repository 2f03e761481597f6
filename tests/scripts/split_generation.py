"""Generation split across processes: best-of-N synthetic data scored by a reward model, and SPIN's
synthetic responses. Launched by tests/test_split_generation.py under 2 processes, and called
in-process for the one-process baseline.

Usage: python split_generation.py OUT_DIR. Writes OUT_DIR/best_of_n.jsonl (then truncates it mid-run,
as a crash would, and resumes it into OUT_DIR/best_of_n.jsonl again; the first complete file is kept as
OUT_DIR/best_of_n-first.jsonl), OUT_DIR/spin-rank{r}.json (the responses every process returns) and
OUT_DIR/stats-rank{r}.json.
"""

import json
import shutil
import sys
from pathlib import Path

import torch

PROMPTS = [f"prompt {i}: " + "x" * (i % 4) for i in range(7)]  # 4 chunks of 2: uneven over 2 processes


def run(out_dir: Path, accelerate_kwargs: dict):
    from x_transformers import Decoder, TransformerWrapper

    from self_rewarding_lm_pytorch.core.distributed import Shard
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.generation.best_of_n import GenerationConfig
    from self_rewarding_lm_pytorch.generation.synthetic import generate_synthetic_dataset
    from self_rewarding_lm_pytorch.trainers.reward_model import RewardModel
    from self_rewarding_lm_pytorch.trainers.spin import generate_synthetic
    from self_rewarding_lm_pytorch.training.accelerators import make_accelerator

    accelerator = make_accelerator(accelerate_kwargs)
    rank, tok = accelerator.process_index, ByteTokenizer()
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=259, max_seq_len=48, attn_layers=Decoder(dim=16, depth=1, heads=2))
    torch.manual_seed(1)
    scorer = RewardModel(num_tokens=259, max_seq_len=48, dim=16, depth=1, heads=2)
    path = out_dir / "best_of_n.jsonl"
    kwargs = dict(
        out=path,
        tokenizer=tok,
        n=3,
        keep=2,
        generation_config=GenerationConfig(max_new_tokens=6),
        prompts_per_batch=2,
        progress=False,
        accelerator=accelerator,
    )
    stats = [generate_synthetic_dataset(model, PROMPTS, scorer, **kwargs)]
    accelerator.wait_for_everyone()
    if rank == 0:  # a crash after 3 records and half of the 4th
        shutil.copy(path, out_dir / "best_of_n-first.jsonl")
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[:3]) + lines[3][:10])
    accelerator.wait_for_everyone()
    stats.append(generate_synthetic_dataset(model, PROMPTS, scorer, **kwargs))
    (out_dir / f"stats-rank{rank}.json").write_text(json.dumps(stats))

    examples = [(tok.encode(p), tok.encode("y")) for p in PROMPTS[:5]]
    spin = generate_synthetic(model, examples, tokenizer=tok, max_seq_len=24, seed=3, shard=Shard.of(accelerator))
    (out_dir / f"spin-rank{rank}.json").write_text(json.dumps(spin))


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(Path(sys.argv[1]), dict(cpu=True))
