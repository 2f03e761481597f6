"""Scheduling the chunks of one preference-generation run: in order, streamed to disk, resumable,
and split across processes.

A chunk is a few prompts, keyed `(pass, chunk)`, whose randomness comes from its key alone. So any
process can make any chunk, and a run split over N processes, or resumed after a crash, produces
exactly the records of one uninterrupted process.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from self_rewarding_lm_pytorch.core.distributed import Shard

__all__ = ["Shard", "resume_chunks", "run_chunks"]

ChunkKey = tuple[int, int]


def resume_chunks(path: Path, chunk_prompts: dict[ChunkKey, list[int]], texts: list) -> dict[ChunkKey, list[dict]]:
    """Complete chunks already in candidates.jsonl (the file is rewritten without a partial chunk)."""
    from self_rewarding_lm_pytorch.core.files import resume_jsonl

    def complete(records: list[dict]) -> list[dict]:
        by_chunk: dict[ChunkKey, list[dict]] = {}
        for rec in records:
            by_chunk.setdefault((rec["pass"], rec["chunk"]), []).append(rec)
        done = {}
        for key, recs in by_chunk.items():
            if [r["prompt_index"] for r in recs] == chunk_prompts.get(key):
                if any(texts[r["prompt_index"]] != r["prompt"] for r in recs):
                    raise ValueError(
                        f"{path} was made from different prompts; cannot resume it (delete it to start over)"
                    )
                done[key] = recs
        return [r for key in sorted(done) for r in done[key]]

    done: dict[ChunkKey, list[dict]] = {}
    for rec in resume_jsonl(path, complete):
        done.setdefault((rec["pass"], rec["chunk"]), []).append(rec)
    return done


def _make(process: Callable, key: ChunkKey, items: list) -> tuple[list[dict], Counter]:
    records, counts = process(key, items)
    for i, rec in enumerate(records):
        # The chunk's counts ride on its first record, so a resumed run can restore them.
        rec.update({"pass": key[0], "chunk": key[1]} | ({"counts": dict(counts)} if i == 0 else {}))
    return records, counts


def run_chunks(
    plan: list[tuple[ChunkKey, list]],
    process: Callable[[ChunkKey, list], tuple[list[dict], Counter]],
    *,
    done: dict[ChunkKey, list[dict]],
    cand_path: Path | None,
    num_pairs: int | None,
    shard: Shard | None = None,
    progress: bool = True,
) -> tuple[list[dict], Counter]:
    """Chunks in plan order until `num_pairs` pairs exist, each finished chunk streamed to `cand_path`.

    Processes work in rounds of `world` chunks, one each, then gather them. A round may make more
    chunks than needed; those past the point where enough pairs exist are dropped, exactly where a
    single process would have stopped.
    """
    from self_rewarding_lm_pytorch.core.files import JsonlAppender, atomic_write_text

    shard = shard or Shard()
    if cand_path is not None and not done:
        atomic_write_text(cand_path, "")  # a fresh run never appends to an old file
    appender = JsonlAppender(cand_path) if cand_path is not None else None
    records: list[dict] = []
    counts: Counter[str] = Counter()
    made = 0
    bar = tqdm(total=sum(len(items) for _, items in plan), desc="preferences", disable=not progress, unit="prompt")
    try:
        for start in range(0, len(plan), shard.world):
            if num_pairs is not None and made >= num_pairs:
                break
            round_ = plan[start : start + shard.world]
            mine = round_[shard.rank] if shard.rank < len(round_) else None
            made_here = None if mine is None or mine[0] in done else (mine[0], _make(process, *mine))
            fresh = dict(r for r in shard.gather(made_here) if r is not None)
            for key, items in round_:
                if num_pairs is not None and made >= num_pairs:
                    break
                if key in done:
                    chunk_records = done[key]
                    counts.update({k: v for r in chunk_records for k, v in r.get("counts", {}).items()})
                else:
                    chunk_records, chunk_counts = fresh[key]
                    counts.update(chunk_counts)
                    for rec in chunk_records:
                        if appender is not None:
                            appender.write(rec)
                records.extend(chunk_records)
                made += sum(r["pair"] is not None for r in chunk_records)
                bar.update(len(items))
                bar.set_postfix(pairs=made)
    finally:
        bar.close()
        if appender is not None:
            appender.close()
    return records, counts
