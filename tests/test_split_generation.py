"""Generation split across processes gives what one process gives: best-of-N synthetic data (sampled and
scored by a reward model chunk by chunk, written by the main process, resumed after a partial write)
and SPIN's synthetic responses (each process samples a contiguous share, keyed by global row)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_fsdp import launch_two

pytestmark = pytest.mark.distributed

SCRIPT = Path(__file__).parent / "scripts" / "split_generation.py"


def test_split_generation_matches_one_process(tmp_path):
    spec = importlib.util.spec_from_file_location("split_generation", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    run = launch_two(two, script=SCRIPT)
    assert run.returncode == 0, run.stderr[-4000:]
    script.run(one, dict(cpu=True))

    first = (one / "best_of_n-first.jsonl").read_text()
    assert len(first.splitlines()) == 2 * len(script.PROMPTS)  # keep=2 of every prompt
    assert (two / "best_of_n-first.jsonl").read_text() == first
    assert (two / "best_of_n.jsonl").read_text() == (one / "best_of_n.jsonl").read_text() == first
    stats = [json.loads((two / f"stats-rank{r}.json").read_text()) for r in (0, 1)]
    assert stats[0] == stats[1] == json.loads((one / "stats-rank0.json").read_text())
    resumed = stats[0][1]
    assert resumed["prompts_done_before"] == 1 and resumed["prompts_written"] == len(script.PROMPTS) - 1

    spin = [json.loads((two / f"spin-rank{r}.json").read_text()) for r in (0, 1)]
    assert spin[0] == spin[1] == json.loads((one / "spin-rank0.json").read_text())
    assert len(spin[0]) == 5 and any(spin[0])
