"""The whole pipeline (SFT -> self-reward DPO -> SPIN -> PPO) on a tiny Hugging Face model (LoRA
included) under two processes ends with the weights of one process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from launcher import launch as run

pytestmark = pytest.mark.distributed

SCRIPT = str(Path(__file__).parent / "hf_pipeline.py")


def launch(model_folder, out: Path, processes: int, *extra: str):
    pythonpath = os.pathsep.join([str(Path(SCRIPT).parent), os.environ.get("PYTHONPATH", "")])
    out.mkdir(parents=True, exist_ok=True)
    run(
        SCRIPT,
        model_folder,
        out,
        *extra,
        processes=processes,
        timeout=600,
        env={"HF_HUB_OFFLINE": "1", "PYTHONPATH": pythonpath},
    )


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_two_processes_run_the_hf_pipeline_to_the_weights_of_one(hf_folders, tmp_path, lora):
    from safetensors.torch import load_file

    extra = ("lora",) if lora else ()
    launch(hf_folders["llama"], tmp_path / "one", 1, *extra)
    launch(hf_folders["llama"], tmp_path / "two", 2, *extra)
    # PPO rolled out and scored the same responses (in global row order) under one and two processes
    one, two = ((tmp_path / n / "ppo-rollouts.jsonl").read_text() for n in ("one", "two"))
    assert one == two and len(one.splitlines()) == 4
    expected = load_file(str(tmp_path / "one" / "weights-rank0.safetensors"))
    for rank in (0, 1):
        got = load_file(str(tmp_path / "two" / f"weights-rank{rank}.safetensors"))
        assert got.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5, msg=key)
