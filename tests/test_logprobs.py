import math

import pytest
import torch

from self_rewarding_lm_pytorch.core import logprobs as lp_module
from self_rewarding_lm_pytorch.core.batching import collate_examples
from self_rewarding_lm_pytorch.core.logprobs import model_sequence_logprobs, sequence_logprobs, token_logprobs

pytestmark = pytest.mark.unit

LOG2 = math.log(2.0)


def five_token_case():
    """Sequence [p0 p1 r0 r1 PAD] over a 2-token vocabulary, ids [1, 0, 1, 0, 1].

    logits[:, t] predicts token t+1. Row t gives its target probability q_t, with an offset of +3 on
    both logits (a softmax ignores it, so logsumexp must undo it):
        row 0 -> p1  q = 1/2      row 1 -> r0  q = 1/4
        row 2 -> r1  q = 1/8      row 3 -> PAD q = 1/16      row 4 predicts nothing
    Only r0 and r1 count: sum = log(1/4) + log(1/8) = -5 log 2, mean = -2.5 log 2.
    Counting p1 would add -log 2, counting PAD -4 log 2, and an unshifted gather would read rows 2
    and 3 for r0 and r1 and give a different number.
    """
    ids = torch.tensor([[1, 0, 1, 0, 1]])
    is_response = torch.tensor([[False, False, True, True, False]])
    qs = [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 2]
    logits = torch.zeros(1, 5, 2)
    for t, q in enumerate(qs[:4]):
        target = ids[0, t + 1]
        logits[0, t, target] = math.log(q) + 3.0
        logits[0, t, 1 - target] = math.log(1 - q) + 3.0
    return logits, ids, is_response


def test_five_token_counts_exactly_the_response():
    logits, ids, is_response = five_token_case()
    assert sequence_logprobs(logits, ids, is_response).item() == pytest.approx(-5 * LOG2, abs=1e-5)
    assert sequence_logprobs(logits, ids, is_response, reduction="mean").item() == pytest.approx(-2.5 * LOG2, abs=1e-5)


def test_token_logprobs_hand_values():
    """token_logprobs gives log q_t for targets 1..4: log(1/2), log(1/4), log(1/8), log(1/16)."""
    logits, ids, _ = five_token_case()
    expected = torch.tensor([[-1.0, -2.0, -3.0, -4.0]]) * LOG2
    torch.testing.assert_close(token_logprobs(logits, ids), expected, atol=1e-5, rtol=0)


def test_matches_log_softmax_reference_on_random_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g) * 4
    ids = torch.randint(0, 11, (3, 7), generator=g)
    is_response = torch.rand(3, 7, generator=g) > 0.4
    is_response[:, 0] = False
    ref = logits.log_softmax(-1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    expected = (ref * is_response[:, 1:]).sum(-1)
    torch.testing.assert_close(sequence_logprobs(logits, ids, is_response), expected, atol=1e-5, rtol=1e-5)


def test_low_precision_logits_chunked_logsumexp(monkeypatch):
    """bf16 logits go through a chunked fp32 logsumexp; 3 rows per chunk must equal one big fp32 pass."""
    monkeypatch.setattr(lp_module, "_FP32_CHUNK_ROWS", 3)
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 6, 9, generator=g) * 3).bfloat16()
    ids = torch.randint(0, 9, (2, 6), generator=g)
    is_response = torch.ones(2, 6, dtype=torch.bool)
    is_response[:, 0] = False
    out = sequence_logprobs(logits, ids, is_response)
    assert out.dtype == torch.float32
    expected = sequence_logprobs(logits.float(), ids, is_response)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # gradients through the checkpointed chunks equal those of the fp32 computation
    low = logits.clone().requires_grad_(True)
    high = logits.float().requires_grad_(True)
    sequence_logprobs(low, ids, is_response).sum().backward()
    sequence_logprobs(high, ids, is_response).sum().backward()
    torch.testing.assert_close(low.grad.float(), high.grad, atol=1e-2, rtol=1e-2)


def test_batch_with_different_prompt_lengths_equals_rows_alone(tiny_model):
    tiny_model.eval()
    examples = [([5, 6, 7, 8, 9, 10], 2), ([11, 12, 13, 14], 3), ([20, 21, 22, 23, 24, 25, 26, 27, 28], 5)]
    batch = collate_examples(examples, pad_id=256)
    with torch.no_grad():
        batched = model_sequence_logprobs(tiny_model, batch["input_ids"], batch["is_response"])
        batched_mean = model_sequence_logprobs(tiny_model, batch["input_ids"], batch["is_response"], reduction="mean")
        for row, (ids, prompt_len) in enumerate(examples):
            alone = collate_examples([(ids, prompt_len)], pad_id=256)
            single = model_sequence_logprobs(tiny_model, alone["input_ids"], alone["is_response"])
            assert batched[row].item() == pytest.approx(single.item(), abs=1e-5)
            n_resp = len(ids) - prompt_len
            assert batched_mean[row].item() == pytest.approx(single.item() / n_resp, abs=1e-5)


def test_gradient_reaches_only_counted_positions():
    logits, ids, is_response = five_token_case()
    logits.requires_grad_(True)
    sequence_logprobs(logits, ids, is_response).backward()
    touched = logits.grad.abs().sum(-1)[0] > 0
    # rows 1 and 2 predict r0 and r1; no other row may receive gradient
    assert touched.tolist() == [False, True, True, False, False]


def test_empty_response_row_is_zero_for_both_reductions():
    logits = torch.randn(1, 4, 5)
    ids = torch.tensor([[1, 2, 3, 4]])
    none = torch.zeros(1, 4, dtype=torch.bool)
    assert sequence_logprobs(logits, ids, none).item() == 0.0
    assert sequence_logprobs(logits, ids, none, reduction="mean").item() == 0.0


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(reduction="max"), ValueError),
        (dict(is_response=torch.ones(1, 5, dtype=torch.bool)), ValueError),  # token 0 marked
        (dict(is_response=torch.zeros(1, 4, dtype=torch.bool)), ValueError),  # shape
        (dict(is_response=torch.zeros(1, 5)), TypeError),  # not bool
        (dict(input_ids=torch.zeros(1, 5)), TypeError),  # float ids
        (dict(logits=torch.zeros(5, 2)), ValueError),  # not (b, n, v)
    ],
)
def test_bad_inputs_raise(kwargs, error):
    logits, ids, is_response = five_token_case()
    args = dict(logits=logits, input_ids=ids, is_response=is_response) | kwargs
    with pytest.raises(error):
        sequence_logprobs(**args)


def test_no_full_fp32_vocab_tensor_is_saved_for_backward(monkeypatch):
    """With bf16 logits under autograd, nothing of fp32 with the size of the (b, n-1, v) logits may be
    kept for backward, in total over all chunks (a log_softmax would keep exactly that; so would
    logsumexp on fp32 chunk copies without the checkpoint)."""
    monkeypatch.setattr(lp_module, "_FP32_CHUNK_ROWS", 4)
    logits = torch.randn(2, 6, 50).bfloat16().requires_grad_(True)
    ids = torch.randint(0, 50, (2, 6))
    is_response = torch.ones(2, 6, dtype=torch.bool)
    is_response[:, 0] = False
    saved = []

    def pack(t):
        saved.append((t.dtype, t.numel()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = sequence_logprobs(logits, ids, is_response)
    full = 2 * 5 * 50
    assert sum(n for dtype, n in saved if dtype == torch.float32) < full // 4  # only (b, n)-sized fp32 tensors
    out.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad.float()).all()
