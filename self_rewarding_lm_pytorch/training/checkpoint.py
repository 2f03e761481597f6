"""Checkpoints: model weights as safetensors (tied/shared tensors handled) and atomic step folders.

A step checkpoint is a folder `run_dir/checkpoint/step-00000010/` holding

- `model.safetensors`  the (unwrapped) model's weights,
- `optimizer.pt`       the optimizer's state_dict (sharded training: a folder `optimizer/` that every
                       process writes its shard into with torch.distributed.checkpoint),
- `state.pt`           step, scheduler, RNG states of every process, data position, logged history,
                       early-stopping state (plain tensors/lists/dicts: loads with `weights_only=True`),
- `config.json`        the resolved configuration,
- `best_model.safetensors` when early stopping keeps a best model.

It is written into a hidden temp folder and renamed into place, so a folder named `step-*` is always
complete: a crash mid-save leaves only a `.tmp-*` folder, which `latest_checkpoint` ignores and the
next save removes. The newest `keep_last` step folders are kept.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from beartype import beartype
from safetensors.torch import load_file, save_file
from safetensors.torch import load_model as _st_load_model
from safetensors.torch import save_model as _st_save_model
from torch import Tensor, nn

from self_rewarding_lm_pytorch.core.files import (
    atomic_write,
    atomic_write_json,
    fsync_path,
    resume_jsonl,
)
from self_rewarding_lm_pytorch.core.modules import unwrap_model

__all__ = [
    "CHECKPOINT_DIR",
    "RunState",
    "clear_run",
    "clear_staging",
    "get_rng_state",
    "latest_checkpoint",
    "load_model",
    "load_run_checkpoint",
    "load_training_state",
    "save_model",
    "save_run_checkpoint",
    "save_training_state",
    "seed_everything",
    "set_rng_state",
    "staging_dir",
    "truncate_metrics",
]

CHECKPOINT_DIR = "checkpoint"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_REQUIRED = ("model.safetensors", "state.pt", "config.json")
_OPTIMIZER_FILES = ("optimizer.pt", "optimizer/.metadata")  # one process's file, or the sharded folder


@beartype
def save_model(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the model's state_dict to `path` as safetensors, atomically.

    Tied weights (e.g. an embedding shared with the output projection) are stored once;
    `load_model` restores the tie. A DDP-wrapped model is unwrapped first.
    """
    return atomic_write(Path(path), lambda tmp: _st_save_model(unwrap_model(model), str(tmp)))


@beartype
def load_model(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> nn.Module:
    """Load safetensors weights written by `save_model` into `model` in place (any device)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model weights at {path}")
    _missing, _unexpected = _st_load_model(unwrap_model(model), str(path), strict=strict)
    return model


def _save_state_dict(state_dict: dict[str, Tensor], path: Path):
    # Callers pass cloned tensors (no storage sharing), which safetensors accepts as they are.
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp)))


def _torch_save(obj, path: Path):
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


# --- RNG states: torch, python `random`, numpy (when installed) and CUDA (when available) ---


def get_rng_state() -> dict:
    """Every RNG this process draws from, as plain tensors/lists (loadable with weights_only=True)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = [
            kind,
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ]
    except ImportError:
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- step checkpoint folders ---


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


@beartype
def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete step folder under `run_dir/checkpoint/`, or None when there is none."""
    for _, path in reversed(_step_dirs(Path(run_dir) / CHECKPOINT_DIR)):
        if not _missing_files(path):
            return path
    return None


def _missing_files(path: Path) -> list[str]:
    missing = [name for name in _REQUIRED if not (path / name).is_file()]
    if not any((path / name).is_file() for name in _OPTIMIZER_FILES):
        missing.append(" or ".join(_OPTIMIZER_FILES))
    return missing


def staging_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """The temp folder a sharded step checkpoint is assembled in; every process knows its name."""
    return Path(run_dir) / CHECKPOINT_DIR / f".tmp-step-{step:08d}-sharded"


def clear_staging(path: Path):
    """An empty staging folder (what a crashed save left there is removed). Main process only."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _replace_dir(tmp: Path, final: Path):
    """Rename a finished temp folder to `final`, replacing an older folder of the same name."""
    if final.exists():
        # Re-saving a step (e.g. the end checkpoint after resuming a finished run): move the old one
        # aside first; older step folders stay loadable during this short window.
        trash = final.with_name(f".old-{final.name}-{os.getpid()}")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_path(final.parent)


def _prune(root: Path, keep_last: int, keep: Path):
    for _, path in _step_dirs(root)[:-keep_last]:
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)
    for path in root.iterdir():
        # Temp folders left by a crashed save; only the main process ever writes here.
        if path.is_dir() and path.name.startswith((".tmp-step-", ".old-step-")):
            shutil.rmtree(path, ignore_errors=True)


@beartype
def save_training_state(
    checkpoint_root: str | os.PathLike,
    step: int,
    *,
    model: nn.Module,
    optimizer: Any,  # a torch Optimizer, a wrapper with state_dict() (accelerate's), or None (sharded)
    state: dict,
    config: dict,
    best_weights: dict[str, Tensor] | None = None,
    keep_last: int = 2,
    staging: Path | None = None,
) -> Path:
    """Write one step checkpoint folder atomically (temp folder, then rename). Main process only.

    `optimizer=None` with a `staging` folder: the (sharded) optimizer state is already in it.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    if (optimizer is None) != (staging is not None):
        raise ValueError("give an optimizer, or a staging folder that already holds the optimizer state")
    root = Path(checkpoint_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = staging if staging is not None else root / f".tmp-step-{step:08d}-{os.getpid()}"
    if staging is None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    try:
        save_model(model, tmp / "model.safetensors")
        if optimizer is not None:
            _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
        _torch_save(state, tmp / "state.pt")
        if best_weights is not None:
            _save_state_dict(best_weights, tmp / "best_model.safetensors")
        atomic_write_json(tmp / "config.json", config)
        fsync_path(tmp)
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep_last, final)
    return final


@beartype
def load_training_state(
    checkpoint_dir: str | os.PathLike,
    *,
    model: nn.Module | None,
    optimizer: Any = None,  # a torch Optimizer or a wrapper with load_state_dict() (accelerate's)
) -> dict:
    """Load a step folder: weights into `model`, state into `optimizer`; returns the state dict.

    The returned dict also carries `"config"` (config.json) and `"best_weights"` (or None).
    `model=None` / `optimizer=None`: the caller loads them (sharded training does).
    """
    import json

    path = Path(checkpoint_dir)
    missing = _missing_files(path)
    if missing:
        raise FileNotFoundError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    if model is not None:
        load_model(model, path / "model.safetensors")
    if optimizer is not None:
        if not (path / "optimizer.pt").is_file():
            raise ValueError(f"{path} holds sharded optimizer state (fsdp=True); resume it with fsdp=True")
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    state["config"] = json.loads((path / "config.json").read_text(encoding="utf-8"))
    best = path / "best_model.safetensors"
    state["best_weights"] = load_file(str(best)) if best.is_file() else None
    return state


# --- the loop's run state: what a step checkpoint holds besides weights and optimizer ---


@dataclass
class RunState:
    """The loop's counters: saved in `state.pt` (best_weights in best_model.safetensors)."""

    step: int = 0
    history: list[dict] = field(default_factory=list)
    last_lr: float | None = None
    best: dict | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    best_weights: dict[str, Tensor] | None = None


# The data order is a function of these, so a resume that changes one would replay different batches.
_DATA_ORDER_KEYS = ("batch_size", "grad_accum_steps", "seed")
_RUN_KEYS = ("num_processes", "dataset_size")


def save_run_checkpoint(
    run_dir: Path,
    run: RunState,
    *,
    model,
    optimizer,
    scheduler,
    rng_states: list,
    config: dict,
    items_per_step: int,
    dataset_size: int,
    staging: Path | None = None,
) -> Path:
    """One step folder for the loop (main process only). `rng_states` holds every process's RNG state."""
    consumed = run.step * items_per_step
    state = {
        **{k: v for k, v in asdict(run).items() if k != "best_weights"},
        "scheduler": scheduler.state_dict(),
        "rng": rng_states,
        "data_position": {
            "items_consumed": consumed,
            "epoch": consumed // dataset_size,
            "index_in_epoch": consumed % dataset_size,
        },
    }
    return save_training_state(
        Path(run_dir) / CHECKPOINT_DIR,
        run.step,
        model=model,
        optimizer=optimizer,
        state=state,
        config=config,
        best_weights=run.best_weights,
        staging=staging,
    )


def load_run_checkpoint(
    path: Path, *, model, optimizer, scheduler, config_now: dict, sharded=None
) -> tuple[RunState, list]:
    """Restore model, optimizer and scheduler from a step folder; returns (RunState, per-process RNG states).

    A resume whose data order would differ (batch size, accumulation, seed, process count, dataset
    size) is a ValueError naming what changed. With `sharded` (a `sharding.ShardedTraining`, every
    process calls this) the full weights are scattered into the shards and each process reads its
    optimizer shard.
    """
    if sharded is None:
        state = load_training_state(path, model=model, optimizer=optimizer)
    else:
        state = load_training_state(path, model=None)
        if not (path / "optimizer" / ".metadata").is_file():
            raise ValueError(f"cannot resume sharded training from {path}: it holds no sharded optimizer state")
        sharded.load_full_file(path / "model.safetensors")
        sharded.load_optimizer(optimizer, path / "optimizer")
    saved = state["config"]
    changed = [
        f"{k}: {saved['train'][k]!r} -> {config_now['train'][k]!r}"
        for k in _DATA_ORDER_KEYS
        if saved["train"][k] != config_now["train"][k]
    ]
    changed += [f"{k}: {saved[k]!r} -> {config_now[k]!r}" for k in _RUN_KEYS if saved[k] != config_now[k]]
    if changed:
        raise ValueError(
            f"cannot resume from {path}: the data order depends on settings that changed ({'; '.join(changed)})"
        )
    scheduler.load_state_dict(state["scheduler"])
    run = RunState(**{f.name: state[f.name] for f in fields(RunState) if f.name != "best_weights"})
    run.best_weights = state["best_weights"]
    return run, state["rng"]


def truncate_metrics(path: Path, step: int):
    """Drop records after `step` (from an attempt that crashed after its last checkpoint)."""
    resume_jsonl(path, lambda records: [r for r in records if r.get("step", 0) <= step])


def clear_run(run_dir: Path) -> list[str]:
    """Remove the step checkpoints and metrics of an earlier run in `run_dir`; returns what was removed."""
    old = [p for p in (run_dir / CHECKPOINT_DIR, run_dir / "metrics.jsonl") if p.exists()]
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    return [str(p) for p in old]


def seed_everything(seed: int):
    """Seed torch, python `random` and numpy (when installed)."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)  # numpy takes seeds below 2**32 only
    except ImportError:
        pass
