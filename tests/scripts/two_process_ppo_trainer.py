"""PPOTrainer.generate/step by one process on 5 queries, or by two holding 3 and 2 of them (unequal
shares: the last minibatch of 4 global rows holds 1 row, so one process runs a masked-out placeholder).
Writes OUT/rank{R}.json (its responses and stats per step) and OUT/weights-rank{R}.safetensors.

    python two_process_ppo_trainer.py OUT
    accelerate launch --multi_gpu --num_processes 2 two_process_ppo_trainer.py OUT
"""

import json
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch.core.tokenizer import CallableTokenizer
from self_rewarding_lm_pytorch.rl.ppo import PPOConfig, PPOTrainer
from self_rewarding_lm_pytorch.training.accelerators import make_accelerator

QUERIES = [[1], [2, 3], [3], [4, 5], [5]]
SHARES = {1: [range(5)], 2: [range(0, 3), range(3, 5)]}


def score(row: int, response: list[int]) -> float:
    return math.nan if row == 1 else float(sum(t == 2 for t in response)) - 0.1 * len(response)


def main(out: Path):
    torch.set_num_threads(1)
    accelerator = make_accelerator(dict(cpu=True))
    world, rank = accelerator.num_processes, accelerator.process_index
    mine = SHARES[world][rank]
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=8, max_seq_len=32, attn_layers=Decoder(dim=16, depth=1, heads=2))
    tokenizer = CallableTokenizer(lambda s: [int(c) for c in s], lambda ids: "", pad_id=0, eos_id=7)
    config = PPOConfig(batch_size=len(mine), mini_batch_size=4 // world, ppo_epochs=2, learning_rate=1e-2, seed=5)
    trainer = PPOTrainer(model, config=config, tokenizer=tokenizer, accelerator=accelerator)
    queries = [torch.tensor(QUERIES[i]) for i in mine]
    steps = []
    for _ in range(3):
        responses = trainer.generate(queries, max_new_tokens=5)
        scores = [score(i, r.tolist()) for i, r in zip(mine, responses, strict=True)]
        stats = trainer.step(queries, responses, scores)
        steps.append({"responses": [r.tolist() for r in responses], "stats": stats})
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(steps))
    weights = {k: v.detach().contiguous() for k, v in trainer.policy.state_dict().items()}
    save_file(weights, str(out / f"weights-rank{rank}.safetensors"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
