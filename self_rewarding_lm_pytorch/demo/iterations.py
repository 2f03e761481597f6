"""What explains a DPO iteration's result, read back from its stage folder (report only).

- `pairs_made`; `pairs_correct_first` / `pairs_wrong_first`: pairs whose chosen answer is right and
  rejected wrong, or the reverse (the verifier looks, after the fact, for the report only);
- `reward_agreement`: over every (right, wrong) pair among the model's own candidates of a prompt,
  how often the line's reward (the judge, the consistency share, ...) scores the right one higher
  (a tie counts a half, no score ranks lowest): the judge's agreement with the verifier on the
  model's own answers;
- `dpo_margin`: the mean `rewards/margins` of the iteration's last logged DPO steps.
"""

from __future__ import annotations

import math
from pathlib import Path

from self_rewarding_lm_pytorch.core.files import read_jsonl
from self_rewarding_lm_pytorch.demo.task import is_correct

__all__ = ["iteration_stats", "wilson_interval"]


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (better than the normal one near 0 and 1)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _rank(score) -> float:
    return -math.inf if score is None or (isinstance(score, float) and math.isnan(score)) else score


def _agreement(candidate_rows: list[dict]) -> tuple[float, int]:
    total, count = 0.0, 0
    for row in candidate_rows:
        marks = [(is_correct(row["prompt"], c["response"]), _rank(c["score"])) for c in row["candidates"]]
        for right, a in marks:
            for wrong, b in marks:
                if right and not wrong:
                    total += 1.0 if a > b else 0.5 if a == b else 0.0
                    count += 1
    return (total / count if count else math.nan), count


def iteration_stats(stage_dir: Path) -> dict:
    """The quantities in the module docstring for one preference stage's folder."""
    stage_dir = Path(stage_dir)
    pairs_path, candidates_path = stage_dir / "pairs.jsonl", stage_dir / "candidates.jsonl"
    pairs = read_jsonl(pairs_path) if pairs_path.exists() else []
    correct = [(is_correct(p["prompt"], p["chosen"]), is_correct(p["prompt"], p["rejected"])) for p in pairs]
    agreement, compared = _agreement(read_jsonl(candidates_path)) if candidates_path.exists() else (math.nan, 0)
    metrics_path = stage_dir / "train" / "metrics.jsonl"
    logged = [r for r in read_jsonl(metrics_path) if "rewards/margins" in r] if metrics_path.exists() else []
    tail = logged[-3:]
    return {
        "pairs_made": len(pairs),
        "pairs_correct_first": sum(c and not r for c, r in correct),
        "pairs_wrong_first": sum(r and not c for c, r in correct),
        "reward_agreement": agreement,
        "reward_agreement_pairs": compared,
        "dpo_margin": sum(r["rewards/margins"] for r in tail) / len(tail) if tail else math.nan,
        "dpo_steps": logged[-1]["step"] if logged else 0,
    }
