"""Does the demo's judge work the sum out, or copy the answer it judges? A probe of a finished run's M1.

    python bench/demo_judge_probe.py --run /tmp/demo/default [--prompts 300]

The judge is shown each held-out prompt three times, with the right answer, a plausible mistake (the
kind its seed examples hold) and a number drawn uniformly from 0 .. the largest sum, and judges greedily.
For each kind: how often the sum it writes (the first all-digit word of its judgment: the whole
judgment's first word in the one-shot format of round 5, the word after the column steps since round 6)
is the true sum, how often it equals the judged answer, and how often its score is the right verdict.
A judge that computes writes the true sum whatever it is shown; one that copies writes the judged answer.
Then, from the run's first self-reward iteration (`self-reward/03-self-reward-dpo`), how the judge scored
the model's own candidates: the share of right ones scored 5, of wrong ones scored 5 (false positives),
and the share of pairs whose chosen answer is right. Every figure printed is measured (bench/results/demo.md,
round 6).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch


def written_sum(judgment: str) -> str | None:
    """The first all-digit word of a judgment: the sum the judge wrote."""
    return next((word for word in judgment.split() if word.isdigit()), None)


@torch.no_grad()
def probe(model, prompts: list[str], seed: int = 0) -> dict:
    from self_rewarding_lm_pytorch.core.sampling import sample
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.demo.task import AdditionTask, demo_reward_config, is_correct

    tok, config, task, rng = ByteTokenizer(), demo_reward_config(), AdditionTask(max_digits=2), random.Random(seed)
    kinds = {
        "right": [task.answer(p) for p in prompts],
        "plausible mistake": [task.wrong_answer(p, rng) for p in prompts],
        "random number": [task.random_wrong_answer(p, rng) for p in prompts],
    }
    out = {}
    for kind, answers in kinds.items():
        rendered = [config.render(prompt=p, response=a) for p, a in zip(prompts, answers, strict=True)]
        ids = [torch.tensor(tok.encode(r), dtype=torch.long) for r in rendered]
        judgments = sample(model, ids, max_new_tokens=40, temperature=0.0, eos_id=tok.eos_id, pad_id=tok.pad_id).texts(
            tok
        )
        sums = [written_sum(j) for j in judgments]
        verdicts = [config.parse(j) for j in judgments]
        truth = [5.0 if is_correct(p, a) else 1.0 for p, a in zip(prompts, answers, strict=True)]
        n = len(prompts)
        out[kind] = {
            "sum_right": sum(s == task.answer(p) for s, p in zip(sums, prompts, strict=True)) / n,
            "sum_is_judged_answer": sum(s == a for s, a in zip(sums, answers, strict=True)) / n,
            "verdict_right": sum(v == t for v, t in zip(verdicts, truth, strict=True)) / n,
        }
    return out


def own_candidates(stage_dir: Path) -> dict:
    """How the judge scored the model's own candidates in one self-reward iteration's folder."""
    from self_rewarding_lm_pytorch.core.files import read_jsonl
    from self_rewarding_lm_pytorch.demo.task import CORRECT_SCORE, is_correct

    right, wrong = [], []
    for row in read_jsonl(stage_dir / "candidates.jsonl"):
        for c in row["candidates"]:
            (right if is_correct(row["prompt"], c["response"]) else wrong).append(c["score"] == CORRECT_SCORE)
    pairs = read_jsonl(stage_dir / "pairs.jsonl")
    return {
        "right_scored_top": sum(right) / max(len(right), 1),
        "wrong_scored_top": sum(wrong) / max(len(wrong), 1),
        "chosen_right": sum(is_correct(p["prompt"], p["chosen"]) for p in pairs) / max(len(pairs), 1),
        "pairs": len(pairs),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a finished `srlm demo` run folder (its M1 is probed)")
    p.add_argument("--prompts", type=int, default=300, help="held-out prompts to probe with")
    a = p.parse_args()
    torch.set_num_threads(1)

    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.demo.line_runs import build_model
    from self_rewarding_lm_pytorch.demo.run import PRESETS
    from self_rewarding_lm_pytorch.training.checkpoint import load_model

    model = build_model(PRESETS["default"], ByteTokenizer().vocab_size)
    load_model(model, a.run / "self-reward" / "01-sft" / "model.safetensors")
    model.eval()
    prompts = [json.loads(line)["prompt"] for line in (a.run / "data" / "heldout.jsonl").open()][: a.prompts]
    for kind, m in probe(model, prompts).items():
        print(
            f"{kind:>18}: sum right {100 * m['sum_right']:.1f}%, sum = judged answer "
            f"{100 * m['sum_is_judged_answer']:.1f}%, verdict right {100 * m['verdict_right']:.1f}%",
            flush=True,
        )
    stage_dir = a.run / "self-reward" / "03-self-reward-dpo"
    if (stage_dir / "candidates.jsonl").exists():
        m = own_candidates(stage_dir)
        print(
            f"own candidates (iteration 1): right scored 5 {100 * m['right_scored_top']:.1f}%, wrong scored 5 "
            f"{100 * m['wrong_scored_top']:.1f}%; chosen answer right in {100 * m['chosen_right']:.1f}% of "
            f"{m['pairs']} pairs",
            flush=True,
        )


if __name__ == "__main__":
    main()
