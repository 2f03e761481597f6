"""Preference losses on the demo's M1 with verifier pairs: held-out accuracy, likelihood displacement, time.

    python bench/preference_losses.py --write bench/results/preference_losses.md
    python bench/preference_losses.py --losses sigmoid dpop --lrs 1e-4     # a slice of the grid

M1 is built exactly as `srlm demo` builds it (the demo's data, model and SFT stage, from
`demo.run.PRESETS["default"]`, seed 0) and cached with its pairs in `--cache` (reruns skip both, and
finished grid cells too). Pairs are made as the demo's oracle line makes them: 4 candidates per
self-reward prompt sampled from M1 (temperature 0.7, top-p 0.9, two passes), scored by the verifier,
chosen = a correct answer, rejected = a wrong one. Each loss then trains a fresh copy of M1 for
`--epochs` over those pairs (batch 16, beta 0.1 unless the loss row says otherwise, the loop's defaults
otherwise) at each learning rate, and is measured on prompts never trained on: the demo's held-out
prompts plus the addition prompts no demo set uses. Every number in the table is measured by the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from report import write_report

# name -> DPOTrainer keyword arguments; beta 0.1 (the demo's) unless given. SimPO's beta and gamma are
# the paper's Llama-3-Base setting (its length-normalised rewards need a larger beta than DPO's).
LOSSES: dict[str, dict[str, Any]] = {
    "sigmoid": dict(loss_type="sigmoid"),
    "sigmoid + RPO 1.0": dict(loss_type="sigmoid", sft_weight=1.0),
    "sigmoid + RPO 0.15": dict(loss_type="sigmoid", sft_weight=0.15),
    "dpop": dict(loss_type="dpop"),
    "simpo": dict(loss_type="simpo", beta=2.0, simpo_gamma=1.0),
    "orpo": dict(loss_type="orpo"),
    "apo_zero": dict(loss_type="apo_zero"),
    "apo_down": dict(loss_type="apo_down"),
    "nca": dict(loss_type="nca"),
    "ipo": dict(loss_type="ipo"),
}
LEARNING_RATES = (1e-4, 5e-4)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k / n."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def build_data(settings, seed: int, data_dir: Path, extra_heldout: int) -> dict:
    """The demo's data files; the prompts pairs are made on (`num_self_reward_prompts` the seed data and
    the held-out set do not use, a stand-in for the prompts the demo's M1 writes itself); held-out prompts:
    the demo's and up to `extra_heldout` more that no set uses."""
    from self_rewarding_lm_pytorch.core.files import read_jsonl
    from self_rewarding_lm_pytorch.demo.run import _write_data
    from self_rewarding_lm_pytorch.demo.task import demo_reward_config

    data = _write_data(settings, seed, data_dir, demo_reward_config())
    sft = read_jsonl(data_dir / "sft.jsonl")
    # judge prompts end with the judged problem ("Judge 45 ? 12+34="): those prompts are used too
    used = {r["prompt"].rsplit(" ? ", 1)[-1] for r in sft} | set(data["heldout"])
    n = 10**settings.max_digits
    unused = sorted({f"{a}+{b}=" for a in range(n) for b in range(n)} - used)
    random.Random(seed).shuffle(unused)
    k = settings.num_self_reward_prompts
    return {"self_reward": unused[:k], "heldout": data["heldout"], "extra": unused[k : k + extra_heldout]}


def build_m1(settings, seed: int, cache: Path):
    """M1 as the demo makes it (its SFT stage through the pipeline), cached by settings and seed."""
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.demo.line_runs import build_model
    from self_rewarding_lm_pytorch.demo.lines import self_reward_stages
    from self_rewarding_lm_pytorch.pipeline import SelfRewardingTrainer
    from self_rewarding_lm_pytorch.training.checkpoint import load_model

    tokenizer = ByteTokenizer()
    path = cache / "m1" / "01-sft" / "model.safetensors"
    torch.manual_seed(seed)
    model = build_model(settings, tokenizer.vocab_size)
    if path.exists():
        load_model(model, path)
        return model
    print(f"[bench] training M1 ({settings.sft_steps} SFT steps, as the demo) -> {path}", flush=True)
    sft = self_reward_stages(settings, cache / "data")[0]
    SelfRewardingTrainer(
        model,
        [sft],
        tokenizer=tokenizer,
        accelerate_kwargs={"cpu": True},
        checkpoints_folder=cache / "m1",
        seed=seed,
        progress=False,
    )()
    return model


def verifier_pairs(model, prompts: list[str], settings, seed: int, cache: Path) -> list[dict]:
    """The oracle line's pairs from M1 (cached): verifier-scored candidates, best vs worst."""
    from self_rewarding_lm_pytorch.core.files import read_jsonl, write_jsonl
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.demo.task import verifier_reward
    from self_rewarding_lm_pytorch.self_reward.preferences import generate_preferences

    path = cache / "pairs.jsonl"
    if path.exists():
        return read_jsonl(path)
    result = generate_preferences(
        model,
        ByteTokenizer(),
        prompts,
        reward_fn=verifier_reward,
        num_candidates=settings.num_candidates,
        temperature=0.7,
        top_p=0.9,
        max_new_tokens=settings.max_new_tokens,
        num_pairs=settings.dpo_pairs[0],
        seed=seed,
        max_passes=2,
        progress=False,
    )
    records = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in result.records]
    write_jsonl(path, records)
    return records


@torch.no_grad()
def greedy_correct(model, prompts: list[str], max_new_tokens: int) -> list[bool]:
    from self_rewarding_lm_pytorch.core.sampling import sample
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.demo.task import is_correct

    tok = ByteTokenizer()
    out = sample(
        model,
        [torch.tensor(tok.encode(p), dtype=torch.long) for p in prompts],
        max_new_tokens=max_new_tokens,
        temperature=0.0,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
    )
    model.train()
    return [is_correct(p, r) for p, r in zip(prompts, out.texts(tok), strict=True)]


def logprobs(model, encoded: list[dict]) -> torch.Tensor:
    """(N, 2) summed response log-probs [chosen, rejected] of encoded pairs, in one batched pass."""
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.trainers.dpo import compute_ref_logprobs

    return compute_ref_logprobs(model, encoded, pad_id=ByteTokenizer().pad_id, batch_size=128, progress=False)


def measure(model, probe: dict, settings) -> dict:
    correct = greedy_correct(model, probe["heldout"], settings.max_new_tokens)
    return {
        "correct": correct,
        "train_logps": logprobs(model, probe["train_pairs"]),
        "heldout_logps": logprobs(model, probe["answers"])[:, 0],
    }


def train_cell(m1_state: dict, records: list[dict], name: str, lr: float, args, settings) -> tuple[Any, dict]:
    """Train a fresh copy of M1 with one loss at one learning rate; returns (model, wall and CPU seconds)."""
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.demo.line_runs import build_model
    from self_rewarding_lm_pytorch.trainers.dpo import DPOTrainer

    model = build_model(settings, ByteTokenizer().vocab_size)
    model.load_state_dict(m1_state)
    kwargs = {"beta": settings.dpo_beta} | LOSSES[name]
    start, cpu = time.time(), time.process_time()
    DPOTrainer(
        model,
        records,
        tokenizer=ByteTokenizer(),
        accelerate_kwargs={"cpu": True},
        num_epochs=args.epochs,
        batch_size=settings.dpo_batch_size,
        learning_rate=lr,
        log_every=1000,
        progress=False,
        seed=args.seed,
        **kwargs,
    )()
    return model, {"seconds": time.time() - start, "cpu_seconds": time.process_time() - cpu}


def summarise(base: dict, after: dict, num_demo: int) -> dict:
    n, k = len(after["correct"]), sum(after["correct"])
    low, high = wilson(k, n)
    delta_train = (after["train_logps"] - base["train_logps"]).mean(dim=0)
    return {
        "accuracy": k / n,
        "ci": (low, high),
        "n": n,
        "demo_accuracy": sum(after["correct"][:num_demo]) / num_demo,
        "delta_chosen": float(delta_train[0]),
        "delta_rejected": float(delta_train[1]),
        "delta_heldout": float((after["heldout_logps"] - base["heldout_logps"]).mean()),
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def table(rows: list[dict], m1: dict, num_demo: int) -> str:
    n = m1["n"]
    head = (
        f"| loss | lr | held-out greedy ({n} prompts) [95% CI] | vs M1 | demo's {num_demo} held-out | "
        "Δ log p chosen (train) | Δ log p rejected (train) | Δ log p correct (held-out) | train s (wall / CPU) |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| M1 (no training) | - | {_pct(m1['accuracy'])} [{_pct(m1['ci'][0])}, {_pct(m1['ci'][1])}] | - | "
        f"{_pct(m1['demo_accuracy'])} | 0 | 0 | 0 | - |"
    ]
    for r in rows:
        lines.append(
            f"| {r['loss']} | {r['lr']:g} | {_pct(r['accuracy'])} [{_pct(r['ci'][0])}, {_pct(r['ci'][1])}] | "
            f"{100 * (r['accuracy'] - m1['accuracy']):+.1f} | {_pct(r['demo_accuracy'])} | {r['delta_chosen']:+.2f} | "
            f"{r['delta_rejected']:+.2f} | {r['delta_heldout']:+.2f} | {r['seconds']:.0f} / {r['cpu_seconds']:.0f} |"
        )
    return head + "\n".join(lines)


def main():
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    parser.add_argument("--lrs", nargs="+", type=float, default=list(LEARNING_RATES))
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--extra-heldout", type=int, default=200, help="unused prompts added to the held-out set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="default", help="the demo preset M1 comes from ('tiny': a smoke run)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "srlm-bench-preference-losses")
    parser.add_argument("--write", type=Path, help="also write the markdown report here")
    args = parser.parse_args()
    run(args)


def run(args):
    from self_rewarding_lm_pytorch.core.files import atomic_write_json
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.demo.run import PRESETS
    from self_rewarding_lm_pytorch.demo.task import AdditionTask
    from self_rewarding_lm_pytorch.trainers.dpo import encode_pairs

    torch.set_num_threads(1)  # as the demo: these models do not gain from threads on a shared machine
    started = time.time()
    settings = PRESETS[args.preset]
    cache = args.cache / _digest([dataclasses.asdict(settings), args.seed])
    data = build_data(settings, args.seed, cache / "data", args.extra_heldout)
    model = build_m1(settings, args.seed, cache)
    records = verifier_pairs(model, data["self_reward"], settings, args.seed, cache)
    tok, task = ByteTokenizer(), AdditionTask(settings.max_digits)
    heldout = data["heldout"] + data["extra"]
    probe = {
        "heldout": heldout,
        "train_pairs": encode_pairs(records, tok),
        "answers": encode_pairs([(p, task.answer(p), task.answer(p)) for p in heldout], tok),
    }
    base = measure(model, probe, settings)
    m1 = summarise(base, base, len(data["heldout"]))
    m1_state = {k: v.clone() for k, v in model.state_dict().items()}
    print(f"[bench] M1: {_pct(m1['accuracy'])} greedy on {m1['n']} held-out prompts; {len(records)} pairs", flush=True)

    rows = []
    for name in args.losses:
        for lr in args.lrs:
            # one file per finished cell: an interrupted run resumes, and slices of the grid can run apart
            path = cache / "cells" / f"{name.replace(' ', '_')}-lr{lr:g}-epochs{args.epochs:g}.json"
            if not path.exists():
                trained, seconds = train_cell(m1_state, records, name, lr, args, settings)
                after = summarise(base, measure(trained, probe, settings), len(data["heldout"]))
                atomic_write_json(path, {"loss": name, "lr": lr, **seconds, **after})
                print(table([read_json(path)], m1, len(data["heldout"])).splitlines()[-1], flush=True)
            rows.append(read_json(path))
    body = table(rows, m1, len(data["heldout"]))
    print("\n" + body, flush=True)
    if args.write:
        two_digit = sum(min(map(int, p[:-1].split("+"))) >= 10 for p in data["extra"])
        chosen_share = sum(len(r["chosen"]) for r in records) / len(records)
        setup = (
            f"M1: the demo's {args.preset!r} preset (dim {settings.dim}, depth {settings.depth}, "
            f"{settings.sft_steps} SFT steps, seed {args.seed}). Pairs: {len(records)} verifier pairs from M1 on "
            f"{len(data['self_reward'])} self-reward prompts ({settings.num_candidates} candidates, temperature "
            f"0.7, top-p 0.9, 2 passes; mean chosen answer {chosen_share:.1f} characters). Training: "
            f"{args.epochs:g} epoch(s), batch {settings.dpo_batch_size}, beta {settings.dpo_beta} unless the "
            "loss says otherwise (simpo: beta 2.0, gamma 1.0; dpop: lambda 50; orpo: lambda 0.1), constant lr, "
            f"grad clip 1.0, one torch thread. Held-out: the demo's {len(data['heldout'])} held-out prompts plus "
            f"{len(data['extra'])} addition prompts no demo set uses ({two_digit} of them 2-digit + 2-digit). "
            "Δ log p: mean change of the summed response log-prob (answer + EOS) from M1, on the training pairs "
            "and on the correct answers of the held-out prompts. Train s: wall and CPU seconds of the training "
            "call (reference pass included, one thread; wall time counts waiting for a shared core). "
            f"This invocation's wall time: {(time.time() - started) / 60:.1f} min (cells already measured are "
            "read from the cache; the sum of the training times is "
            f"{sum(r['seconds'] for r in rows) / 60:.1f} min wall)."
        )
        write_report(args.write, "Preference losses on the demo's M1 (verifier pairs)", setup, body)


if __name__ == "__main__":
    main()
