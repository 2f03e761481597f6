"""Demo lines from a finished `srlm demo` run's M1, with other settings: what lifts a line, and why?

    python bench/demo_lines.py --run /tmp/demo/default --out /tmp/lines/sr8 --lines self-reward \\
        --set num_candidates=8 --gen-temperature 1.0

Loads the run's M1 (`self-reward/01-sft/model.safetensors`), its seed data (`data/`) and the prompts its
M1 wrote (`self-reward/02-prompt-generation/prompts.jsonl`), then runs each named line's DPO iterations
as the demo builds them (demo/lines.py: `self-reward`, `consistency`, `oracle`) with `DemoSettings`
fields overridden by `--set key=value` (and the self-reward candidates' sampling temperature by
`--gen-temperature`, which the demo's settings do not expose). Every model is evaluated as the demo
evaluates it, on the run's own held-out prompts: greedy accuracy with its 95% interval, the judge on
planted wrong answers and on the model's own candidates, and per iteration the pairs and how often the
line's reward agrees with the verifier (demo/evaluate.py, demo/iterations.py). SFT is not repeated, so a
setting costs only its iterations. One row per evaluated model is appended to `--out`/metrics.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch


def _settings(preset: str, pairs: list[str]):
    from self_rewarding_lm_pytorch.demo.run import PRESETS

    base = PRESETS[preset]
    overrides: dict = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        default = getattr(base, key)
        if isinstance(default, bool):
            overrides[key] = value == "True"
        elif isinstance(default, tuple):
            overrides[key] = tuple(int(v) for v in value.split(","))
        else:
            overrides[key] = type(default)(value)
    return dataclasses.replace(base, **overrides), overrides


def _stages(line: str, s, run: Path, gen_temperature: float | None) -> list:
    from self_rewarding_lm_pytorch.demo.lines import consistency_stages, oracle_stages, self_reward_stages

    data_dir, prompts = run / "data", run / "self-reward" / "02-prompt-generation" / "prompts.jsonl"
    if line == "self-reward":  # the DPO iterations only, on the prompts the run's M1 wrote
        extra = {} if gen_temperature is None else {"gen_temperature": gen_temperature, "gen_top_p": None}
        return [
            dataclasses.replace(c, prompt_dataset=str(prompts), **extra) for c in self_reward_stages(s, data_dir)[2:]
        ]
    if line == "consistency":
        return consistency_stages(s, prompts, data_dir)
    if line == "oracle":
        return oracle_stages(s, prompts, data_dir)
    raise ValueError(f"unknown line {line!r}: self-reward, consistency or oracle")


def _evaluate(model, s, heldout: list[str], seed: int) -> dict:
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.demo.evaluate import evaluate_model
    from self_rewarding_lm_pytorch.demo.iterations import wilson_interval
    from self_rewarding_lm_pytorch.demo.task import demo_reward_config

    metrics = evaluate_model(
        model,
        ByteTokenizer(),
        demo_reward_config(),
        heldout,
        num_candidates=4,
        num_judgments=s.eval_num_judgments,
        max_new_tokens=s.max_new_tokens,
        judge_max_new_tokens=s.judge_max_new_tokens,
        judge_temperature=s.judge_temperature,
        seed=seed,
    )
    n = metrics["num_heldout"]
    low, high = wilson_interval(round(metrics["accuracy"] * n), n)
    return {**metrics, "accuracy_ci_low": low, "accuracy_ci_high": high}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a finished `srlm demo` run folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--lines", nargs="+", default=["self-reward"])
    p.add_argument("--set", nargs="*", default=[], help="DemoSettings overrides, key=value")
    p.add_argument("--gen-temperature", type=float, help="the self-reward line's candidates (demo: 0.7, top-p 0.9)")
    p.add_argument("--preset", default="default", help="the run's preset (default, quick, tiny)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-m1", action="store_true", help="do not re-evaluate M1")
    p.add_argument(
        "--judge",
        choices=["verdict", "reference"],
        default="verdict",
        help="the self-reward line's judge: its written Score (verdict) or its worked sum compared (reference)",
    )
    a = p.parse_args()
    torch.set_num_threads(1)

    from self_rewarding_lm_pytorch.core.files import JsonlAppender, read_jsonl
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.demo.iterations import iteration_stats
    from self_rewarding_lm_pytorch.demo.line_runs import build_model
    from self_rewarding_lm_pytorch.demo.report import format_table
    from self_rewarding_lm_pytorch.demo.task import demo_reward_config
    from self_rewarding_lm_pytorch.pipeline import SelfRewardingTrainer
    from self_rewarding_lm_pytorch.training.checkpoint import load_model

    s, overrides = _settings(a.preset, a.set)
    heldout = [r["prompt"] for r in read_jsonl(a.run / "data" / "heldout.jsonl")]
    m1_path = a.run / "self-reward" / "01-sft" / "model.safetensors"
    a.out.mkdir(parents=True, exist_ok=True)
    log, rows = JsonlAppender(a.out / "metrics.jsonl"), []
    tag = {"overrides": overrides, "gen_temperature": a.gen_temperature, "judge": a.judge, "from": str(a.run)}

    def record(row: dict) -> None:
        rows.append(row)
        log.write({**row, **tag})
        print(format_table([row]).splitlines()[-1], flush=True)

    tokenizer = ByteTokenizer()
    if not a.skip_m1:
        model = build_model(s, tokenizer.vocab_size)
        load_model(model, m1_path)
        record({"run": "all", "stage": "M1", **_evaluate(model, s, heldout, a.seed)})
    for line in a.lines:
        model = build_model(s, tokenizer.vocab_size)
        load_model(model, m1_path)
        label = iter(range(2, 100))
        started = time.time()

        def on_stage_end(info, line=line, label=label, started=started):
            row = {"run": line, "stage": f"M{next(label)}", "pairs_made": info.summary.get("num_pairs")}
            row |= {**_evaluate(info.model, s, heldout, a.seed), **iteration_stats(info.stage_dir)}
            record({**row, "seconds": round(time.time() - started)})

        SelfRewardingTrainer(
            model,
            _stages(line, s, a.run, a.gen_temperature),
            tokenizer=tokenizer,
            self_reward_prompt_config=demo_reward_config(reference_guided=a.judge == "reference"),
            accelerate_kwargs={"cpu": True},
            checkpoints_folder=a.out / line,
            seed=a.seed,
            on_stage_end=on_stage_end,
            progress=False,
        )()
    log.close()
    print("\n" + format_table(rows), flush=True)


if __name__ == "__main__":
    main()
