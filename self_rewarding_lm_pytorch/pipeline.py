"""`SelfRewardingTrainer`: runs an ordered list of stage configs, each in its own folder, resumably.

Layout of a run folder:
    manifest.json              seed, the planned stages (kind + config hash), the finished ones
    01-sft/                    model.safetensors, config.json, and whatever the stage wrote
    02-self-reward-dpo/        candidates.jsonl, pairs.jsonl, train/ (step checkpoints), ...

A rerun on the same folder skips the finished stages (after checking they are the same stages),
loads the last finished model and resumes the unfinished stage from its step checkpoints.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from beartype import beartype
from torch import nn

from .checkpoint import load_model, save_model
from .data import atomic_write_json
from .stages.base import StageContext, StageEnd, config_hash, describe_config
from .tokenizer import as_tokenizer

__all__ = ["SelfRewardingTrainer", "RunMismatchError", "stage_folder_name"]

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


class RunMismatchError(RuntimeError):
    """The checkpoints folder holds a different run than the one asked for."""


def stage_folder_name(index: int, config: Any) -> str:
    return f"{index + 1:02d}-{type(config).kind}"


def _check_stage(config: Any, index: int):
    if not (hasattr(type(config), "kind") and callable(getattr(config, "run", None))):
        raise TypeError(
            f"finetune_configs[{index}] is a {type(config).__name__}, not a stage config "
            "(SFTConfig, SelfPlayConfig, ExternalRewardDPOConfig, SelfRewardDPOConfig, PPOStageConfig)"
        )


def seed_everything(seed: int):
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass


class SelfRewardingTrainer:
    """Runs `finetune_configs` in order; a dict means the paper's recipe (`create_default_paper_config`)."""

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
    ):
        from .judge import DEFAULT_REWARD_CONFIG, RewardConfig

        if isinstance(finetune_configs, dict):
            from .recipes import create_default_paper_config

            finetune_configs = create_default_paper_config(**finetune_configs)
        if len(finetune_configs) == 0:
            raise ValueError("finetune_configs is empty: give at least one stage")
        for i, config in enumerate(finetune_configs):
            _check_stage(config, i)
        if self_reward_prompt_config is not None and not isinstance(self_reward_prompt_config, RewardConfig):
            raise TypeError("self_reward_prompt_config must be a RewardConfig")

        self.model = model
        self.stages = list(finetune_configs)
        self.tokenizer = as_tokenizer(tokenizer, tokenizer_encode=tokenizer_encode, tokenizer_decode=tokenizer_decode)
        self.reward_config = self_reward_prompt_config or DEFAULT_REWARD_CONFIG
        self.accelerate_kwargs = accelerate_kwargs
        self.folder = Path(checkpoints_folder)
        self.seed = seed
        self.on_stage_end = on_stage_end
        self.progress = progress

    # --- the manifest: what this run is, and how far it got ---

    def _plan(self, seed: int) -> dict:
        return {
            "version": MANIFEST_VERSION,
            "seed": seed,
            "stages": [
                {"folder": stage_folder_name(i, c), "kind": type(c).kind, "config_hash": config_hash(c)}
                for i, c in enumerate(self.stages)
            ],
            "finished": [],
        }

    def _load_manifest(self, overwrite: bool) -> dict:
        from .data import read_json_if_exists

        existing = read_json_if_exists(self.folder / MANIFEST)
        if existing is None or overwrite:
            seed = self.seed if self.seed is not None else random.SystemRandom().randrange(2**31)
            return self._plan(seed)
        if self.seed is not None and existing["seed"] != self.seed:
            raise RunMismatchError(
                f"{self.folder} holds a run with seed {existing['seed']}, not {self.seed}: "
                "pass overwrite_checkpoints=True or use another checkpoints_folder"
            )
        planned = self._plan(existing["seed"])
        for i, done in enumerate(existing["finished"]):
            want = planned["stages"][i] if i < len(planned["stages"]) else None
            if want is None or want["kind"] != done["kind"] or want["config_hash"] != done["config_hash"]:
                raise RunMismatchError(
                    f"{self.folder} holds a run whose stage {i + 1} ({done['folder']}) differs from the "
                    "stage asked for now: pass overwrite_checkpoints=True or use another checkpoints_folder"
                )
        planned["finished"] = existing["finished"]
        return planned

    def _write_manifest(self, manifest: dict, accelerator):
        if accelerator.is_main_process:
            atomic_write_json(self.folder / MANIFEST, manifest)

    # --- running ---

    @beartype
    def __call__(self, overwrite_checkpoints: bool = False) -> list[dict]:
        from .loop import make_accelerator

        accelerator = make_accelerator(self.accelerate_kwargs)
        if overwrite_checkpoints and accelerator.is_main_process and self.folder.exists():
            shutil.rmtree(self.folder)
        accelerator.wait_for_everyone()
        manifest = self._load_manifest(overwrite_checkpoints)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_manifest(manifest, accelerator)

        finished = manifest["finished"]
        if finished:
            load_model(self.model, self.folder / finished[-1]["folder"] / "model.safetensors")
            accelerator.print(f"resuming {self.folder}: {len(finished)} of {len(self.stages)} stages done")

        for index in range(len(finished), len(self.stages)):
            summary = self._run_stage(index, manifest, accelerator)
            manifest["finished"].append({**manifest["stages"][index], "summary": summary})
            self._write_manifest(manifest, accelerator)
        return [entry.get("summary", {}) for entry in manifest["finished"]]

    def _run_stage(self, index: int, manifest: dict, accelerator) -> dict:
        config = self.stages[index]
        stage_dir = self.folder / stage_folder_name(index, config)
        resume = stage_dir.exists()
        stage_dir.mkdir(parents=True, exist_ok=True)
        accelerator.print(f"stage {index + 1}/{len(self.stages)}: {type(config).kind} -> {stage_dir}")

        # Each stage re-seeds from (run seed, stage index), so a resumed stage sees the same
        # randomness as an uninterrupted run, whatever ran before it in this process.
        stage_seed = manifest["seed"] + 1000 * (index + 1)
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
            save_model(self.model, stage_dir / "model.safetensors")
            atomic_write_json(stage_dir / "config.json", describe_config(config))
        if self.on_stage_end is not None:
            self.on_stage_end(StageEnd(index, config, self.model, stage_dir, summary))
        return summary
