"""One PPO step per process with different scores per rank; launched by tests/test_ppo_two_process.py
under `accelerate launch` (2 CPU processes, gloo). Usage: python two_process_ppo_stats.py OUT_DIR.

Each process writes OUT_DIR/rank{r}.json: its raw scores, its rollouts' summed KL (from the rollout
forward, before the step), and after the step the running score moments, the reported KL and the KL
coefficient, so the test can compare both ranks with the statistics of the union of their rollouts."""

import json
import math
import sys
from pathlib import Path

import torch
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch.core.losses import kl_penalty
from self_rewarding_lm_pytorch.core.tokenizer import CallableTokenizer
from self_rewarding_lm_pytorch.rl.ppo import PPOConfig, PPOTrainer
from self_rewarding_lm_pytorch.rl.value_head import assemble_rollouts
from self_rewarding_lm_pytorch.training.accelerators import make_accelerator

torch.set_num_threads(1)
SCORES = {0: [1.0, 2.0, math.nan, 4.0], 1: [10.0, math.nan, math.nan, math.nan]}


def toy(seed):
    torch.manual_seed(seed)
    return TransformerWrapper(num_tokens=6, max_seq_len=16, attn_layers=Decoder(dim=16, depth=1, heads=2))


accelerator = make_accelerator(dict(cpu=True))
rank = accelerator.process_index
tokenizer = CallableTokenizer(lambda s: [int(c) for c in s], lambda ids: "", pad_id=0, eos_id=None)
config = PPOConfig(batch_size=4, mini_batch_size=4, ppo_epochs=1, reward_norm=True, adap_kl_ctrl=True)
trainer = PPOTrainer(toy(0), ref_model=toy(1), config=config, tokenizer=tokenizer, accelerator=accelerator)
queries = [torch.tensor([1 + (i + rank) % 2]) for i in range(4)]
responses = [torch.tensor([(3 * i + rank) % 6, (i + 2 * rank) % 6, 5]) for i in range(4)]
input_ids, action_mask = assemble_rollouts(queries, responses, pad_id=0)
old, _, ref = trainer._rollout_forward(input_ids)
seq_kl = (kl_penalty(old, ref, "k1") * action_mask).sum(-1).tolist()
stats = trainer.step(queries, responses, SCORES[rank])
report = {
    "world": accelerator.num_processes,
    "scores": SCORES[rank],
    "seq_kl": seq_kl,
    "moments": trainer.score_moments.state_dict(),
    "kl": stats["objective/kl"],
    "kl_coef": trainer.kl_ctl.value,
}
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
(out / f"rank{rank}.json").write_text(json.dumps(report))
