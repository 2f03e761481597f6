"""`SelfRewardingTrainer`: runs an ordered list of stage configs, each in its own folder, resumably.

Layout of a run folder:
    manifest.json              seed, the planned stages (kind + config hash), the one in progress,
                               the finished ones (see manifest.py)
    initial-model.safetensors  the weights the run started from
    01-sft/                    model.safetensors, config.json, and whatever the stage wrote; for a
                               Hugging Face model also model/ (save_pretrained: model or LoRA adapter,
                               plus the tokenizer; model/merged/ too with save_merged=True)
    02-self-reward-dpo/        candidates.jsonl, pairs.jsonl, train/ (step checkpoints), ...

A rerun on the same folder skips the finished stages (after checking they are the same stages),
loads the last finished model and resumes the unfinished stage from what it had written.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from beartype import beartype
from torch import nn

from self_rewarding_lm_pytorch.core.files import atomic_write_json, read_json_if_exists
from self_rewarding_lm_pytorch.core.run_lock import RunLock, RunLockedError
from self_rewarding_lm_pytorch.core.seeding import derive_seed
from self_rewarding_lm_pytorch.manifest import (
    INITIAL_MODEL,
    MANIFEST,
    RunMismatchError,
    clear_run,
    continue_run,
    stage_folder_name,
)
from self_rewarding_lm_pytorch.models import HFCausalLM, model_and_tokenizer
from self_rewarding_lm_pytorch.stages.context import StageContext, StageEnd
from self_rewarding_lm_pytorch.stages.fields import describe_config
from self_rewarding_lm_pytorch.training.checkpoint import load_model, save_model, seed_everything

__all__ = ["RunLockedError", "RunMismatchError", "SelfRewardingTrainer", "stage_folder_name"]

# Stage seeds are run seed + 1000 * stage number; keep them inside numpy's and torch's seed range.
MAX_SEED = 2**31


def _check_stage(config: Any, index: int):
    if not (hasattr(type(config), "kind") and callable(getattr(config, "run", None))):
        raise TypeError(
            f"finetune_configs[{index}] is a {type(config).__name__}, not a stage config "
            "(SFTConfig, SelfPlayConfig, ExternalRewardDPOConfig, SelfRewardDPOConfig, PPOStageConfig)"
        )


def _check_references_shardable(model: nn.Module, stages: Sequence[Any], num_processes: int):
    """Before any stage runs (nothing written yet): a LoRA policy's live reference cannot be sharded."""
    from self_rewarding_lm_pytorch.core.losses import REFERENCE_FREE_LOSS_TYPES
    from self_rewarding_lm_pytorch.trainers.pair_training import check_live_reference_shardable

    for config in stages:
        live = type(config).kind == "ppo" or getattr(config, "precompute_ref_logprobs", True) is False
        if live and getattr(config, "dpo_loss_type", "sigmoid") not in REFERENCE_FREE_LOSS_TYPES:
            check_live_reference_shardable(model, sharded=bool(getattr(config, "fsdp", False)) and num_processes > 1)


class SelfRewardingTrainer:
    """Runs `finetune_configs` in order; a dict means the paper's recipe (`create_default_paper_config`).

    `model` is an x-transformers `TransformerWrapper`, a Hugging Face causal LM or a `peft.PeftModel`;
    `peft_config=` applies LoRA for you, `chat_template=False` turns off the tokenizer's chat template,
    `save_merged=True` also writes each stage's LoRA-merged model.
    """

    @beartype
    def __init__(
        self,
        model: nn.Module,
        finetune_configs: Sequence[Any] | dict,
        *,
        tokenizer: Any = None,
        tokenizer_encode: Callable | None = None,
        tokenizer_decode: Callable | None = None,
        self_reward_prompt_config: Any = None,
        accelerate_kwargs: dict | None = None,
        checkpoints_folder: str | Path = "./checkpoints",
        seed: int | None = None,
        on_stage_end: Callable[[StageEnd], Any] | None = None,
        progress: bool = True,
        peft_config: Any = None,
        chat_template: bool | None = None,
        save_merged: bool = False,
    ):
        from self_rewarding_lm_pytorch.self_reward.reward_config import DEFAULT_REWARD_CONFIG, RewardConfig

        if isinstance(finetune_configs, dict):
            from self_rewarding_lm_pytorch.recipes import create_default_paper_config

            finetune_configs = create_default_paper_config(**finetune_configs)
        if seed is not None and not 0 <= seed < MAX_SEED:
            raise ValueError(f"seed must be in [0, 2**31), got {seed}")
        if len(finetune_configs) == 0:
            raise ValueError("finetune_configs is empty: give at least one stage")
        for i, config in enumerate(finetune_configs):
            _check_stage(config, i)
        if self_reward_prompt_config is not None and not isinstance(self_reward_prompt_config, RewardConfig):
            raise TypeError("self_reward_prompt_config must be a RewardConfig")

        self.model, self.tokenizer = model_and_tokenizer(
            model,
            tokenizer,
            peft_config=peft_config,
            seed=seed,
            chat_template=chat_template,
            tokenizer_encode=tokenizer_encode,
            tokenizer_decode=tokenizer_decode,
        )
        self.stages = list(finetune_configs)
        self.save_merged = save_merged
        self.reward_config = self_reward_prompt_config or DEFAULT_REWARD_CONFIG
        self.accelerate_kwargs = accelerate_kwargs
        self.folder = Path(checkpoints_folder)
        self.seed = seed
        self.on_stage_end = on_stage_end
        self.progress = progress
        self.run_seed: int | None = None  # the seed in use, known once the run starts (also in the manifest)
        self._lock = RunLock(self.folder)

    # --- the manifest: what this run is, and how far it got ---

    def _agree_on_manifest(self, accelerator, overwrite: bool) -> dict:
        """The main process reads (or creates) the manifest; every process then runs with that one.

        One decision for all processes: with `seed=None` each would otherwise draw its own seed.
        An error on the main process reaches the others too, so none waits forever.
        """
        decision: Any = None  # the manifest (dict) or the error that stopped the main process
        if accelerator.is_main_process:
            try:
                # Before anything is read or written: a second run on this folder stops here.
                self._lock.acquire()
                if overwrite:
                    clear_run(self.folder)
                existing = read_json_if_exists(self.folder / MANIFEST)
                fresh_seed = random.SystemRandom().randrange(MAX_SEED)
                decision = continue_run(self.folder, existing, self.stages, self.reward_config, self.seed, fresh_seed)
                self.folder.mkdir(parents=True, exist_ok=True)
                if not decision["finished"] and decision["started"] is None:
                    save_model(self.model, self.folder / INITIAL_MODEL)  # what a retry starts from
                atomic_write_json(self.folder / MANIFEST, decision)
            except (RunMismatchError, RunLockedError, ValueError, OSError) as error:
                decision = error
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            decision = broadcast_object_list([decision], from_process=0)[0]
        if isinstance(decision, BaseException):
            raise decision
        return decision

    def _write_manifest(self, manifest: dict, accelerator):
        if accelerator.is_main_process:
            atomic_write_json(self.folder / MANIFEST, manifest)
        accelerator.wait_for_everyone()

    # --- running ---

    @beartype
    def __call__(self, overwrite_checkpoints: bool = False) -> list[dict]:
        from self_rewarding_lm_pytorch.training.accelerators import make_accelerator

        accelerator = make_accelerator(self.accelerate_kwargs)
        self.model.to(accelerator.device)
        try:
            return self._run(accelerator, overwrite_checkpoints)
        finally:
            self._lock.release()  # held by the main process only; a no-op elsewhere

    def _run(self, accelerator, overwrite_checkpoints: bool) -> list[dict]:
        _check_references_shardable(self.model, self.stages, accelerator.num_processes)
        manifest = self._agree_on_manifest(accelerator, overwrite_checkpoints)
        self.run_seed = manifest["seed"]
        finished = manifest["finished"]
        # A retry starts from the weights the interrupted attempt started from, not from whatever
        # the model in memory holds now (it may be half-trained, or freshly initialised).
        start = self.folder / finished[-1]["folder"] / "model.safetensors" if finished else self.folder / INITIAL_MODEL
        load_model(self.model, start)
        if finished or manifest["started"]:
            accelerator.print(f"resuming {self.folder}: {len(finished)} of {len(self.stages)} stages done")

        for index in range(len(finished), len(self.stages)):
            folder = manifest["stages"][index]["folder"]
            resume = manifest["started"] == folder
            manifest["started"] = folder
            self._write_manifest(manifest, accelerator)
            summary = self._run_stage(index, manifest["seed"], resume, accelerator)
            manifest["finished"].append({**manifest["stages"][index], "summary": summary})
            manifest["started"] = None
            self._write_manifest(manifest, accelerator)
            if self.on_stage_end is not None:
                config = self.stages[index]
                self.on_stage_end(StageEnd(index, config, self.model, self.folder / folder, summary))
        return [entry.get("summary", {}) for entry in manifest["finished"]]

    def _run_stage(self, index: int, run_seed: int, resume: bool, accelerator) -> dict:
        config = self.stages[index]
        stage_dir = self.folder / stage_folder_name(index, config)
        if accelerator.is_main_process:
            stage_dir.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        accelerator.print(f"stage {index + 1}/{len(self.stages)}: {type(config).kind} -> {stage_dir}")

        # Each stage re-seeds from (run seed, stage index), so a resumed stage sees the same
        # randomness as an uninterrupted run, whatever ran before it in this process.
        stage_seed = derive_seed(run_seed, "stage", index)
        seed_everything(stage_seed)
        ctx = StageContext(
            model=self.model,
            tokenizer=self.tokenizer,
            accelerator=accelerator,
            stage_dir=stage_dir,
            seed=stage_seed,
            resume=resume,
            reward_config=self.reward_config,
            progress=self.progress,
        )
        summary = config.run(ctx) or {}
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_model(self.model, stage_dir / "model.safetensors")  # the exact state a resume loads
            if isinstance(self.model, HFCausalLM):
                self.model.save_pretrained(stage_dir / "model", tokenizer=self.tokenizer, merged=self.save_merged)
            atomic_write_json(stage_dir / "config.json", describe_config(config))
        return summary
