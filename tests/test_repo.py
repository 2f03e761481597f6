"""The repository's promises: the README's commands are the ones CI runs, every export resolves."""

import ast
import re
from pathlib import Path

import pytest

import self_rewarding_lm_pytorch as srlm

pytestmark = pytest.mark.unit

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


def _type_checking_imports() -> dict[str, str]:
    """name -> module of every import inside `if TYPE_CHECKING:` in the package's __init__.py."""
    tree = ast.parse((ROOT / "self_rewarding_lm_pytorch" / "__init__.py").read_text())
    blocks = [n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", None) == "TYPE_CHECKING"]
    assert len(blocks) == 1, "expected one `if TYPE_CHECKING:` block"
    found = {}
    for node in blocks[0].body:
        assert isinstance(node, ast.ImportFrom), ast.dump(node)
        for alias in node.names:
            assert alias.asname == alias.name, f"{alias.name}: write `X as X` (an explicit re-export)"
            found[alias.name] = node.module.removeprefix("self_rewarding_lm_pytorch.")
    return found


def test_type_checking_block_matches_the_lazy_exports():
    """IDEs and type checkers read the TYPE_CHECKING imports; users get _EXPORTS: the same names, same modules."""
    assert _type_checking_imports() == srlm._EXPORTS


def test_import_is_lazy():
    """`import self_rewarding_lm_pytorch` alone loads none of the heavy submodules."""
    import subprocess
    import sys

    code = (
        "import sys, self_rewarding_lm_pytorch as s;print([m for m in sys.modules if m.startswith(s.__name__ + '.')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_package_is_typed_and_licensed():
    assert (ROOT / "self_rewarding_lm_pytorch" / "py.typed").is_file()
    assert "py.typed" in (ROOT / "pyproject.toml").read_text()
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


# The layers (docs/architecture.md): a subpackage imports only from lower ranks or from itself.
LAYER_RANK = {
    "core": 0,
    "models": 1,
    "training": 2,
    "trainers": 3,
    "rl": 3,
    "self_reward": 3,
    "generation": 3,
    "stages": 4,
}


def _layer(module: str) -> str:
    """'self_rewarding_lm_pytorch.core.files' -> 'core'; a top-level module is its own name."""
    return module.split(".")[1] if module.count(".") else module


def test_imports_only_go_down_the_layers():
    package = ROOT / "self_rewarding_lm_pytorch"
    wrong = []
    for path in sorted(package.rglob("*.py")):
        layer = path.relative_to(package).parts[0] if len(path.relative_to(package).parts) > 1 else None
        if layer not in LAYER_RANK:
            continue  # pipeline, manifest, recipes, config_file, cli, demo/ sit on top and may import anything
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("self_rewarding_lm_pytorch."):
                target = _layer(node.module)
                if target != layer and LAYER_RANK.get(target, 99) >= LAYER_RANK[layer]:
                    wrong.append(f"{path.relative_to(ROOT)}: {layer} imports {node.module}")
    assert not wrong, "\n".join(wrong)
