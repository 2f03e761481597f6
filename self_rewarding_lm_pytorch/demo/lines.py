"""The demo's three lines as pipelines of stage configs, all from the same M1:

- `self-reward` (the paper): SFT -> prompt self-generation -> two DPO iterations where the model
  judges its own candidates (LLM-as-a-judge: the score it writes is the reward);
- `reference-judge`: the same judge and iterations, but the verdict is the comparison of the sum the
  judge worked out with the candidate (`RewardConfig.answer_regex`), not the score the judge wrote after
  comparing them itself (on the same prompts, from the same M1);
- `consistency`: two DPO iterations rewarded by self-consistency (the share of the model's own
  samples that reach the same answer), on the same self-generated prompts;
- `oracle`: the same two iterations rewarded by the verifier (ground truth: the ceiling);
- `control`: no pairs at all, only the seed data replayed for as many steps as the oracle's iterations
  took: what further training alone does (flat when M1 has converged on its seed data).

Every DPO iteration replays the seed SFT data (answers, judge examples, prompt writing) beside its pairs
(`judge_examples`, `replay_per_pair` examples per pair): the model keeps its seed skills, the judge
among them, and the pairs' new answers are learned on top of what it knew, not instead of it.
No line uses ground truth after the seed data except the oracle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from self_rewarding_lm_pytorch.demo.task import DEMO_FEW_SHOT_TEMPLATE, consistency_reward, is_addition_prompt

__all__ = ["consistency_stages", "control_stages", "oracle_stages", "reference_judge_stages", "self_reward_stages"]


def _replay(s, data_dir: Path) -> dict[str, Any]:
    if not s.replay_per_pair:
        return {}
    return dict(
        judge_examples=str(data_dir / "sft.jsonl"),
        judge_weight=s.replay_weight,
        judge_examples_per_pair=s.replay_per_pair,
    )


def _dpo_common(s, data_dir: Path) -> dict[str, Any]:
    return dict(
        num_epochs=s.dpo_epochs,
        num_train_steps=s.dpo_max_steps,
        batch_size=s.dpo_batch_size,
        learning_rate=s.dpo_learning_rate,
        lr_schedule=s.dpo_lr_schedule,
        warmup_steps=s.dpo_warmup_steps,
        dpo_beta=s.dpo_beta,
        dpo_loss_type=s.dpo_loss_type,
        sft_weight=s.dpo_sft_weight,
        max_new_tokens=s.max_new_tokens,
        log_every=5,
        max_passes=2,
        **_replay(s, data_dir),
    )


def self_reward_stages(s, data_dir: Path) -> list:
    from self_rewarding_lm_pytorch.stages.prompt_generation import PREVIOUS_PROMPTS, PromptGenerationConfig
    from self_rewarding_lm_pytorch.stages.sft import SFTConfig

    sft = SFTConfig(
        str(data_dir / "sft.jsonl"),
        num_train_steps=s.sft_steps,
        batch_size=s.sft_batch_size,
        learning_rate=s.sft_learning_rate,
        warmup_steps=min(100, s.sft_steps // 10),
        lr_schedule="cosine",
        log_every=50,
    )
    prompts = PromptGenerationConfig(
        str(data_dir / "seed_prompts.jsonl"),
        s.num_self_reward_prompts,
        num_shots=s.prompt_shots,
        template=DEMO_FEW_SHOT_TEMPLATE,
        temperature=1.0,
        top_p=None,
        max_new_tokens=8,
        stop=None,  # a prompt ends with EOS
        batch_size=128,
        parse_check=is_addition_prompt,
        # 2-digit prompts share many character 3-grams by chance: drop only copies (overlap 1.0)
        max_overlap=1.0,
        ngram_size=3,
        ngram_unit="char",
        avoid=str(data_dir / "heldout.jsonl"),  # decontamination: never train on a held-out prompt
    )
    return [sft, prompts, *_self_reward_iterations(s, PREVIOUS_PROMPTS, data_dir)]


def reference_judge_stages(s, prompts_file: Path, data_dir: Path) -> list:
    """The self-reward iterations on the prompts M1 wrote (run them with the reference-guided judge)."""
    return _self_reward_iterations(s, str(prompts_file), data_dir)


def _self_reward_iterations(s, prompts, data_dir: Path) -> list:
    from self_rewarding_lm_pytorch.stages.self_reward_dpo import SelfRewardDPOConfig

    return [
        SelfRewardDPOConfig(
            prompts,
            n,
            num_candidate_responses=s.num_candidates,
            gen_temperature=s.self_reward_temperature,
            gen_top_p=None,
            num_sampled_reward_responses=s.num_sampled_reward_responses,
            judge_max_new_tokens=s.judge_max_new_tokens,
            eval_temperature=s.judge_temperature,
            eval_top_p=0.9 if s.judge_temperature > 0 else None,
            **_dpo_common(s, data_dir),
        )
        for n in s.dpo_pairs
    ]


def consistency_stages(s, prompts_file: Path, data_dir: Path) -> list:
    from self_rewarding_lm_pytorch.stages.external_reward_dpo import ExternalRewardDPOConfig

    return [
        ExternalRewardDPOConfig(
            consistency_reward,
            str(prompts_file),
            n,
            num_candidate_responses=s.consistency_samples,
            gen_temperature=s.consistency_temperature,
            gen_top_p=None,
            pair_policy_kwargs={"min_margin": s.consistency_min_margin},
            **_dpo_common(s, data_dir),
        )
        for n in s.dpo_pairs
    ]


def oracle_stages(s, prompts_file: Path, data_dir: Path) -> list:
    from self_rewarding_lm_pytorch.demo.task import verifier_reward
    from self_rewarding_lm_pytorch.stages.external_reward_dpo import ExternalRewardDPOConfig

    return [
        ExternalRewardDPOConfig(
            verifier_reward,
            str(prompts_file),
            n,
            num_candidate_responses=s.oracle_candidates,
            gen_temperature=s.oracle_temperature,
            gen_top_p=None,
            **_dpo_common(s, data_dir),
        )
        for n in s.dpo_pairs
    ]


def control_stages(s, data_dir: Path, steps: list[int]) -> list:
    """SFT on the replayed seed data alone, `steps[i]` steps in iteration i (the oracle's), each step the
    replayed rows a DPO step sees, with the DPO iterations' learning-rate schedule."""
    from self_rewarding_lm_pytorch.stages.sft import SFTConfig

    return [
        SFTConfig(
            str(data_dir / "sft.jsonl"),
            num_train_steps=max(1, n),
            batch_size=s.dpo_batch_size * max(1, s.replay_per_pair),
            learning_rate=s.dpo_learning_rate,
            lr_schedule=s.dpo_lr_schedule,
            warmup_steps=min(s.dpo_warmup_steps, max(0, n - 1)),
            log_every=50,
        )
        for n in steps
    ]
