"""A pipeline (SFT, then external-reward DPO) run by one or two processes; writes the weights it
ends with to OUT/weights-rank{R}.safetensors (outside the run folder, which only rank 0 may write).

    python two_process_pipeline.py OUT [SEED]          # one process; SEED "none" draws one
    accelerate launch --multi_gpu --num_processes 2 two_process_pipeline.py OUT [SEED]
"""

import sys
from pathlib import Path

import torch
from accelerate import PartialState
from safetensors.torch import save_file
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import ByteTokenizer, ExternalRewardDPOConfig, SelfRewardingTrainer, SFTConfig

PROMPTS = ["ab", "cd", "ef", "gh", "ij", "kl"]


def count_a(prompts, responses):
    return [r.count("a") - 0.01 * len(r) for r in responses]


def main(out: Path, seed: int | None):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=259, max_seq_len=48, attn_layers=Decoder(dim=16, depth=1, heads=2))
    stages = [
        SFTConfig([{"prompt": p, "response": p.upper()} for p in PROMPTS], num_train_steps=3, batch_size=2),
        # chunks of 2 prompts: 3 chunks, so the two processes each generate a share
        ExternalRewardDPOConfig(
            count_a, PROMPTS, 6, num_train_steps=4, batch_size=2, max_new_tokens=6, generation_chunk_size=2
        ),
    ]
    trainer = SelfRewardingTrainer(
        model,
        stages,
        tokenizer=ByteTokenizer(),
        checkpoints_folder=out / "run",
        seed=seed,
        accelerate_kwargs=dict(cpu=True),
        progress=False,
    )
    trainer()
    state = PartialState()
    rank = state.process_index
    if state.is_main_process:  # what the pairs were made from, to compare with one process's
        pairs = (out / "run" / "02-external-reward-dpo" / "pairs.jsonl").read_text()
        (out / "pairs.jsonl").write_text(pairs)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"weights-rank{rank}.safetensors"))
    (out / f"seed-rank{rank}.txt").write_text(str(trainer.run_seed))


if __name__ == "__main__":
    seed = sys.argv[2] if len(sys.argv) > 2 else "7"
    main(Path(sys.argv[1]), None if seed == "none" else int(seed))
