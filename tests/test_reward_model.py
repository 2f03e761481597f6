import json

import pytest
import torch
import torch.nn.functional as F

from self_rewarding_lm_pytorch.core.batching import encode_example
from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
from self_rewarding_lm_pytorch.trainers.reward_model import (
    RankingTask,
    RewardModel,
    RewardModelTrainer,
    load_ranked_records,
    pairwise_metrics,
)


def tiny_rm(encoder=False, seed=0):
    torch.manual_seed(seed)
    return RewardModel(num_tokens=259, max_seq_len=48, dim=32, depth=1, heads=2, encoder=encoder)


@pytest.mark.unit
def test_decoder_reads_last_real_token_padding_does_not_matter():
    rm = tiny_rm().eval()
    tok = ByteTokenizer()
    ids, _ = encode_example(tok, "ab", "cd")
    alone = rm(torch.tensor([ids]), torch.tensor([len(ids)]))
    padded = torch.tensor([ids + [tok.pad_id] * 7, [5] * (len(ids) + 7)])
    both = rm(padded, torch.tensor([len(ids), len(ids) + 7]))
    assert both.shape == (2,)
    assert torch.allclose(both[0], alone[0], atol=1e-5)


@pytest.mark.stage
def test_encoder_mean_pool_ignores_padding():
    rm = tiny_rm(encoder=True).eval()
    ids = torch.tensor([[1, 2, 3, 256, 256]])
    mask = torch.tensor([[True, True, True, False, False]])
    a = rm(ids, mask=mask)
    b = rm(ids[:, :3], mask=mask[:, :3])
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.unit
def test_wraps_a_given_network(tmp_path):
    from x_transformers import Encoder, TransformerWrapper

    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=259, max_seq_len=32, attn_layers=Encoder(dim=16, depth=1, heads=2))
    rm = RewardModel(net=net)
    assert not rm.causal and rm.score(["a", "b"], ["c", "d"]).shape == (2,)
    with pytest.raises(ValueError, match="not both"):
        RewardModel(num_tokens=259, net=net)
    with pytest.raises(ValueError, match=r"from_pretrained|net="):
        RewardModel.from_pretrained(rm.save(tmp_path / "rm.safetensors"))


@pytest.mark.unit
def test_score_on_strings_and_call_forms_agree():
    rm = tiny_rm()
    rm.train()
    s = rm.score(["hi", "yo"], [" there", " man"])
    assert s.shape == (2,) and rm.training  # mode restored
    assert torch.allclose(rm(["hi", "yo"], [" there", " man"]), s)
    assert torch.allclose(rm.as_reward_fn()(["hi", "yo"], [" there", " man"]), s)
    # batch composition does not change a score
    assert torch.allclose(rm.score(["yo"], [" man"]), s[1:], atol=1e-5)


@pytest.mark.unit
def test_save_load_roundtrip(tmp_path):
    rm = tiny_rm(seed=1)
    path = rm.save(tmp_path / "rm.safetensors")
    again = RewardModel.from_pretrained(path)
    other = tiny_rm(seed=2).load(path)
    s = rm.score(["q"], ["answer"])
    assert torch.equal(again.score(["q"], ["answer"]), s)
    assert torch.equal(other.score(["q"], ["answer"]), s)


@pytest.mark.unit
def test_bad_construction():
    with pytest.raises(ValueError, match="missing"):
        RewardModel(num_tokens=10, dim=8)
    with pytest.raises(ValueError, match="embeds only"):
        RewardModel(num_tokens=100, max_seq_len=8, dim=8, depth=1, heads=1)  # ByteTokenizer has 259 ids


@pytest.mark.unit
@pytest.mark.parametrize(
    "record, message",
    [
        ({"prompt": "p", "ranked_outputs": ["only one"]}, "at least two"),
        ({"prompt": "p", "ranked_outputs": ["a", "b", "a"]}, "duplicate output"),
        ({"prompt": "p", "ranked_outputs": ["a", "  "]}, r"ranked_outputs\[1\] is empty"),
        ({"prompt": 3, "ranked_outputs": ["a", "b"]}, "prompt must be a string"),
        ({"ranked_outputs": ["a", "b"]}, "expected a dict"),
    ],
)
def test_bad_records_name_the_record(record, message):
    good = {"prompt": "p", "ranked_outputs": ["x", "y"]}
    with pytest.raises(ValueError, match=f"record 1.*{message}"):
        load_ranked_records([good, record])


@pytest.mark.unit
def test_bad_record_in_jsonl_names_the_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(
        json.dumps({"prompt": "p", "ranked_outputs": ["x", "y"]})
        + "\n\n"
        + json.dumps({"prompt": "p", "ranked_outputs": ["x", "x"]})
        + "\n"
    )
    with pytest.raises(ValueError, match=r"record 1 \(.*r\.jsonl:3\): duplicate"):
        load_ranked_records(path)
    jpath = tmp_path / "r.json"
    jpath.write_text(json.dumps([{"prompt": "p", "ranked_outputs": ["x", "y", "z"]}]))
    assert load_ranked_records(jpath)[0]["ranked_outputs"] == ["x", "y", "z"]


@pytest.mark.unit
def test_collate_is_rank_major_with_missing_ranks_masked():
    task = RankingTask(ByteTokenizer(), max_ranks_per_batch=4)
    batch = task.collate(
        [{"prompt": "P", "ranked_outputs": ["a1", "a2", "a3"]}, {"prompt": "Q", "ranked_outputs": ["b1", "b2"]}]
    )
    tok = ByteTokenizer()
    decoded = [
        tok.decode(row[:n]) for row, n in zip(batch["input_ids"].tolist(), batch["lengths"].tolist(), strict=True)
    ]
    # rank 0 of both records, then rank 1 of both, then rank 2 of the first only: 5 rows, not 3 pairs + 1
    assert decoded == ["Pa1", "Qb1", "Pa2", "Qb2", "Pa3"]
    assert batch["mask"].tolist() == [[True, True, True], [True, True, False]]
    assert batch["slot"].tolist() == [0, 1, 2, 3, 4]  # (k b) flat slots: rank * b + record


@pytest.mark.unit
def test_large_k_takes_an_ordered_subset():
    torch.manual_seed(0)
    task = RankingTask(ByteTokenizer(), max_ranks_per_batch=3)
    outs = [f"o{i}" for i in range(7)]
    seen = set()
    for _ in range(20):
        _, picked = task._pick_ranks({"prompt": "p", "ranked_outputs": outs})
        idx = [outs.index(o) for o in picked]
        assert len(idx) == 3 and idx == sorted(idx)
        seen.add(tuple(idx))
    assert len(seen) > 3


@pytest.mark.unit
def test_k2_training_loss_is_the_pairwise_loss():
    """With K = 2 the multinomial loss is -log sigmoid(r_chosen - r_rejected) per record, averaged."""
    rm = tiny_rm()
    task = RankingTask(ByteTokenizer())
    recs = [{"prompt": "p", "ranked_outputs": ["good", "bad"]}, {"prompt": "q", "ranked_outputs": ["yes", "no"]}]
    loss, metrics = task.step(rm, task.collate(recs))
    r_c = rm.score(["p", "q"], ["good", "yes"])
    r_r = rm.score(["p", "q"], ["bad", "no"])
    expected = -F.logsigmoid(r_c - r_r).mean()
    assert torch.allclose(loss, expected, atol=1e-5)
    assert torch.allclose(metrics["rewards/margins"], (r_c - r_r).mean(), atol=1e-5)
    assert metrics["rewards/accuracies"].item() == ((r_c > r_r).float().mean()).item()


@pytest.mark.unit
def test_each_output_encoded_once_per_step():
    rm = tiny_rm()
    rows = []
    rm.net.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
    task = RankingTask(ByteTokenizer(), max_ranks_per_batch=4)
    recs = [
        {"prompt": "p", "ranked_outputs": ["a", "b", "c", "d"]},
        {"prompt": "q", "ranked_outputs": ["e", "f", "g"]},
        {"prompt": "r", "ranked_outputs": ["h", "i"]},
    ]
    loss, _ = task.step(rm, task.collate(recs))
    loss.backward()
    assert rows == [4 + 3 + 2]  # one forward, one row per output; the pairs would be 6 + 3 + 1 = 10


@pytest.mark.stage
def test_trainer_encodes_each_output_once_per_step(tmp_path):
    pytest.importorskip("self_rewarding_lm_pytorch.training.loop")
    rm = tiny_rm()
    rows = []
    rm.net.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
    recs = [
        {"prompt": "p", "ranked_outputs": ["a", "b", "c", "d"]},  # K=4 > max_ranks 3: 3 rows
        {"prompt": "q", "ranked_outputs": ["e", "f", "g"]},
        {"prompt": "r", "ranked_outputs": ["h", "i"]},
    ]
    result = RewardModelTrainer(
        rm,
        None,
        recs,
        valid_data=recs,
        max_ranks_per_batch=3,
        batch_size=3,
        num_train_steps=2,
        valid_every=2,
        log_every=1,
        progress=False,
        accelerate_kwargs=dict(cpu=True),
        checkpoint_folder=tmp_path,
    )()
    assert rows[:2] == [3 + 3 + 2] * 2  # training steps; validation follows
    valid = [r for r in result.history if "valid/rewards/accuracies" in r]
    assert valid and "valid/rewards/margins" in valid[0]


@pytest.mark.unit
def test_pairwise_metrics_by_hand():
    """Row [3, 1, 2] best first: pairs 3-1=2 right, 3-2=1 right, 1-2=-1 wrong -> acc 2/3, margin 2/3.
    Row [0, 5, pad]: one pair, 0-5=-5 wrong -> acc 0, margin -5. Means over records: acc 1/3,
    margin (2/3 - 5) / 2 = -13/6."""
    rewards = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 99.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    acc, margin = pairwise_metrics(rewards, mask)
    assert acc.item() == pytest.approx(1 / 3)
    assert margin.item() == pytest.approx(-13 / 6)


def _ranking_records(n, seed):
    """Outputs of 6 letters from {a, b}; more a's ranks better. Prompts are random noise."""
    g = torch.Generator().manual_seed(seed)
    recs = []
    for _ in range(n):
        k = int(torch.randint(2, 5, (1,), generator=g))
        counts = torch.randperm(7, generator=g)[:k].sort(descending=True).values.tolist()
        outs = []
        for c in counts:
            letters = ["a"] * c + ["b"] * (6 - c)
            perm = torch.randperm(6, generator=g).tolist()
            outs.append("".join(letters[i] for i in perm))
        prompt = "".join(chr(ord("k") + int(i)) for i in torch.randint(0, 8, (3,), generator=g))
        recs.append({"prompt": prompt, "ranked_outputs": outs})
    return recs


@pytest.mark.stage
def test_learns_a_ranking_rule_held_out(tmp_path):
    pytest.importorskip("self_rewarding_lm_pytorch.training.loop")
    rm = tiny_rm(seed=3)
    train_path = tmp_path / "train.jsonl"
    train_path.write_text("".join(json.dumps(r) + "\n" for r in _ranking_records(256, seed=0)))
    valid = _ranking_records(64, seed=1)
    trainer = RewardModelTrainer(
        rm,
        ByteTokenizer(),
        train_path,
        valid_data=valid,
        batch_size=16,
        num_train_steps=150,
        learning_rate=3e-3,
        valid_every=150,
        progress=False,
        accelerate_kwargs=dict(cpu=True),
        checkpoint_folder=tmp_path / "run",
    )
    before = pairwise_metrics(*_score_grid(rm, valid))[0].item()
    trainer()
    after = pairwise_metrics(*_score_grid(rm, valid))[0].item()
    print("held-out pairwise accuracy", before, after)
    assert after > 0.85, (before, after)


def _score_grid(rm, records):
    k = max(len(r["ranked_outputs"]) for r in records)
    grid = torch.zeros(len(records), k)
    mask = torch.zeros(len(records), k, dtype=torch.bool)
    for i, r in enumerate(records):
        outs = r["ranked_outputs"]
        grid[i, : len(outs)] = rm.score([r["prompt"]] * len(outs), outs)
        mask[i, : len(outs)] = True
    return grid, mask


@pytest.mark.unit
def test_trainer_rejects_unknown_arguments_and_bad_data():
    rm = tiny_rm()
    pytest.importorskip("self_rewarding_lm_pytorch.training.loop")
    with pytest.raises(TypeError, match="unknown"):
        RewardModelTrainer(rm, None, [{"prompt": "p", "ranked_outputs": ["a", "b"]}], num_steps=3)
    with pytest.raises(ValueError, match="record 0"):
        RewardModelTrainer(rm, None, [{"prompt": "p", "ranked_outputs": ["a"]}])
    with pytest.raises(ValueError, match="valid_data record 1: its prompt leaves no room"):
        ok = {"prompt": "p", "ranked_outputs": ["a", "b"]}
        RewardModelTrainer(rm, None, [ok], valid_data=[ok, {"prompt": "x" * 48, "ranked_outputs": ["a", "b"]}])
