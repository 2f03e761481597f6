"""The run manifest: what a checkpoints folder holds, and whether a rerun may continue it.

manifest.json = {"version", "seed", "stages": the plan (folder, kind, config hash per stage),
"started": the folder of the stage in progress or None, "finished": [plan entry + summary, ...]}.

A rerun continues a folder only when everything already done there (finished stages, and the stage
that was in progress) was done with the configs asked for now; anything else is a RunMismatchError.
Overwriting removes only what a run writes, never other files in the folder.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

from self_rewarding_lm_pytorch.stages.fingerprint import fingerprint

__all__ = [
    "INITIAL_MODEL",
    "MANIFEST",
    "RunMismatchError",
    "clear_run",
    "continue_run",
    "plan_run",
    "stage_folder_name",
    "stage_hash",
]

MANIFEST = "manifest.json"
INITIAL_MODEL = "initial-model.safetensors"
VERSION = 1
_STAGE_FOLDER = re.compile(r"^\d{2}-[a-z0-9-]+$")
_HINT = "pass overwrite_checkpoints=True to replace it, or use another checkpoints_folder"


class RunMismatchError(RuntimeError):
    """The checkpoints folder holds a different run than the one asked for."""


def stage_folder_name(index: int, config: Any) -> str:
    return f"{index + 1:02d}-{type(config).kind}"


def stage_hash(config: Any, judge: Any) -> str:
    """What makes a stage's results: its config, and the judge template when the stage uses it."""
    parts = {"config": fingerprint(config, skip=_CADENCE_FIELDS)}
    if getattr(config, "uses_judge", False):
        parts["judge"] = fingerprint(judge)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# How often a stage logs or checkpoints does not change what it trains, so changing it on a rerun is fine.
_CADENCE_FIELDS = frozenset({"log_every", "checkpoint_every", "tensorboard"})


def plan_run(stages: list, judge: Any, seed: int) -> dict:
    return {
        "version": VERSION,
        "seed": seed,
        "stages": [
            {"folder": stage_folder_name(i, c), "kind": type(c).kind, "config_hash": stage_hash(c, judge)}
            for i, c in enumerate(stages)
        ],
        "started": None,
        "finished": [],
    }


def _same(a: dict | None, b: dict | None) -> bool:
    return a is not None and b is not None and (a["kind"], a["config_hash"]) == (b["kind"], b["config_hash"])


def continue_run(
    folder: Path, existing: dict | None, stages: list, judge: Any, seed: int | None, new_seed: int
) -> dict:
    """The manifest to run with: a fresh plan, or the existing run's, checked against the stages asked for."""
    leftovers = sorted(p.name for p in folder.glob("*") if p.is_dir() and _STAGE_FOLDER.match(p.name))
    if existing is None:
        if leftovers:
            raise RunMismatchError(f"{folder} has stage folders {leftovers} but no {MANIFEST}: {_HINT}")
        return plan_run(stages, judge, seed if seed is not None else new_seed)
    if (
        not isinstance(existing, dict)
        or existing.get("version") != VERSION
        or not {"seed", "stages", "finished"} <= set(existing)
    ):
        raise RunMismatchError(f"{folder / MANIFEST} is not a manifest this version wrote: {_HINT}")
    if seed is not None and existing["seed"] != seed:
        raise RunMismatchError(f"{folder} holds a run with seed {existing['seed']}, not {seed}: {_HINT}")
    planned = plan_run(stages, judge, existing["seed"])
    done = list(existing["finished"])
    for i, entry in enumerate(done):
        if i >= len(planned["stages"]) or not _same(entry, planned["stages"][i]):
            raise RunMismatchError(
                f"{folder}: finished stage {entry['folder']} differs from stage {i + 1} asked for now: {_HINT}"
            )
    started = existing.get("started")
    if started is not None:
        i = len(done)
        before = next((s for s in existing["stages"] if s["folder"] == started), None)
        if (
            i >= len(planned["stages"])
            or planned["stages"][i]["folder"] != started
            or not _same(before, planned["stages"][i])
        ):
            raise RunMismatchError(
                f"{folder}: stage {started} was started with another config than the one asked for now "
                f"(its partial results would be reused): {_HINT}"
            )
    unknown = sorted(set(leftovers) - {e["folder"] for e in done} - {started})
    if unknown:
        raise RunMismatchError(f"{folder} has stage folders {unknown} that its {MANIFEST} does not know: {_HINT}")
    return planned | {"started": started, "finished": done}


def clear_run(folder: Path):
    """Remove what a run writes (the manifest, the initial model, NN-kind stage folders); nothing else."""
    if not folder.exists():
        return
    for path in folder.iterdir():
        if path.is_dir() and _STAGE_FOLDER.match(path.name):
            shutil.rmtree(path)
        elif path.name in (MANIFEST, INITIAL_MODEL):
            path.unlink()
