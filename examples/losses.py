"""Log-probs over response tokens only, and the DPO loss on per-sequence log-probs.

python examples/losses.py
"""

import torch

from self_rewarding_lm_pytorch import dpo_loss, sequence_logprobs

logits = torch.randn(2, 5, 259)  # (b, n, v)
ids = torch.randint(0, 256, (2, 5))  # [p0 p1 r0 r1 PAD]
is_response = torch.tensor([[0, 0, 1, 1, 0]] * 2, dtype=torch.bool)
logp = sequence_logprobs(logits, ids, is_response)  # (b,) sum over r0, r1 (DPO paper)
mean_logp = sequence_logprobs(logits, ids, is_response, reduction="mean")

losses, chosen_rewards, rejected_rewards = dpo_loss(
    policy_chosen=torch.tensor([-10.0]),
    policy_rejected=torch.tensor([-12.0]),
    ref_chosen=torch.tensor([-11.0]),
    ref_rejected=torch.tensor([-11.0]),
    beta=0.1,
)
loss = losses.mean()  # losses are per example; you reduce
print(f"dpo loss {loss.item():.4f}")  # -log sigmoid(0.1 * 2) = 0.5981
