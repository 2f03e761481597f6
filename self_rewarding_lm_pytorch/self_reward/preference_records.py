"""What preference generation writes: pairs chosen from a chunk's scores, one candidate record per
prompt (every candidate, its judgments, the pair or why none was made), the pair records DPO trains
on, and the stage's statistics. Pure functions of the chunk's outputs (shapes: p prompts, k candidates).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["ChunkPairs", "candidate_records", "pair_record", "preference_stats", "report_preferences", "select_pairs"]

logger = logging.getLogger(__name__)


@dataclass
class ChunkPairs:
    """The pairs of one chunk: prompt -> (chosen, rejected) candidate indices, and the prompts whose
    pair was dropped because both texts are equal or the chosen one did not finish."""

    pairs: dict[int, tuple[int, int]] = field(default_factory=dict)
    identical: set[int] = field(default_factory=set)
    unfinished: set[int] = field(default_factory=set)

    def drop_reason(self, p: int, scores: Tensor) -> str | None:
        """None when prompt `p` has a pair; else why not (scores: its (k,) candidate scores)."""
        if p in self.pairs:
            return None
        if p in self.identical:
            return "identical_pair"
        if p in self.unfinished:
            return "unfinished_chosen"
        valid = scores[~scores.isnan()]
        if valid.numel() < 2:
            return "fewer_than_2_valid_scores"
        return "tied_scores" if bool((valid == valid[0]).all()) else "rejected_by_pair_policy"


def select_pairs(
    pair_policy: Callable,
    scores: Tensor,
    lengths: Tensor,
    responses: list[str],
    finished: list[bool],
    *,
    check_finished: bool,
) -> ChunkPairs:
    """Validate what `pair_policy(scores (p, k), lengths (p, k))` proposes and keep the trainable pairs.

    A pair of equal texts is dropped (its DPO term is exactly 0, only the NLL of one text would remain);
    with `check_finished`, so is one whose chosen candidate was cut at max_new_tokens (not an answer to teach).
    """
    num_prompts, k = scores.shape
    out = ChunkPairs()
    for pair in pair_policy(scores, lengths):
        p, c, r = (int(x) for x in pair)
        taken = p in out.pairs or p in out.identical or p in out.unfinished
        in_range = 0 <= p < num_prompts and 0 <= c < k and 0 <= r < k
        if not in_range or c == r or taken or not (responses[p * k + c] and responses[p * k + r]):
            raise ValueError(f"pair policy {pair_policy!r} returned an invalid pair {tuple(pair)}")
        if responses[p * k + c] == responses[p * k + r]:
            out.identical.add(p)
        elif check_finished and not finished[p * k + c]:
            out.unfinished.add(p)
        else:
            out.pairs[p] = (c, r)
    return out


def json_float(x) -> float | None:
    """A score for JSON: NaN (no valid score) becomes null."""
    x = float(x)
    return None if math.isnan(x) else x


def candidate_records(
    items: list[tuple[int, str, list[int]]],
    responses: list[str],
    scores: Tensor,
    lengths: Tensor,
    judgments: tuple[list[list[str]], list[list[float | None]]],
    finished: list[bool],
    chosen: ChunkPairs,
) -> list[dict]:
    """One `candidates.jsonl` record per prompt of the chunk: every candidate with its score, judge texts
    and parsed scores, and the pair (candidate indices) or why the prompt made none."""
    texts, parsed = judgments
    k = scores.shape[1]
    records = []
    for p, (index, prompt, _) in enumerate(items):
        cands = [
            {
                "response": responses[p * k + j],
                "length": int(lengths[p, j]),
                "score": json_float(scores[p, j]),
                "judgments": texts[p * k + j],
                "parsed": parsed[p * k + j],
                "finished": finished[p * k + j],
            }
            for j in range(k)
        ]
        pair = chosen.pairs.get(p)
        records.append(
            {
                "prompt_index": index,
                "prompt": prompt,
                "candidates": cands,
                "pair": None if pair is None else {"chosen_idx": pair[0], "rejected_idx": pair[1]},
                "dropped": chosen.drop_reason(p, scores[p]),
            }
        )
    return records


def pair_record(rec: dict) -> dict:
    """The `pairs.jsonl` record (what DPO trains on) of a candidate record that has a pair."""
    chosen, rejected = (rec["candidates"][rec["pair"][key]] for key in ("chosen_idx", "rejected_idx"))
    return {
        "prompt": rec["prompt"],
        "chosen": chosen["response"],
        "rejected": rejected["response"],
        "chosen_score": chosen["score"],
        "rejected_score": rejected["score"],
        "chosen_length": chosen["length"],
        "rejected_length": rejected["length"],
        # an unfinished response is trained without an EOS appended (it did not end)
        "chosen_finished": chosen.get("finished", True),
        "rejected_finished": rejected.get("finished", True),
        "prompt_index": rec["prompt_index"],
        "pass": rec["pass"],
    }


def preference_stats(records: list[dict], pair_records: list[dict], counts: Counter, **extra) -> dict:
    """`preference_stats.json`: what was made, what was dropped and why, and the pairs' mean scores/lengths."""

    def mean(key):
        values = [r[key] for r in pair_records if r[key] is not None]
        return sum(values) / len(values) if values else None

    judgments = counts["judgments"]
    dropped = Counter(r["dropped"] for r in records if r["dropped"])
    return {
        "num_pairs": len(pair_records),
        **extra,
        "prompts_processed": len(records),
        "prompts_dropped": dict(dropped),
        "identical_pairs": dropped["identical_pair"],  # chosen text == rejected text: nothing to prefer
        "candidates": counts["candidates"],
        "candidates_truncated": counts["candidates_truncated"],
        "candidates_empty": counts["candidates_empty"],
        "candidates_unfinished": counts["candidates_unfinished"],
        "judgments": judgments,
        "parse_failures": counts["parse_failures"],
        "parse_failure_rate": counts["parse_failures"] / judgments if judgments else None,
        "judge_skipped": counts["judge_skipped"],
        "mean_chosen_score": mean("chosen_score"),
        "mean_rejected_score": mean("rejected_score"),
        "mean_chosen_length": mean("chosen_length"),
        "mean_rejected_length": mean("rejected_length"),
    }


def report_preferences(stats: dict):
    """One log line; a warning when no pair was made (the DPO stage will have nothing to train on)."""
    msg = (
        f"preference generation: {stats['num_pairs']} pairs ({stats['stop_reason']}) from "
        f"{stats['prompts_processed']} prompts; dropped {stats['prompts_dropped']}; "
        f"parse-failure rate {stats['parse_failure_rate']}"
    )
    if stats["num_pairs"] == 0:
        warnings.warn(f"no preference pairs were made: {msg}", stacklevel=3)
    else:
        logger.info(msg)
