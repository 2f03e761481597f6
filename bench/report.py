"""What every benchmark's results file starts with: the exact command, the setup, the machine load."""

import os
import subprocess
import sys
from pathlib import Path

from self_rewarding_lm_pytorch.core.files import atomic_write_text


def write_report(path: Path, title: str, setup: str, body: str):
    """`# title`, the command that ran (this script and its arguments), `setup`, the load, `body`."""
    command = f"python bench/{os.path.basename(sys.argv[0])} " + " ".join(sys.argv[1:])
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    atomic_write_text(
        path,
        f"# {title}\n\nCommand: `{command.strip()}`\n\n{setup}\n\n"
        f"Machine load during the run (`uptime`): `{load}`\n\n{body}\n",
    )


def benchmark_parser(doc: str):
    """An argument parser with the model size every training benchmark shares, and `--write`."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--write", type=Path, help="also write the markdown report here")
    return parser
