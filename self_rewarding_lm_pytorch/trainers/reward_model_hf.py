"""Saving and loading a `RewardModel` around a Hugging Face causal LM.

The folder holds what the Hugging Face ecosystem reads plus one file: `save_pretrained` of the model
(or of the LoRA adapter of a `peft.PeftModel`), the tokenizer, and `reward_head.safetensors` with the
scalar head's weights and, in its metadata, the settings a reload needs to score identically (whether
the chat template was used). The folder is written into a temporary folder renamed into place
(`HFCausalLM.save_pretrained`), so it is always complete. `transformers` and `peft` are imported only
when a folder is loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import safe_open
from safetensors.torch import save as st_save
from torch import Tensor

if TYPE_CHECKING:
    from self_rewarding_lm_pytorch.trainers.reward_model import RewardModel

__all__ = [
    "ADAPTER_CONFIG",
    "HEAD_FILE",
    "load_hf_reward_model",
    "load_hf_reward_model_weights",
    "save_hf_reward_model",
]

HEAD_FILE = "reward_head.safetensors"
ADAPTER_CONFIG = "adapter_config.json"  # peft's name: the folder holds an adapter, not a full model


def save_hf_reward_model(rm: RewardModel, folder: str | os.PathLike) -> Path:
    """`folder` = the model's (or adapter's) `save_pretrained` + the tokenizer + `reward_head.safetensors`."""
    head = {k: v.detach().cpu().contiguous().clone() for k, v in rm.to_reward.state_dict().items()}
    settings = {
        "chat_template": bool(getattr(rm.tokenizer, "uses_chat_template", False)),
        "score_batch_size": rm.score_batch_size,
    }
    head_bytes = st_save(head, metadata={"reward_model": json.dumps(settings)})
    net: Any = rm.net  # an HFCausalLM
    return net.save_pretrained(folder, tokenizer=rm.tokenizer, extra_files={HEAD_FILE: head_bytes})


def _read_head(folder: Path) -> tuple[dict[str, Tensor], dict]:
    path = folder / HEAD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {HEAD_FILE}: not a folder written by RewardModel.save")
    with safe_open(str(path), framework="pt") as f:
        settings = json.loads((f.metadata() or {}).get("reward_model", "{}"))
        return {k: f.get_tensor(k) for k in f.keys()}, settings  # noqa: SIM118 (safe_open is not a dict)


def load_hf_reward_model_weights(rm: RewardModel, folder: str | os.PathLike) -> RewardModel:
    """Fill `rm` (an HF reward model of the same architecture) with the weights saved in `folder`."""
    folder = Path(folder)
    head, _ = _read_head(folder)
    net: Any = rm.net
    device = next(rm.parameters()).device
    has_adapter = (folder / ADAPTER_CONFIG).is_file()
    if has_adapter != net.is_peft:
        saved, here = ("a LoRA adapter", "a full model") if has_adapter else ("a full model", "a LoRA adapter")
        raise ValueError(f"{folder} holds {saved} but this RewardModel has {here}")
    if net.is_peft:
        from peft.utils import load_peft_weights, set_peft_model_state_dict

        result: Any = set_peft_model_state_dict(net.hf, load_peft_weights(str(folder), device=str(device)))
        if result.unexpected_keys:
            raise ValueError(f"{folder}'s adapter does not fit this model: {result.unexpected_keys[:5]}")
    else:
        saved_model = type(net.hf).from_pretrained(folder)
        net.hf.load_state_dict(saved_model.state_dict())
    rm.to_reward.load_state_dict({k: v.to(device) for k, v in head.items()})
    return rm


def load_hf_reward_model(cls: type[RewardModel], folder: str | os.PathLike, *, tokenizer: Any, base_model: Any):
    """A `RewardModel` rebuilt from a folder of `save_hf_reward_model`; a LoRA adapter is put on
    `base_model` (a fresh model, or a path; None: the base path the adapter's config names)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    head, settings = _read_head(folder)
    model: Any
    if (folder / ADAPTER_CONFIG).is_file():
        from peft import PeftModel

        if base_model is None:
            base_model = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
            if not base_model:
                raise ValueError(f"{folder}'s adapter names no base model: pass base_model=")
        if isinstance(base_model, (str, os.PathLike)):
            base_model = AutoModelForCausalLM.from_pretrained(base_model)
        model = PeftModel.from_pretrained(base_model, folder, is_trainable=True)
    else:
        if base_model is not None:
            raise ValueError(f"{folder} holds a full model, not an adapter: base_model= does not apply")
        model = AutoModelForCausalLM.from_pretrained(folder)
    rm = cls(
        net=model,
        tokenizer=tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(folder),
        chat_template=bool(settings.get("chat_template", True)),
        score_batch_size=int(settings.get("score_batch_size", 32)),
    )
    rm.to_reward.load_state_dict(head)
    return rm
