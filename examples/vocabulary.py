"""The vocabulary (docs/guides/vocabulary.md): SamplingConfig, JudgeSettings, reward sources.

python examples/vocabulary.py
"""

import torch
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import (
    ExternalRewardDPOConfig,
    RewardModel,
    SamplingConfig,
    SamplingConflictError,
    SelfRewardDPOConfig,
    sample,
    scoring_fn,
)

torch.manual_seed(0)
prompts = ["2+2=", "3+5="]

# one SamplingConfig, the same call as the loose keywords
model = TransformerWrapper(num_tokens=259, max_seq_len=64, attn_layers=Decoder(dim=16, depth=1, heads=2))
greedy = SamplingConfig(temperature=0.0, max_new_tokens=4)
ids = [torch.tensor(list(p.encode())) for p in prompts]
assert torch.equal(
    sample(model, ids, sampling=greedy).response_ids, sample(model, ids, temperature=0.0, max_new_tokens=4).response_ids
)

# a stage: the seed names, or sampling= / judge_sampling=
stage = SelfRewardDPOConfig(
    prompts,
    64,
    sampling=SamplingConfig(temperature=1.0, top_p=0.95),  # the candidates
    judge_sampling=SamplingConfig(temperature=0.0),  # a greedy judge
    num_sampled_reward_responses=1,
)
print(stage.sampling_config)
print(stage.judge_settings)
assert SelfRewardDPOConfig(prompts, 64, gen_temperature=1.0, gen_top_p=0.95).sampling_config == stage.sampling_config
try:
    SelfRewardDPOConfig(prompts, 64, sampling=SamplingConfig(temperature=1.0), gen_temperature=0.5)
except SamplingConflictError as e:
    print("conflict:", e)

# reward sources: a callable or a RewardModel (scored through its own tokenizer)
rm = RewardModel(num_tokens=259, max_seq_len=64, dim=16, depth=1, heads=2)
print(scoring_fn(rm)(prompts, ["4", "8"]))
print(scoring_fn(lambda ps, rs: [float(len(r)) for r in rs])(prompts, ["4", "eight"]))
ExternalRewardDPOConfig(rm, prompts, 64)  # reward_model=: the seed's name for the reward source
