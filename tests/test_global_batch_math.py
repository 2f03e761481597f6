"""The maths of global-batch PPO on shards of a batch, against hand derivations and against the
unsharded computation. Two "processes" run in threads whose sums over processes meet at a barrier
(what an all-reduce does), so no process group is needed."""

import math
import threading
from types import SimpleNamespace

import pytest
import torch

from self_rewarding_lm_pytorch.core.losses import masked_mean, ppo_policy_loss, ppo_value_loss, whiten
from self_rewarding_lm_pytorch.rl.global_batch import gather_rows, global_means, minibatch_share

pytestmark = pytest.mark.unit


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def in_lockstep(fn, shards: list) -> list:
    """`fn(shard, rank, exchange)` per shard, each in its own thread; `exchange(x)` returns every thread's
    `x` of the same call, in rank order (the collective the sums and gathers are built from)."""
    n = len(shards)
    barrier, slots, results, errors = threading.Barrier(n), [None] * n, [None] * n, []

    def worker(rank):
        def exchange(x):
            slots[rank] = x
            barrier.wait()
            everything = list(slots)
            barrier.wait()  # nobody overwrites a slot before everyone has read them all
            return everything

        try:
            results[rank] = fn(shards[rank], rank, exchange)
        except Exception as error:  # re-raised below, in the test's thread
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(rank,)) for rank in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def summed(exchange):
    return lambda x: sum(exchange(x))


def test_whitening_two_shards_is_whitening_their_concatenation():
    """Masked-in values 1, 2 (shard 0; its 100 is masked out) and 3, 6 (shard 1): mean 3, squared
    deviations 4 + 1 + 0 + 9 = 14, Bessel variance 14 / 3, so x -> (x - 3) / sqrt(14 / 3)."""
    shards = [
        (t(1.0, 2.0, 100.0)[None], torch.tensor([[True, True, False]])),
        (t(3.0, 6.0)[None], torch.ones(1, 2, dtype=torch.bool)),
    ]
    got = in_lockstep(lambda s, rank, ex: whiten(*s, sum_over_processes=summed(ex)), shards)
    std = math.sqrt(14 / 3)
    torch.testing.assert_close(got[0], t(-2 / std, -1 / std, 0.0)[None], atol=1e-7, rtol=0)
    torch.testing.assert_close(got[1], t(0.0, 3 / std)[None], atol=1e-7, rtol=0)

    # the same as one process whitening the two rows padded into one batch
    values = torch.stack([t(1.0, 2.0, 100.0), t(3.0, 6.0, 0.0)])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    whole = whiten(values, mask)
    torch.testing.assert_close(got[0][0], whole[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(got[1][0], whole[1, :2], atol=1e-12, rtol=0)

    not_shifted = in_lockstep(lambda s, rank, ex: whiten(*s, shift_mean=False, sum_over_processes=summed(ex)), shards)
    torch.testing.assert_close(not_shifted[1], t(3.0, 3.0 + 3 / std)[None], atol=1e-7, rtol=0)


def test_whitening_counts_the_values_of_every_shard():
    """One masked-in value per shard is too few alone, but two together are enough:
    1 and 3 -> -1/sqrt(2), +1/sqrt(2)."""
    shards = [(t(1.0)[None], torch.ones(1, 1, dtype=torch.bool)), (t(3.0)[None], torch.ones(1, 1, dtype=torch.bool))]
    got = in_lockstep(lambda s, rank, ex: whiten(*s, sum_over_processes=summed(ex)), shards)
    assert got[0].item() == pytest.approx(-1 / math.sqrt(2), abs=1e-7)
    assert got[1].item() == pytest.approx(1 / math.sqrt(2), abs=1e-7)
    with pytest.raises(ValueError, match="at least 2"):
        whiten(*shards[0])


def test_whitening_without_processes_is_the_plain_arithmetic():
    torch.manual_seed(0)
    values, mask = torch.randn(3, 7), torch.rand(3, 7) > 0.3
    assert torch.equal(whiten(values, mask), whiten(values, mask, sum_over_processes=lambda x: x))


def test_token_mean_shares_sum_to_the_global_mean():
    """Shard 0 holds tokens 1, 2 and shard 1 holds 3, 6 (of 4 in all): shares 3/4 and 9/4, summing to the mean 3.
    A per-shard mean would average 1.5 and 4.5 to the same 3 only because the shards hold as many tokens;
    with shard 1 holding one token (3) the global mean is 2, the mean of shard means 2.25."""
    ones = torch.ones(1, 2, dtype=torch.bool)
    four = torch.tensor(4.0, dtype=torch.float64)
    assert masked_mean(t(1.0, 2.0)[None], ones, count=four).item() == 0.75
    assert masked_mean(t(3.0, 6.0)[None], ones, count=four).item() == 2.25
    three = torch.tensor(3.0, dtype=torch.float64)
    uneven = masked_mean(t(1.0, 2.0)[None], ones, count=three) + masked_mean(
        t(3.0, 99.0)[None], torch.tensor([[True, False]]), count=three
    )
    assert uneven.item() == 2.0
    with pytest.raises(ValueError, match="dim"):
        masked_mean(t(1.0, 2.0)[None], ones, dim=1, count=four)


def test_ppo_losses_over_shards_sum_to_the_loss_of_the_whole_minibatch():
    """Ratio 1 everywhere: the policy loss is -mean(advantages) = -(1 + 2 + 3) / 3 = -2 over both shards;
    the value loss is 0.5 mean((V - R)^2) = 0.5 (1 + 4 + 9) / 3 = 7/3."""
    lp = [t(0.5, 0.25)[None], t(0.1)[None]]
    adv = [t(1.0, 2.0)[None], t(3.0)[None]]
    masks = [torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool)]
    total = torch.tensor(3.0, dtype=torch.float64)
    policy = [ppo_policy_loss(lp[i], lp[i], adv[i], masks[i], total_tokens=total)[0] for i in (0, 1)]
    assert policy[0].item() == -1.0 and policy[1].item() == -1.0
    values, returns = [t(1.0, 2.0)[None], t(3.0)[None]], [t(0.0, 0.0)[None], t(0.0)[None]]
    value = [ppo_value_loss(values[i], values[i], returns[i], masks[i], total_tokens=total)[0] for i in (0, 1)]
    assert sum(value).item() == pytest.approx(7 / 3, abs=1e-12)
    whole_mask = torch.tensor([[True, True], [True, False]])
    pad = torch.zeros(1, 1, dtype=torch.float64)
    whole = ppo_value_loss(
        torch.cat([values[0], torch.cat([values[1], pad], 1)]),
        torch.cat([values[0], torch.cat([values[1], pad], 1)]),
        torch.zeros(2, 2, dtype=torch.float64),
        whole_mask,
    )[0]
    assert sum(value).item() == pytest.approx(whole.item(), abs=1e-12)


def test_each_process_takes_a_contiguous_share_of_a_minibatch():
    rows = torch.tensor([5, 2, 7, 1, 3])
    shares = [minibatch_share(rows, rank, 2) for rank in (0, 1)]
    assert shares[0][0].tolist() == [5, 2] and shares[1][0].tolist() == [7, 1, 3]
    assert not shares[0][1] and not shares[1][1]
    # one row for two processes: the process without a row runs the first with nothing counted
    (lone, lone_empty), (last, last_empty) = (
        minibatch_share(torch.tensor([4]), 0, 2),
        minibatch_share(torch.tensor([4]), 1, 2),
    )
    assert lone.tolist() == [4] and lone_empty and last.tolist() == [4] and not last_empty


def test_gathered_rows_are_every_process_rows_in_rank_order():
    """Shard 0 has 2 rows of 3 columns, shard 1 one row of 4: every process gets the 3 rows, padded to 4
    columns with 0 / False; no padding row survives."""
    shards = [
        {
            "ids": torch.tensor([[1, 2, 3], [4, 5, 6]]),
            "mask": torch.tensor([[True, True, False], [True, False, False]]),
        },
        {"ids": torch.tensor([[7, 8, 9, 10]]), "mask": torch.tensor([[True, True, True, True]])},
    ]

    def gather(shard, rank, exchange):
        accelerator = SimpleNamespace(num_processes=2, gather=lambda x: torch.cat(exchange(x)))
        return gather_rows(shard, accelerator)

    for got in in_lockstep(gather, shards):
        assert got["ids"].tolist() == [[1, 2, 3, 0], [4, 5, 6, 0], [7, 8, 9, 10]]
        assert got["mask"].dtype == torch.bool
        assert got["mask"].tolist() == [[True, True, False, False], [True, False, False, False], [True] * 4]


def test_step_statistics_are_means_over_every_process_rows():
    """Shard 0: rows scored [yes, no] with values 1, 100 and tokens 2, 4 (mask [1, 1]) in its first row;
    shard 1: one scored row with value 4 and token 6. Row mean (1 + 4) / 2 = 2.5 (a mean of shard means
    would be the same here; the tokens differ: (2 + 4 + 6) / 3 = 4, not (3 + 6) / 2 = 4.5); counts sum."""
    shards = [
        (
            t(1.0, 100.0),
            torch.tensor([True, False]),
            t(2.0, 4.0, 0.0, 9.0).view(2, 2),
            torch.tensor([[1, 1], [0, 0]]).bool(),
        ),
        (t(4.0), torch.tensor([True]), t(6.0, 0.0).view(1, 2), torch.tensor([[True, False]])),
    ]

    def means(shard, rank, exchange):
        row, rows, token, tokens = shard
        counts = {"unscored": (~rows).sum()}
        return global_means({"row": row}, rows, {"token": token}, tokens, counts, sum_over_processes=summed(exchange))

    for got in in_lockstep(means, shards):
        assert got["row"].item() == 2.5 and got["token"].item() == 4.0 and got["unscored"].item() == 1.0
    alone = global_means({"row": shards[0][0]}, shards[0][1], {"token": shards[0][2]}, shards[0][3])
    assert alone == {"row": 1.0, "token": 3.0}
