"""DPO settings for the demo's lines, swept from one demo run's M1: held-out greedy accuracy per setting.

    python bench/demo_sweep.py --run /tmp/demo_r4/default --out /tmp/sweep/results.jsonl \\
        --set lr=3e-4 schedule=cosine warmup=10 --set lr=1e-3 schedule=cosine warmup=10

Each `--set` is one setting (fields of `Setting`, the rest default). M1 is the run's SFT model
(`<run>/oracle/initial-model.safetensors`, loaded as the demo builds it) and the prompts are the ones
it wrote itself (`<run>/self-reward/02-prompt-generation/prompts.jsonl`); held-out accuracy is greedy
on `<run>/data/heldout.jsonl`, as the demo's report measures it. Per iteration: candidates sampled
from the current model, scored by the reward (`verifier` = ground truth, the oracle line;
`consistency` = the demo's self-consistency reward), paired, then DPO against the model as it was at
the iteration's start. `replay=instruction` mixes the seed answers into every step's NLL (the stages'
judge-example mixing); `reward=none` is its control: the same replay and schedule, no pairs. Each row
also reports greedy accuracy on the prompts trained on, before and after (memorised or learned?).
The first iteration's pairs depend only on M1 and are cached by their settings (`--out`'s folder).
`--save` writes the final model (e.g. a control's, to start other settings from it with `--m1`).
Every row printed and appended to `--out` is measured by the run; the findings are in
bench/results/demo.md (round 4).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Setting:
    # verifier | consistency | none (the control: no pairs, only the replayed seed examples, trained by SFT
    # for as many steps as the pairs would take, `batch * replay_per_pair` examples a step, same schedule)
    reward: str = "verifier"
    candidates: int = 4
    temperature: float = 0.7
    policy: str = "best_vs_worst"  # best_vs_worst | all (every higher-over-lower pair of distinct answers)
    min_margin: float = 0.0
    num_pairs: int = 600
    passes: int = 2
    iterations: int = 1
    epochs: float = 2.0
    max_steps: int = 100
    batch: int = 16
    lr: float = 1e-4
    schedule: str = "constant"
    warmup: int = 0
    loss: str = "sigmoid"
    sft_weight: float = 1.0
    beta: float = 0.1
    # replay: seed SFT examples ("instruction", "all" = instruction + judge + prompt writing) whose NLL joins
    # every DPO step (the stages' judge-example mixing), `replay_weight` x, `replay_per_pair` per pair
    replay: str = "none"
    replay_weight: float = 1.0
    replay_per_pair: int = 1
    seed: int = 0


def all_pairs(candidate_records: list[dict], min_margin: float) -> list[dict]:
    """Every (higher, lower) pair of distinct finished answers of a prompt whose scores differ by >= `min_margin`
    (the library's policies make one pair per prompt; this reads every scored candidate it recorded)."""
    out = []
    for rec in candidate_records:
        scored = {}
        for c in rec["candidates"]:
            if c["score"] is not None and not math.isnan(c["score"]) and c["response"]:
                scored.setdefault(c["response"], (c["score"], c["finished"]))
        for chosen, (sc, finished) in scored.items():
            for rejected, (sr, _) in scored.items():
                if finished and sc > sr and sc - sr >= min_margin:
                    out.append({"prompt": rec["prompt"], "chosen": chosen, "rejected": rejected})
    return out


def _unique(records: list[dict]) -> list[dict]:
    """One record per (prompt, chosen, rejected) text triple: equal samples would weigh a prompt twice."""
    seen, out = set(), []
    for r in records:
        key = (r["prompt"], r["chosen"], r["rejected"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _reward(name: str):
    from self_rewarding_lm_pytorch.demo.task import consistency_reward, verifier_reward

    return {"verifier": verifier_reward, "consistency": consistency_reward}[name]


def make_pairs(model, prompts: list[str], s: Setting, seed: int) -> list[dict]:
    import functools
    import tempfile

    from self_rewarding_lm_pytorch.core.files import read_jsonl
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.self_reward.pairs import best_vs_worst
    from self_rewarding_lm_pytorch.self_reward.preferences import generate_preferences

    folder = tempfile.mkdtemp(prefix="demo-sweep-")
    result = generate_preferences(
        model,
        ByteTokenizer(),
        prompts,
        reward_fn=_reward(s.reward),
        num_candidates=s.candidates,
        temperature=s.temperature,
        top_p=None if s.reward == "consistency" else 0.9,
        max_new_tokens=6,
        num_pairs=s.num_pairs,
        pair_policy=functools.partial(best_vs_worst, min_margin=s.min_margin),
        out_dir=folder,
        seed=seed,
        max_passes=s.passes,
        progress=False,
    )
    model.train()
    if s.policy == "all":
        return _unique(all_pairs(read_jsonl(Path(folder) / "candidates.jsonl"), s.min_margin))
    return _unique([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in result.records])


def train(model, records: list[dict], s: Setting, replay: list[dict] | None = None) -> dict:
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.trainers.dpo import DPOTrainer

    result = DPOTrainer(
        model,
        records,
        tokenizer=ByteTokenizer(),
        accelerate_kwargs={"cpu": True},
        num_epochs=s.epochs,
        num_train_steps=s.max_steps,
        batch_size=s.batch,
        learning_rate=s.lr,
        lr_schedule=s.schedule,
        warmup_steps=s.warmup,
        beta=s.beta,
        loss_type=s.loss,
        sft_weight=s.sft_weight,
        log_every=5,
        progress=False,
        seed=s.seed,
        **(dict(judge_data=replay, judge_weight=s.replay_weight, judge_per_pair=s.replay_per_pair) if replay else {}),
    )()
    last = [m for m in result.history if "rewards/margins" in m][-3:]
    margin = sum(m["rewards/margins"] for m in last) / len(last) if last else None
    return {"steps": result.steps, "margin": None if margin is None else round(float(margin), 3)}


@torch.no_grad()
def greedy_accuracy(model, prompts: list[str]) -> float:
    from self_rewarding_lm_pytorch.core.sampling import sample
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.demo.task import is_correct

    tok = ByteTokenizer()
    out = sample(
        model,
        [torch.tensor(tok.encode(p), dtype=torch.long) for p in prompts],
        max_new_tokens=6,
        temperature=0.0,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
    )
    model.train()
    return sum(is_correct(p, r) for p, r in zip(prompts, out.texts(tok), strict=True)) / len(prompts)


def replay_only(model, replay: list[dict] | None, s: Setting) -> dict:
    """The control for replay: continued SFT on the replayed seed examples alone, no preference pairs."""
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.trainers.sft import SFTTrainer

    if not replay:
        raise SystemExit("reward=none (the replay-only control) needs replay=instruction or replay=all")
    steps = min(s.max_steps, math.ceil(s.epochs * s.num_pairs / s.batch))
    SFTTrainer(
        model,
        replay,
        tokenizer=ByteTokenizer(),
        accelerate_kwargs={"cpu": True},
        num_train_steps=steps,
        batch_size=s.batch * s.replay_per_pair,
        learning_rate=s.lr,
        lr_schedule=s.schedule,
        warmup_steps=s.warmup,
        log_every=50,
        progress=False,
        seed=s.seed,
    )()
    model.train()
    return {"steps": steps}


def replay_examples(run: Path, which: str) -> list[dict] | None:
    from self_rewarding_lm_pytorch.core.files import read_jsonl

    if which == "none":
        return None
    sft = read_jsonl(run / "data" / "sft.jsonl")
    if which == "instruction":
        return [r for r in sft if not r["prompt"].startswith(("Judge ", "New "))]
    if which == "all":
        return sft
    raise SystemExit(f"replay must be none, instruction or all; got {which!r}")


def run_setting(
    s: Setting, run: Path, prompts: list[str], heldout: list[str], cache: Path, m1: Path | None, save: Path | None
) -> dict:
    from self_rewarding_lm_pytorch.core.files import read_jsonl, write_jsonl
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.demo.line_runs import build_model
    from self_rewarding_lm_pytorch.demo.run import PRESETS
    from self_rewarding_lm_pytorch.demo.task import is_correct
    from self_rewarding_lm_pytorch.training.checkpoint import load_model

    m1_path = m1 or run / "oracle" / "initial-model.safetensors"
    model = build_model(PRESETS["default"], ByteTokenizer().vocab_size)
    load_model(model, m1_path)
    replay = replay_examples(run, s.replay)
    started, row = time.time(), {"setting": dataclasses.asdict(s), "iterations": []}
    if s.iterations == 0:  # M1 itself
        row["iterations"].append({"acc": greedy_accuracy(model, heldout)})
    pair_keys = ("reward", "candidates", "temperature", "policy", "min_margin", "num_pairs", "passes", "seed")
    for it in range(s.iterations):
        if s.reward == "none":
            row["iterations"].append({**replay_only(model, replay, s), "acc": greedy_accuracy(model, heldout)})
            continue
        key = hashlib.sha256(json.dumps([str(m1_path), {k: getattr(s, k) for k in pair_keys}]).encode()).hexdigest()
        path = cache / f"pairs-{key[:12]}.jsonl"
        if it == 0 and path.exists():
            records = read_jsonl(path)
        else:
            records = make_pairs(model, prompts, s, seed=s.seed + it)
            if it == 0:
                write_jsonl(path, records)
        right_first = sum(is_correct(r["prompt"], r["chosen"]) for r in records)
        wrong_first = sum(is_correct(r["prompt"], r["rejected"]) for r in records)
        # greedy accuracy on the prompts trained on: is a gain there and not on held-out prompts memorised?
        seen = sorted({r["prompt"] for r in records})
        seen_before = greedy_accuracy(model, seen)
        trained = train(model, records, s, replay)
        accuracy = greedy_accuracy(model, heldout)
        row["iterations"].append(
            {
                "pairs": len(records),
                "right_first": right_first,
                "wrong_first": wrong_first,
                **trained,
                "train_prompts_acc": f"{seen_before:.3f} -> {greedy_accuracy(model, seen):.3f}",
                "acc": accuracy,
            }
        )
    row["seconds"] = round(time.time() - started, 1)
    if save is not None:
        from self_rewarding_lm_pytorch.training.checkpoint import save_model

        save_model(model, save)
    return row


def main():
    from self_rewarding_lm_pytorch.core.files import read_jsonl

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished `srlm demo` run folder")
    parser.add_argument("--out", type=Path, required=True, help="JSONL file the result rows are appended to")
    parser.add_argument("--m1", type=Path, help="start from this model instead of the run's M1")
    parser.add_argument("--save", type=Path, help="write each setting's final model here (a later --m1)")
    parser.add_argument("--set", nargs="*", action="append", default=[], help="key=value ... (one setting)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    prompts = [r["prompt"] for r in read_jsonl(args.run / "self-reward" / "02-prompt-generation" / "prompts.jsonl")]
    heldout = [r["prompt"] for r in read_jsonl(args.run / "data" / "heldout.jsonl")]
    cache = args.out.parent / "pairs-cache"
    cache.mkdir(parents=True, exist_ok=True)
    fields = {f.name: f.type for f in dataclasses.fields(Setting)}
    for items in args.set or [[]]:
        values = dict(item.split("=", 1) for item in items)
        unknown = set(values) - set(fields)
        if unknown:
            raise SystemExit(f"unknown setting(s) {sorted(unknown)}; known: {sorted(fields)}")
        typed = {k: type(getattr(Setting(), k))(v) for k, v in values.items()}
        row = run_setting(Setting(**typed), args.run, prompts, heldout, cache, args.m1, args.save)
        row["m1"] = str(args.m1 or "")
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        accs = " -> ".join(f"{100 * i['acc']:.1f}%" for i in row["iterations"])
        print(f"[sweep] {values or 'defaults'}: {accs} ({row['iterations']}, {row['seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
