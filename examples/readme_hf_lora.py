"""Fine-tune a Hugging Face causal LM with LoRA: SFT, then self-rewarding DPO, then SPIN.

    python examples/readme_hf_lora.py path/to/model     # any AutoModelForCausalLM save_pretrained folder

Every stage folder in runs/hf-lora/ gets model/: the LoRA adapter and the tokenizer, readable with
PeftModel.from_pretrained(base_model, "runs/hf-lora/03-spin/model").
"""

import sys

from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from self_rewarding_lm_pytorch import (
    RewardConfig,
    SelfPlayConfig,
    SelfRewardDPOConfig,
    SelfRewardingTrainer,
    SFTConfig,
)


def main(model_path: str, run_folder: str = "runs/hf-lora"):
    model = AutoModelForCausalLM.from_pretrained(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)  # its chat template renders prompts, if it has one

    sft_data = [
        {"prompt": "What is 2 + 2?", "response": "4"},
        {"prompt": "Name a primary colour.", "response": "Red"},
        {"prompt": "Say hello.", "response": "Hello!"},
        {"prompt": "What is 3 + 5?", "response": "8"},
    ]
    prompts = ["What is 1 + 6?", "Name a fruit.", "Say goodbye.", "What is 9 + 9?"]
    judge = RewardConfig(  # a short judge prompt; the default is the paper's long additive rubric
        prompt_template="Rate the answer from 1 to 5.\nQuestion: {{ prompt }}\nAnswer: {{ response }}\n",
        reward_regex_template="Score: {{ reward }}",
    )
    trainer = SelfRewardingTrainer(
        model,
        finetune_configs=[
            SFTConfig(sft_data, num_train_steps=4, batch_size=2, learning_rate=1e-3),
            SelfRewardDPOConfig(prompts, 4, num_train_steps=2, batch_size=2, max_new_tokens=16, judge_max_new_tokens=8),
            SelfPlayConfig(sft_data, num_train_steps=2, batch_size=2, max_seq_len=64),
        ],
        tokenizer=tokenizer,
        self_reward_prompt_config=judge,
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
        checkpoints_folder=run_folder,
        accelerate_kwargs=dict(cpu=True),  # or dict(mixed_precision="bf16")
    )
    trainer()


if __name__ == "__main__":
    main(*sys.argv[1:])
