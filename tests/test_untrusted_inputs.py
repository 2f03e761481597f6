"""Files from someone else: a pipeline's imports are listed before anything runs, and nothing the
project loads is unpickled beyond plain tensors and containers (issue #15)."""

from __future__ import annotations

import ast
import pickle
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from self_rewarding_lm_pytorch.cli import main
from self_rewarding_lm_pytorch.config_file import find_imports, load_pipeline_file, read_pipeline_toml

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parent.parent / "self_rewarding_lm_pytorch"


def write_pipeline(tmp_path: Path, reward_import: str, tokenizer: str = "byte") -> Path:
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "1+1="}\n')
    path = tmp_path / "pipeline.toml"
    path.write_text(
        textwrap.dedent(f"""\
        run_dir = "{tmp_path / "run"}"
        tokenizer = "{tokenizer}"
        [model]
        max_seq_len = 32
        [model.attn_layers]
        dim = 16
        depth = 1
        heads = 2
        [[stages]]
        kind = "sft"
        train_dataset = "prompts.jsonl"
        [[stages]]
        kind = "external-reward-dpo"
        reward_model = {{ import = "{reward_import}" }}
        prompt_dataset = "prompts.jsonl"
        num_generated_preference_pairs = 2
        """)
    )
    return path


def side_effect_module(tmp_path: Path, monkeypatch, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_find_imports_lists_every_import_in_file_order(tmp_path):
    raw = read_pipeline_toml(write_pipeline(tmp_path, "evil:reward", tokenizer="toks:factory"))
    assert find_imports(raw) == [("tokenizer", "toks:factory"), ("stages[1].reward_model", "evil:reward")]


def test_check_lists_the_imports_and_imports_nothing(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "pwned.txt"
    module = side_effect_module(
        tmp_path,
        monkeypatch,
        "creates_a_file_on_import",
        f"""\
        from pathlib import Path
        Path({str(marker)!r}).write_text("imported")
        def reward(prompts, responses):
            return [0.0] * len(prompts)
        """,
    )
    path = write_pipeline(tmp_path, f"{module}:reward")
    assert main(["run", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert f"stages[1].reward_model: {module}:reward" in out
    assert "OK (2 stages" in out
    assert not marker.exists()
    # the module really does what the check avoided: loading the file for a run imports it
    load_pipeline_file(path)
    assert marker.read_text() == "imported"


def test_check_never_imports_a_module_that_raises(tmp_path, monkeypatch, capsys):
    module = side_effect_module(tmp_path, monkeypatch, "raises_on_import", "raise RuntimeError('ran on import')\n")
    path = write_pipeline(tmp_path, f"{module}:reward", tokenizer=f"{module}:factory")
    assert main(["run", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert f"tokenizer: {module}:factory" in out and f"stages[1].reward_model: {module}:reward" in out
    # a real run does import it: the failure is a one-line error naming the place, not a traceback
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "stages[1].reward_model" in err and "RuntimeError: ran on import" in err


# --- nothing unpickles untrusted data ---------------------------------------------------------

UNPICKLERS = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def unsafe_loads(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for each import of an unpickler and each call that can run code from data."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            found += [(node.lineno, f"import {n}") for n in names if n and n.split(".")[0] in UNPICKLERS]
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in ("eval", "exec", "builtins.eval", "builtins.exec", "yaml.load", "yaml.unsafe_load"):
                found.append((node.lineno, f"{name}("))
            elif name == "torch.load":
                weights_only = [k for k in node.keywords if k.arg == "weights_only"]
                safe = weights_only and isinstance(weights_only[0].value, ast.Constant) and weights_only[0].value.value
                if not safe:
                    found.append((node.lineno, "torch.load( without weights_only=True"))
    return found


def test_the_scan_finds_what_it_looks_for():
    source = "import pickle\nfrom dill import loads\neval('1')\ntorch.load(f)\ntorch.load(f, weights_only=False)\n"
    source += "yaml.load(s)\ntorch.load(f, weights_only=True)\nmodel.eval()\n"
    assert [line for line, _ in unsafe_loads(ast.parse(source))] == [1, 2, 3, 4, 5, 6]


def test_the_package_source_has_no_unsafe_loaders():
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {what}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, what in unsafe_loads(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert not found, "\n".join(found)


class _RunsCodeWhenUnpickled:
    """What a crafted checkpoint file holds: unpickling it calls `Path.touch(marker)`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class _Regression:
    def collate(self, items):
        return torch.stack(items)

    def step(self, model, batch):
        return (model(batch) ** 2).mean(), {}


@pytest.mark.parametrize("victim", ["optimizer.pt", "state.pt"])
def test_a_crafted_state_file_is_refused_on_resume(tmp_path, victim):
    from self_rewarding_lm_pytorch import TrainConfig, make_accelerator, train
    from self_rewarding_lm_pytorch.training.checkpoint import latest_checkpoint

    config = TrainConfig(num_train_steps=2, batch_size=2, checkpoint_every=1, progress=False)
    data = [torch.randn(3) for _ in range(4)]
    accelerator = make_accelerator({"cpu": True})
    train(nn.Linear(3, 1), _Regression(), data, config, accelerator=accelerator, run_dir=tmp_path / "run")
    marker = tmp_path / "code-ran"
    torch.save({"state": _RunsCodeWhenUnpickled(marker)}, latest_checkpoint(tmp_path / "run") / victim)
    with pytest.raises(pickle.UnpicklingError, match=r"[Ww]eights only load failed"):
        train(
            nn.Linear(3, 1), _Regression(), data, config, accelerator=accelerator, run_dir=tmp_path / "run", resume=True
        )
    assert not marker.exists()
