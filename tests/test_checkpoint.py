"""Checkpoints: safetensors with tied weights, atomic files and folders, RNG state, latest/prune."""

import random

import numpy as np
import pytest
import torch
from torch import nn

from self_rewarding_lm_pytorch.training import checkpoint as ckpt
from self_rewarding_lm_pytorch.training.checkpoint import (
    get_rng_state,
    latest_checkpoint,
    load_model,
    load_training_state,
    save_model,
    save_training_state,
    set_rng_state,
)

pytestmark = pytest.mark.unit


class TiedLM(nn.Module):
    """Embedding and output projection share one weight tensor (two state_dict names, one storage)."""

    def __init__(self):
        super().__init__()
        self.emb, self.out = nn.Embedding(40, 16), nn.Linear(16, 40, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        return self.out(torch.tanh(self.emb(ids)))


def tied_model(seed=0):
    torch.manual_seed(seed)
    return TiedLM()


def small(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))


def save_step(root, step, model, value=0.0):
    optimizer = torch.optim.AdamW(model.parameters())
    return save_training_state(
        root, step, model=model, optimizer=optimizer, state={"step": step, "value": value}, config={"step": step}
    )


def test_tied_weights_round_trip(tmp_path):
    """safetensors' save_file refuses shared storage; save_model stores the tie once and load_model restores it."""
    from safetensors.torch import save_file

    model = tied_model()
    with pytest.raises(RuntimeError, match="share memory"):
        save_file(model.state_dict(), str(tmp_path / "plain.safetensors"))
    save_model(model, tmp_path / "m.safetensors")
    other = tied_model(seed=1)
    load_model(other, tmp_path / "m.safetensors")
    ids = torch.randint(0, 40, (2, 8))
    torch.testing.assert_close(model(ids), other(ids))
    assert torch.equal(other.emb.weight, model.emb.weight)
    assert other.out.weight is other.emb.weight  # still tied after loading


def test_save_model_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_model(small(0), path)
    good = path.read_bytes()

    def crash(model, filename, *args, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_st_save_model", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model(small(1), path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left behind


def test_load_model_missing_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model weights"):
        load_model(small(), tmp_path / "absent.safetensors")


def test_crash_during_save_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    root = tmp_path / ckpt.CHECKPOINT_DIR
    model = small(0)
    first = save_step(root, 10, model, value=1.0)
    real_save = torch.save

    def crash_on_state(obj, f, *args, **kwargs):
        if "value" in obj:  # the state file, written after weights and optimizer
            raise OSError("killed mid-save")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", crash_on_state)
    with pytest.raises(OSError, match="killed"):
        save_step(root, 20, small(1), value=2.0)
    monkeypatch.setattr(torch, "save", real_save)

    assert latest_checkpoint(tmp_path) == first
    assert sorted(p.name for p in root.iterdir()) == ["step-00000010"]
    restored = small(5)
    state = load_training_state(first, model=restored)
    assert state["value"] == 1.0 and state["config"] == {"step": 10} and state["best_weights"] is None
    for a, b in zip(restored.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_killed_save_leftovers_are_ignored_then_removed(tmp_path):
    root = tmp_path / ckpt.CHECKPOINT_DIR
    save_step(root, 10, small())
    (root / ".tmp-step-00000020-999").mkdir()  # a save killed before its rename
    (root / ".tmp-step-00000020-999" / "model.safetensors").write_bytes(b"partial")
    (root / "step-00000030").mkdir()  # a folder missing files is not a checkpoint
    assert latest_checkpoint(tmp_path) == root / "step-00000010"
    save_step(root, 40, small())
    assert not (root / ".tmp-step-00000020-999").exists()
    assert latest_checkpoint(tmp_path) == root / "step-00000040"


def test_keep_last_prunes_old_checkpoints(tmp_path):
    root = tmp_path / ckpt.CHECKPOINT_DIR
    for step in (5, 10, 15):
        save_step(root, step, small())
    assert sorted(p.name for p in root.iterdir()) == ["step-00000010", "step-00000015"]
    save_step(root, 15, small(3), value=3.0)  # re-saving a step replaces it
    assert load_training_state(root / "step-00000015", model=small())["value"] == 3.0


def test_no_checkpoint_means_none(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="incomplete"):
        load_training_state(tmp_path, model=small())


def test_rng_state_round_trip():
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    state = get_rng_state()
    first = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    set_rng_state(state)
    second = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(first[0], second[0]) and first[1:] == second[1:]


def test_state_file_loads_with_weights_only(tmp_path):
    """RNG states and histories are plain tensors/lists/dicts, so torch.load(weights_only=True) reads them."""
    root = tmp_path / ckpt.CHECKPOINT_DIR
    model = small()
    save_training_state(
        root,
        1,
        model=model,
        optimizer=torch.optim.AdamW(model.parameters()),
        state={"rng": [get_rng_state()], "history": [{"step": 1, "loss": 0.5}]},
        config={},
    )
    state = torch.load(root / "step-00000001" / "state.pt", weights_only=True)
    assert state["history"] == [{"step": 1, "loss": 0.5}]
