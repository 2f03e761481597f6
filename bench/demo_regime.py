"""Which M1 gives the demo's recipe something to add? Seed-set size x SFT length, then one line's iterations.

    python bench/demo_regime.py --out /tmp/regime/r.jsonl --instruction 1000 --evaluation 1500 --sft-steps 2400 \\
        --save m1.safetensors --lines oracle consistency control --dpo-lr 1e-3 --dpo-schedule cosine \\
        --dpo-warmup 5 --dpo-epochs 4 --dpo-max-steps 300 --candidates 8 --temperature 1.0 --pairs 1200 --replay all

Builds the demo's seed data (instruction answers, judge examples, prompt-writing examples) from one pool
of distinct prompts split at random (so held-out prompts follow the training distribution), trains M1 by
SFT as the demo does, and reports on the held-out prompts: greedy accuracy, any-of-8 at temperature 1
(pass@8), and greedy accuracy on the seed instruction prompts (has SFT converged on them?). Then, from M1,
each named line runs `--iterations` iterations on `--new-prompts` prompts outside the seed and held-out
sets (a stand-in for the prompts the model writes itself):
- `oracle`: `--candidates` samples at `--temperature`, best vs worst by the verifier, DPO + NLL on the
  chosen (RPO);
- `consistency`: 8 candidates at T 1, best vs worst by the share of samples agreeing (`--consistency-margin`);
- `control`: as many further SFT steps as the oracle's first iteration took, on the replayed seed data
  alone (`--replay`), no pairs (does M1 still gain from its own seed data? then a gain of the lines is
  not the pairs').
`--replay instruction|all` mixes `--replay-per-pair` seed examples per pair into every DPO step.
`--save` writes M1, `--m1` starts from a saved one (then SFT is skipped).
Every figure printed and appended to `--out` is measured by the run (bench/results/demo.md, round 5).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def _data(a):
    from self_rewarding_lm_pytorch.demo.task import AdditionTask, demo_reward_config

    task, config = AdditionTask(a.max_digits), demo_reward_config()
    data = task.build(
        num_instruction=a.instruction,
        num_evaluation=a.evaluation,
        num_self_reward_prompts=a.new_prompts,
        num_heldout=a.heldout,
        seed=a.seed,
        render=lambda p, r: config.render(prompt=p, response=r),
    )
    seed_prompts = [r["prompt"] for r in data.instruction]
    writing = task.prompt_writing_examples(seed_prompts, a.writing, 4, random.Random(a.seed + 1))
    return data, writing


@torch.no_grad()
def measure(model, prompts: list[str], samples: int = 8) -> dict:
    from self_rewarding_lm_pytorch.core.sampling import sample
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.demo.task import is_correct

    tok = ByteTokenizer()
    ids = [torch.tensor(tok.encode(p), dtype=torch.long) for p in prompts]
    greedy = sample(model, ids, max_new_tokens=6, temperature=0.0, eos_id=tok.eos_id, pad_id=tok.pad_id)
    g = [is_correct(p, r) for p, r in zip(prompts, greedy.texts(tok), strict=True)]
    out = {"acc": sum(g) / len(g)}
    if samples:
        gen = torch.Generator().manual_seed(0)
        s = sample(
            model,
            ids,
            max_new_tokens=6,
            num_samples=samples,
            temperature=1.0,
            eos_id=tok.eos_id,
            pad_id=tok.pad_id,
            generator=gen,
        )
        texts = s.texts(tok)
        ok = [is_correct(prompts[i // samples], t) for i, t in enumerate(texts)]
        out["pass8"] = sum(any(ok[i * samples : (i + 1) * samples]) for i in range(len(prompts))) / len(prompts)
        # majority vote of the samples (the consistency line's label), right?
        from collections import Counter

        maj = []
        for i in range(len(prompts)):
            answers = [t.strip() for t in texts[i * samples : (i + 1) * samples]]
            maj.append(is_correct(prompts[i], Counter(answers).most_common(1)[0][0]))
        out["maj8"] = sum(maj) / len(maj)
    model.train()
    return out


def sft(model, records, steps, a, lr=None, schedule="cosine"):
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.trainers.sft import SFTTrainer

    SFTTrainer(
        model,
        records,
        tokenizer=ByteTokenizer(),
        accelerate_kwargs={"cpu": True},
        num_train_steps=steps,
        batch_size=a.batch,
        learning_rate=lr or a.lr,
        lr_schedule=schedule,
        warmup_steps=min(100, steps // 10),
        weight_decay=a.weight_decay,
        log_every=100,
        progress=False,
        seed=a.seed,
    )()
    model.train()


def pairs_for(model, prompts, line, a, it):
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.demo.task import consistency_reward, verifier_reward
    from self_rewarding_lm_pytorch.self_reward.pairs import best_vs_worst
    from self_rewarding_lm_pytorch.self_reward.preferences import generate_preferences

    consistency = line == "consistency"
    result = generate_preferences(
        model,
        ByteTokenizer(),
        prompts,
        reward_fn=consistency_reward if consistency else verifier_reward,
        num_candidates=8 if consistency else a.candidates,
        temperature=1.0 if consistency else a.temperature,
        top_p=None if consistency or a.temperature >= 1.0 else 0.9,
        max_new_tokens=6,
        num_pairs=a.pairs,
        pair_policy=functools.partial(best_vs_worst, min_margin=a.consistency_margin if consistency else 0.0),
        out_dir=tempfile.mkdtemp(prefix="regime-"),
        seed=a.seed + it,
        max_passes=2,
        progress=False,
    )
    model.train()
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in result.records]


def dpo(model, records, a, replay=None):
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.trainers.dpo import DPOTrainer

    result = DPOTrainer(
        model,
        records,
        tokenizer=ByteTokenizer(),
        accelerate_kwargs={"cpu": True},
        num_epochs=a.dpo_epochs,
        num_train_steps=a.dpo_max_steps,
        batch_size=16,
        learning_rate=a.dpo_lr,
        lr_schedule=a.dpo_schedule,
        warmup_steps=a.dpo_warmup,
        beta=a.beta,
        sft_weight=a.sft_weight,
        log_every=5,
        progress=False,
        seed=a.seed,
        **(dict(judge_data=replay, judge_weight=1.0, judge_per_pair=a.replay_per_pair) if replay else {}),
    )()
    model.train()
    return result.steps


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-digits", type=int, default=2)
    p.add_argument("--instruction", type=int, default=500)
    p.add_argument("--evaluation", type=int, default=1500)
    p.add_argument("--writing", type=int, default=300)
    p.add_argument("--heldout", type=int, default=400)
    p.add_argument("--new-prompts", type=int, default=1200)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--sft-steps", type=int, nargs="+", default=[1500])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--lines", nargs="*", default=[])
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--pairs", type=int, default=600)
    p.add_argument("--candidates", type=int, default=4)
    p.add_argument("--consistency-margin", type=float, default=0.25)
    p.add_argument("--temperature", type=float, default=0.7, help="the oracle's candidates")
    p.add_argument("--dpo-epochs", type=float, default=2.0)
    p.add_argument("--dpo-max-steps", type=int, default=100)
    p.add_argument("--dpo-lr", type=float, default=1e-4)
    p.add_argument("--dpo-schedule", default="constant")
    p.add_argument("--dpo-warmup", type=int, default=0)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--sft-weight", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--replay", default="none", help="none | instruction | all: seed examples in every DPO step")
    p.add_argument("--replay-per-pair", type=int, default=4)
    p.add_argument("--save", type=Path)
    p.add_argument("--m1", type=Path)
    a = p.parse_args()
    torch.set_num_threads(1)

    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.demo.line_runs import build_model
    from self_rewarding_lm_pytorch.demo.run import DemoSettings
    from self_rewarding_lm_pytorch.demo.task import is_correct
    from self_rewarding_lm_pytorch.training.checkpoint import load_model, save_model

    data, writing = _data(a)
    settings = DemoSettings(dim=a.dim, depth=a.depth, max_digits=a.max_digits, num_instruction=1, num_evaluation=1)
    seed_prompts = [r["prompt"] for r in data.instruction]
    heldout, new = data.heldout_prompts, data.self_reward_prompts
    torch.manual_seed(a.seed)
    model = build_model(settings, ByteTokenizer().vocab_size)
    row = {"args": {k: str(v) for k, v in vars(a).items()}, "m1": []}
    started = time.time()
    if a.m1:
        load_model(model, a.m1)
        row["m1"].append({"loaded": str(a.m1), **measure(model, heldout)})
    for steps in a.sft_steps if not a.m1 else []:  # a fresh cosine run per length (not resumed)
        torch.manual_seed(a.seed)
        model = build_model(settings, ByteTokenizer().vocab_size)
        t = time.time()
        sft(model, data.sft + writing, steps, a)
        m = {"sft_steps": steps, "seconds": round(time.time() - t), **measure(model, heldout)}
        m["seed_acc"] = measure(model, seed_prompts[:400], samples=0)["acc"]
        row["m1"].append(m)
        print(f"[regime] M1 {m}", flush=True)
    if a.save:
        save_model(model, a.save)
    replay = {"none": None, "instruction": data.instruction, "all": data.sft + writing}[a.replay]
    m1_state = {k: v.clone() for k, v in model.state_dict().items()}
    for line in a.lines:
        model.load_state_dict(m1_state)
        accs = []
        for it in range(a.iterations):
            if line == "control":
                # as many steps as the oracle's first iteration took (or the cap), on the replay alone
                steps = row.get("oracle", [{}])[0].get("steps") or min(
                    a.dpo_max_steps, math.ceil(a.dpo_epochs * a.pairs / 16)
                )
                per_step = 16 * (a.replay_per_pair if replay else 1)
                sft(
                    model,
                    replay or data.instruction,
                    steps,
                    argparse.Namespace(**{**vars(a), "batch": per_step}),
                    a.dpo_lr,
                    a.dpo_schedule,
                )
                info = {"steps": steps}
            else:
                records = pairs_for(model, new, line, a, it)
                right = sum(
                    is_correct(r["prompt"], r["chosen"]) and not is_correct(r["prompt"], r["rejected"]) for r in records
                )
                wrong = sum(
                    is_correct(r["prompt"], r["rejected"]) and not is_correct(r["prompt"], r["chosen"]) for r in records
                )
                info = {
                    "pairs": len(records),
                    "right_first": right,
                    "wrong_first": wrong,
                    "steps": dpo(model, records, a, replay),
                }
            accs.append({**info, **measure(model, heldout)})
            print(f"[regime] {line} it{it + 1} {accs[-1]}", flush=True)
        row[line] = accs
    row["seconds"] = round(time.time() - started)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
