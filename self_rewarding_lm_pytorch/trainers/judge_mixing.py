"""Keeping the judge alive: evaluation (judge) examples ride along with the pairs of a DPO iteration.

DPO trains the policy on its answers and never on its judgments, so a high learning rate can wipe
out the judge format the next self-reward iteration depends on (bench/results/demo.md: at lr 1e-3,
92% of judgments unparsable). Mixing judge examples (prompt -> judgment text, the paper's EFT data)
into each step's NLL term keeps that format trained: loss = DPO + sft_weight * NLL(chosen)
+ judge_weight * NLL(judge examples).

Each pair item carries `per_pair` judge examples, drawn without replacement from a seeded permutation
(cycling when there are more pair slots than examples), so the draw is fixed by the data and the seed:
a resumed run and every process of a sharded one see the same judge rows beside the same pairs.
"""

from __future__ import annotations

import random
from typing import Any

from self_rewarding_lm_pytorch.core.batching import encode_example

__all__ = ["JudgeRecordError", "attach_judge_examples", "encode_judge_examples"]


class JudgeRecordError(ValueError):
    """A judge (evaluation) example that cannot be trained on; the message names the record."""


def encode_judge_examples(records: Any, tokenizer, *, max_seq_len: int | None = None) -> list:
    """(ids, prompt_len) of each {"prompt", "response"} record (a judge prompt and its judgment text);
    `records` is a list or a map-style Dataset with a length."""
    out = []
    for index in range(len(records)):
        record = records[index]
        if not isinstance(record, dict) or not {"prompt", "response"} <= set(record):
            raise JudgeRecordError(f"judge example {index} must be a dict with 'prompt' and 'response', got {record!r}")
        try:
            ids, prompt_len = encode_example(tokenizer, record["prompt"], record["response"], max_len=max_seq_len)
        except (ValueError, TypeError) as e:
            raise JudgeRecordError(f"judge example {index}: {e}") from None
        if prompt_len == 0 or len(ids) == prompt_len:
            raise JudgeRecordError(f"judge example {index}: needs a non-empty prompt and response")
        out.append((ids, prompt_len))
    if not out:
        raise JudgeRecordError("judge examples were given but there are none")
    return out


def attach_judge_examples(pairs: list[dict], judge: list, *, per_pair: int, seed: int) -> list[dict]:
    """Copies of `pairs`, each with `per_pair` encoded judge examples under "judge"."""
    if per_pair < 1:
        raise ValueError(f"judge examples per pair must be >= 1, got {per_pair}")
    rng = random.Random(seed)
    order: list[int] = []
    out = []
    for pair in pairs:
        drawn = []
        for _ in range(per_pair):
            if not order:  # a fresh permutation each time the examples are used up
                order = list(range(len(judge)))
                rng.shuffle(order)
            drawn.append(judge[order.pop()])
        out.append(pair | {"judge": drawn})
    return out
