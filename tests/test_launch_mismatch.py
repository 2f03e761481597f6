"""A script that fixed accelerate's process state as one process, though launched as several, is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from self_rewarding_lm_pytorch import LaunchMismatchError
from self_rewarding_lm_pytorch.training.accelerators import check_launch_matches

SCRIPT = Path(__file__).parent / "scripts" / "state_before_trainer.py"


@pytest.mark.unit
@given(launched=st.integers(1, 64), known=st.integers(1, 64))
def test_a_launch_size_other_than_the_state_is_refused(launched, known):
    if launched == known:
        check_launch_matches(str(launched), known)
    else:
        with pytest.raises(LaunchMismatchError, match=f"one of {launched} .* has {known}"):
            check_launch_matches(str(launched), known)


@pytest.mark.unit
@pytest.mark.parametrize("launched", [None, "", "abc"])
def test_no_launcher_size_means_nothing_to_check(launched):
    check_launch_matches(launched, 1)
    check_launch_matches(launched, 4)


@pytest.mark.distributed
def test_state_fixed_as_one_process_fails_before_any_stage_and_cpu_true_runs(tmp_path):
    from launcher import launch

    # PartialState() without cpu=True: both processes would each run the whole pipeline as process 0
    done = launch(SCRIPT, tmp_path / "plain", "plain", processes=2, check=False, timeout=240)
    assert done.returncode != 0
    assert "LaunchMismatchError" in done.stderr and "cpu=True" in done.stderr
    assert not (tmp_path / "plain").exists()  # refused before the lock, the manifest or a stage

    done = launch(SCRIPT, tmp_path / "cpu", "cpu", processes=2, timeout=240)
    assert "process 0 of 2 done" in done.stdout and "process 1 of 2 done" in done.stdout
    assert (tmp_path / "cpu" / "01-sft" / "model.safetensors").exists()
