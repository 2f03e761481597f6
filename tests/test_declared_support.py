"""Declared support is true (issue #11, defect 10): Python and torch bounds match what the code uses,
and a renamed x-transformers internal disables the fast decoder instead of breaking the import."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text()


def test_python_310_gets_tomli_because_tomllib_is_311_plus():
    assert re.search(r'requires-python = ">=3\.10"', PYPROJECT)
    assert re.search(r"\"tomli[^\"]*; python_version < '3\.11'\"", PYPROJECT)
    source = (ROOT / "self_rewarding_lm_pytorch" / "config_file.py").read_text()
    assert "import tomli as tomllib" in source and "sys.version_info >= (3, 11)" in source


def test_torch_lower_bound_covers_sdpa_enable_gqa():
    assert "enable_gqa" in (ROOT / "self_rewarding_lm_pytorch" / "core" / "kv_decode.py").read_text()
    bound = re.search(r'"torch>=(\d+)\.(\d+)', PYPROJECT)
    assert bound and (int(bound[1]), int(bound[2])) >= (2, 5)  # enable_gqa arrived in torch 2.5


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env)


def test_a_renamed_x_transformers_internal_disables_the_fast_path_with_one_warning():
    proc = run_python(
        """
        import warnings
        import torch
        import x_transformers.x_transformers as xt
        del xt.softclamp  # as if a release renamed it

        import self_rewarding_lm_pytorch as srlm
        from x_transformers import Decoder, TransformerWrapper

        torch.manual_seed(0)
        model = TransformerWrapper(num_tokens=20, max_seq_len=16, attn_layers=Decoder(dim=16, depth=1, heads=2))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            backends = {srlm.sample(model, [torch.tensor([1, 2])], max_new_tokens=3).backend for _ in range(3)}
        lacking = [w for w in caught if "lacks internals" in str(w.message)]
        print(sorted(backends), len(lacking))
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "['xtransformers'] 1"


def test_a_failing_probe_of_an_old_torch_falls_back(monkeypatch):
    """torch < 2.5's SDPA raises TypeError on enable_gqa: the probe must report it, not crash."""
    import torch
    import torch.nn.functional as F
    from x_transformers import Decoder, TransformerWrapper

    from self_rewarding_lm_pytorch.core import kv_decode

    original = F.scaled_dot_product_attention

    def old_sdpa(*args, enable_gqa=None, **kwargs):
        if enable_gqa is not None:
            raise TypeError("scaled_dot_product_attention() got an unexpected keyword argument 'enable_gqa'")
        return original(*args, **kwargs)

    monkeypatch.setattr(kv_decode.F, "scaled_dot_product_attention", old_sdpa)
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=20, max_seq_len=16, attn_layers=Decoder(dim=16, depth=1, heads=2))
    problem = kv_decode.fast_decode_support(model)
    assert problem is not None and "TypeError" in problem
