"""The repository's promises: the README's commands are the ones CI runs, every export resolves."""

import re
from pathlib import Path

import self_rewarding_lm_pytorch as srlm

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^TEST_COMMAND='(.+)'$", ci, re.M).group(1)
    assert command in (ROOT / "README.md").read_text(), "the README's test command and .ci/run differ"


def test_readme_opens_with_the_main_job_command():
    head = (ROOT / "README.md").read_text()[:2500]
    assert "pip install torch==2.13.0" in head and "srlm demo" in head


def test_every_public_name_resolves():
    for name in srlm.__all__:
        assert getattr(srlm, name) is not None, name
