"""Faults a run must survive (issue #11): the disk fills up while a checkpoint or a stage is written."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import pytest

from self_rewarding_lm_pytorch import (
    make_accelerator,
    train,
)
from self_rewarding_lm_pytorch.training import checkpoint as ckpt

pytestmark = pytest.mark.stage

SCRIPTS = Path(__file__).resolve().parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
import train_until_signalled as script  # noqa: E402
from fault_helpers import assert_same_weights, pipeline, tiny_lm, weights  # noqa: E402

# --- disk full ---------------------------------------------------------------------------------


def disk_fills_at(monkeypatch, n: int):
    """The n-th file the checkpoint writer writes fails half-way with OSError(ENOSPC)."""
    calls = []
    original = ckpt.atomic_write

    def atomic(path, write):
        calls.append(path)
        if len(calls) == n:

            def full(tmp):
                Path(tmp).write_bytes(b"partial")
                raise OSError(errno.ENOSPC)

            return original(path, full)
        return original(path, write)

    monkeypatch.setattr(ckpt, "atomic_write", atomic)


def test_disk_full_during_a_checkpoint_keeps_the_previous_one_and_names_the_file(tmp_path, monkeypatch):
    from self_rewarding_lm_pytorch import TrainConfig

    config = TrainConfig(num_train_steps=6, batch_size=4, checkpoint_every=2, progress=False)
    disk_fills_at(monkeypatch, 5)  # each checkpoint writes 3 files through atomic_write: the 5th is step 4's second
    model = script.make_model()
    with pytest.raises(OSError) as info:
        train(
            model,
            script.SlowTask(None),
            script.make_data(),
            config,
            accelerator=make_accelerator({"cpu": True}),
            run_dir=tmp_path,
        )
    assert info.value.errno == errno.ENOSPC
    assert str(tmp_path) in str(info.value)  # the path that failed
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.name == "step-00000002"
    ckpt.load_training_state(latest, model=script.make_model())
    assert not [p for p in (tmp_path / "checkpoint").iterdir() if p.name.startswith(".")]  # no half-written leftovers
    monkeypatch.undo()
    resumed = script.make_model()
    train(
        resumed,
        script.SlowTask(None),
        script.make_data(),
        config,
        accelerator=make_accelerator({"cpu": True}),
        run_dir=tmp_path,
        resume=True,
    )
    straight = script.make_model()
    train(
        straight,
        script.SlowTask(None),
        script.make_data(),
        config,
        accelerator=make_accelerator({"cpu": True}),
        run_dir=tmp_path / "straight",
    )
    assert_same_weights(weights(straight), weights(resumed))


def test_disk_full_in_a_later_stage_keeps_finished_stages_loadable(tmp_path, monkeypatch):
    original = ckpt.atomic_write

    def atomic(path, write):
        def full(tmp):
            raise OSError(errno.ENOSPC)

        return original(path, full if "02-sft" in str(path) else write)  # stage 2's first file write fails

    monkeypatch.setattr(ckpt, "atomic_write", atomic)
    with pytest.raises(OSError) as info:
        pipeline(tmp_path / "run")()
    assert info.value.errno == errno.ENOSPC and "02-sft" in str(info.value)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [s["folder"] for s in manifest["finished"]] == ["01-sft"]
    ckpt.load_model(tiny_lm(), tmp_path / "run" / "01-sft" / "model.safetensors")
    ckpt.load_training_state(ckpt.latest_checkpoint(tmp_path / "run" / "01-sft" / "train"), model=tiny_lm())
    monkeypatch.undo()
    pipeline(tmp_path / "run")()  # the rerun finishes the run
    assert len(json.loads((tmp_path / "run" / "manifest.json").read_text())["finished"]) == 2
