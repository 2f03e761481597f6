"""Checkpoints: model weights as safetensors (tied/shared tensors handled) and atomic step folders.

A step checkpoint is a folder `run_dir/checkpoint/step-00000010/` holding

- `model.safetensors`  the (unwrapped) model's weights,
- `optimizer.pt`       the optimizer's state_dict,
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
from pathlib import Path

import torch
from beartype import beartype
from safetensors.torch import load_file, save_file
from safetensors.torch import load_model as _st_load_model
from safetensors.torch import save_model as _st_save_model
from torch import Tensor, nn

from .data import atomic_write_json

__all__ = [
    "CHECKPOINT_DIR",
    "save_model",
    "load_model",
    "save_training_state",
    "load_training_state",
    "latest_checkpoint",
    "get_rng_state",
    "set_rng_state",
]

CHECKPOINT_DIR = "checkpoint"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_REQUIRED = ("model.safetensors", "optimizer.pt", "state.pt", "config.json")


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP / DataParallel keep the real module in `.module`; save its names, not "module.x".
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _fsync_path(path: Path):
    """Flush a file (or a folder's entry list) to disk, so a rename after it cannot expose stale bytes."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # some filesystems do not open folders; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic(path: Path, write) -> Path:
    """Run `write(tmp_path)`, fsync, then rename over `path`; the target is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@beartype
def save_model(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the model's state_dict to `path` as safetensors, atomically.

    Tied weights (e.g. an embedding shared with the output projection) are stored once;
    `load_model` restores the tie. A DDP-wrapped model is unwrapped first.
    """
    return _atomic(Path(path), lambda tmp: _st_save_model(_unwrap(model), str(tmp)))


@beartype
def load_model(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> nn.Module:
    """Load safetensors weights written by `save_model` into `model` in place (any device)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model weights at {path}")
    missing, unexpected = _st_load_model(_unwrap(model), str(path), strict=strict)
    return model


def _save_state_dict(state_dict: dict[str, Tensor], path: Path):
    # Callers pass cloned tensors (no storage sharing), which safetensors accepts as they are.
    _atomic(path, lambda tmp: save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp)))


def _torch_save(obj, path: Path):
    _atomic(path, lambda tmp: torch.save(obj, tmp))


# --- RNG states: torch, python `random`, numpy (when installed) and CUDA (when available) ---


def get_rng_state() -> dict:
    """Every RNG this process draws from, as plain tensors/lists (loadable with weights_only=True)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)]
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
        if all((path / name).is_file() for name in _REQUIRED):
            return path
    return None


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
    _fsync_path(final.parent)


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
    optimizer: torch.optim.Optimizer | object,
    state: dict,
    config: dict,
    best_weights: dict[str, Tensor] | None = None,
    keep_last: int = 2,
) -> Path:
    """Write one step checkpoint folder atomically (temp folder, then rename). Main process only."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    root = Path(checkpoint_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_model(model, tmp / "model.safetensors")
        _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
        _torch_save(state, tmp / "state.pt")
        if best_weights is not None:
            _save_state_dict(best_weights, tmp / "best_model.safetensors")
        atomic_write_json(tmp / "config.json", config)
        _fsync_path(tmp)
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
    model: nn.Module,
    optimizer: torch.optim.Optimizer | object | None = None,
) -> dict:
    """Load a step folder: weights into `model`, state into `optimizer`; returns the state dict.

    The returned dict also carries `"config"` (config.json) and `"best_weights"` (or None).
    """
    import json

    path = Path(checkpoint_dir)
    missing = [name for name in _REQUIRED if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    load_model(model, path / "model.safetensors")
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    state["config"] = json.loads((path / "config.json").read_text(encoding="utf-8"))
    best = path / "best_model.safetensors"
    state["best_weights"] = load_file(str(best)) if best.is_file() else None
    return state
