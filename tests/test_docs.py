"""The docs and the README: imports from the top-level package only, shown code comes from tested
example files, the README stays short and its quickstart is the tested one."""

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SNIPPET = re.compile(r'^-{2}8<-{2} "([^":]+)(?::\d+:\d+|:([\w-]+))?"', re.M)
RELATIVE_LINK = re.compile(r"\]\((?!https?:|#)([^)]+)\)")
SUBMODULE_IMPORT = re.compile(r"^\s*(from|import)\s+self_rewarding_lm_pytorch\.\w", re.M)

# Example scripts shown in the docs, with what each prints when it runs as documented. The seed
# README's scripts run in tests/test_cli.py (SEED_README_SCRIPTS).
EXAMPLE_SCRIPTS = {
    "quickstart.py": ["'train_steps': 200", "'trained': True"],  # the self-reward stage made pairs and trained
    "losses.py": ["dpo loss 0.5981"],  # -log sigmoid(0.1 * ((-10 + 11) - (-12 + 11)))
    "judge.py": ["9.0 None"],
    "sampling.py": ["[0, 0, 0, 0, 1, 1, 1, 1]"],
    "dpo.py": ["margins rise: True"],
}


PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

# Inline doc blocks that are whole programs and run in seconds: the tests run them (the longer ones
# train models; their code is in examples/ or exercised by the guide's own tests). Every other inline
# block must at least compile. Keys: (doc file, index of the python block in it).
RUN_INLINE_BLOCKS = [
    ("docs/index.md", 0),
    ("docs/guides/vocabulary.md", 0),
    ("docs/guides/vocabulary.md", 1),
    ("docs/guides/vocabulary.md", 3),
    ("docs/guides/preference-losses.md", 1),
    ("docs/guides/scale.md", 0),
    ("docs/guides/self-reward-sources.md", 1),
    ("docs/guides/self-rewarding.md", 1),
    ("docs/guides/ppo.md", 1),
]


def inline_blocks() -> dict[tuple[str, int], str]:
    """Every ```python block of the README and docs that is written inline (not an included file)."""
    blocks = {}
    for doc in DOC_FILES:
        found = PYTHON_BLOCK.findall(doc.read_text(encoding="utf-8"))
        for index, code in enumerate(found):
            if not code.startswith("--8<--"):
                blocks[(str(doc.relative_to(ROOT)), index)] = code
    return blocks


def included_files() -> set[Path]:
    return {ROOT / m for f in DOC_FILES for m, _ in SNIPPET.findall(f.read_text(encoding="utf-8"))}


@pytest.mark.unit
def test_sections_included_in_the_docs_exist_and_link_nowhere_relative():
    # A relative link in BENCHMARKS.md points into the repository; included into docs/ it points
    # nowhere and `mkdocs build --strict` fails, so included sections keep to anchors and URLs.
    for doc in DOC_FILES:
        for name, section in SNIPPET.findall(doc.read_text(encoding="utf-8")):
            if not section:
                continue
            text = (ROOT / name).read_text(encoding="utf-8")
            match = re.search(rf"--8<-- \[start:{section}\](.*?)--8<-- \[end:{section}\]", text, re.S)
            assert match, f"{doc.name} includes section {section!r} that {name} does not mark"
            assert not RELATIVE_LINK.findall(match.group(1)), (name, section, RELATIVE_LINK.findall(match.group(1)))


@pytest.mark.unit
def test_every_import_shown_uses_the_top_level_package():
    shown = DOC_FILES + sorted(f for f in included_files() if f.suffix == ".py")
    offenders = [
        f"{f.relative_to(ROOT)}: {m.group(0).strip()}" for f in shown for m in SUBMODULE_IMPORT.finditer(f.read_text())
    ]
    assert not offenders, "import from the top-level package (from self_rewarding_lm_pytorch import X):\n" + "\n".join(
        offenders
    )


@pytest.mark.unit
def test_every_included_example_exists_and_is_run_by_a_test():
    from test_cli import SEED_README_SCRIPTS

    included = included_files()
    assert all(f.is_file() for f in included), [str(f) for f in included if not f.is_file()]
    scripts = {f.name for f in included if f.suffix == ".py"}
    assert scripts <= set(EXAMPLE_SCRIPTS) | set(SEED_README_SCRIPTS), scripts - set(EXAMPLE_SCRIPTS)


@pytest.mark.unit
def test_every_inline_code_block_compiles():
    blocks = inline_blocks()
    assert set(RUN_INLINE_BLOCKS) <= set(blocks), set(RUN_INLINE_BLOCKS) - set(blocks)  # the list follows the docs
    for (doc, index), code in blocks.items():
        compile(code, f"{doc} python block {index}", "exec")


@pytest.mark.e2e
@pytest.mark.parametrize("key", RUN_INLINE_BLOCKS, ids=[f"{Path(d).stem}-{i}" for d, i in RUN_INLINE_BLOCKS])
def test_inline_code_blocks_run(key, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(inline_blocks()[key], f"{key[0]} python block {key[1]}", "exec"), {"__name__": "__docs__"})


@pytest.mark.unit
def test_readme_is_short_and_shows_the_tested_quickstart():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    code = (ROOT / "examples" / "quickstart.py").read_text(encoding="utf-8").split('"""\n', 1)[1].strip()
    assert code in readme, "README's quickstart differs from examples/quickstart.py"


@pytest.mark.e2e
@pytest.mark.parametrize("script", sorted(EXAMPLE_SCRIPTS))
def test_example_scripts_run(script, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # they write only to temporary folders; make sure of it
    runpy.run_path(str(ROOT / "examples" / script), run_name="__main__")
    assert list(tmp_path.iterdir()) == []
    out = capsys.readouterr().out
    for expected in EXAMPLE_SCRIPTS[script]:
        assert expected in out, (expected, out)
