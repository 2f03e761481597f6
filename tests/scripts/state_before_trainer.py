"""A launched script that creates accelerate's process state itself before the pipeline, as user scripts do.

Usage: python state_before_trainer.py RUN_DIR {plain|cpu}. `plain` calls `PartialState()`, which on a
machine without GPUs makes every launched process a single non-distributed one; `cpu` calls
`PartialState(cpu=True)`, the state the pipeline's `accelerate_kwargs=dict(cpu=True)` asks for.
"""

import sys

import torch
from accelerate import PartialState


def main(run_dir: str, how: str) -> None:
    state = PartialState(cpu=True) if how == "cpu" else PartialState()
    from x_transformers import Decoder, TransformerWrapper

    from self_rewarding_lm_pytorch import ByteTokenizer, SelfRewardingTrainer, SFTConfig
    from self_rewarding_lm_pytorch.core.files import write_jsonl

    data = f"{run_dir}-sft.jsonl"
    if state.is_main_process:
        write_jsonl(data, [{"prompt": "ab", "response": "cd"}] * 8)
    state.wait_for_everyone()
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=259, max_seq_len=32, attn_layers=Decoder(dim=16, depth=1, heads=2))
    stages = [SFTConfig(data, num_train_steps=2, batch_size=2)]
    trainer = SelfRewardingTrainer(
        model,
        stages,
        tokenizer=ByteTokenizer(),
        checkpoints_folder=run_dir,
        accelerate_kwargs=dict(cpu=True),
        progress=False,
    )
    trainer()
    print(f"process {state.process_index} of {state.num_processes} done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
