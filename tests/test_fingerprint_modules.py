"""Stage fingerprints summarise module weights cheaply and soundly (issue #11, defect 12)."""

import copy
import json

import pytest
import torch
from torch import nn

from self_rewarding_lm_pytorch.stages.fingerprint import fingerprint

pytestmark = pytest.mark.unit


def digest(value) -> str:
    return json.dumps(fingerprint(value), sort_keys=True)


def model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 16), nn.LayerNorm(16), nn.Linear(16, 50))


def edit_one_element(m):
    with torch.no_grad():
        m[1].weight[3, 7] += 1e-3


def edit_one_element_bf16(m):
    m.to(torch.bfloat16)
    with torch.no_grad():
        m[1].weight[5, 2] = m[1].weight[5, 2] * 2 + 0.25


def training_step(m):
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 1e-6)


def rescale(m):
    with torch.no_grad():
        m[3].weight.mul_(1.01)


def reinit_bias(m):
    with torch.no_grad():
        m[3].bias.normal_()


def negate_one_element(m):
    with torch.no_grad():
        m[0].weight[10, 0] = -m[0].weight[10, 0]


def reshape_layer(m):
    m[1] = nn.Linear(16, 16, bias=False)


@pytest.mark.parametrize(
    "edit",
    [edit_one_element, edit_one_element_bf16, training_step, rescale, reinit_bias, negate_one_element, reshape_layer],
)
def test_realistic_weight_edits_change_the_fingerprint(edit):
    base, edited = model(), model()
    if edit is edit_one_element_bf16:
        base.to(torch.bfloat16)
    edit(edited)
    assert digest(base) != digest(edited)


def test_identical_modules_have_identical_fingerprints():
    assert digest(model()) == digest(model())
    m = model()
    assert digest(m) == digest(copy.deepcopy(m))
    assert digest({"judge": model(), "steps": 3}) == digest({"judge": model(), "steps": 3})


def test_a_large_module_is_not_read_back_to_the_host_in_full(monkeypatch):
    big = nn.Linear(1024, 1024)  # 1M weights
    host_reads = []
    for method in ("numpy", "tolist", "tobytes"):
        original = getattr(torch.Tensor, method, None)
        if original is None:
            continue

        def spy(self, *args, _original=original, **kwargs):
            host_reads.append(self.numel())
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, spy)
    fingerprint(big)
    assert host_reads and max(host_reads) <= 64  # only the strided samples come to the host


def test_a_judge_setting_added_later_leaves_existing_runs_resumable():
    """RewardConfig's answer_regex/response_answer came after runs were made: unset, they are not part of a
    stage's hash, which stays what the code before them computed (c2cefc7f... measured at e01c40d), so
    `--resume` still finds those runs' stages; set, they change it."""
    import dataclasses

    from self_rewarding_lm_pytorch.manifest import stage_hash
    from self_rewarding_lm_pytorch.self_reward.judge import DEFAULT_REWARD_CONFIG
    from self_rewarding_lm_pytorch.stages.self_reward_dpo import SelfRewardDPOConfig

    stage = SelfRewardDPOConfig([{"prompt": "1+1="}], 4, num_train_steps=2)
    assert stage_hash(stage, DEFAULT_REWARD_CONFIG) == "c2cefc7f1329b954"
    assert set(fingerprint(DEFAULT_REWARD_CONFIG)) == {
        "prompt_template",
        "reward_regex_template",
        "auto_dedent",
        "score_range",
        "parse_reward",
    }
    guided = dataclasses.replace(DEFAULT_REWARD_CONFIG, answer_regex=r"(\d+)")
    assert stage_hash(stage, guided) != stage_hash(stage, DEFAULT_REWARD_CONFIG)
