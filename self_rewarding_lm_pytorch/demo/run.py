"""`srlm demo`: the paper's recipe on a tiny byte-level model and a verifiable task, measured.

    M0 --SFT on instruction + evaluation data--> M1 --writes prompts--> P
    M1 --self-reward DPO on P--> M2 --self-reward DPO on P--> M3        (self-reward: LLM-as-a-judge)
    M1 --the same, the judge's worked sum compared--> M2' --> M3'        (reference-judge)
    M1 --self-consistency DPO on P--> M2' --> M3'                        (consistency: no judge, no labels)
    M1 --verifier-reward DPO on P--> M2'' --> M3''                       (oracle: ground truth, the ceiling)
    M1 --SFT on the replayed seed data alone, as many steps--> M2 --> M3  (control: no pairs)

Everything lands in one run folder: `data/` (the seed data as JSONL), `self-reward/`, `reference-judge/`,
`consistency/`, `oracle/` and `control/` (pipeline runs: per-stage checkpoints, prompts, candidates, judgments, pairs),
`metrics.jsonl` (one row per evaluated model), `report.md`, `metrics.png` and `manifest.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from self_rewarding_lm_pytorch.core.files import JsonlAppender, atomic_write_json, write_jsonl
from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
from self_rewarding_lm_pytorch.demo.line_runs import Evaluator, LineRuns, build_model, line_jobs, run_pipeline
from self_rewarding_lm_pytorch.demo.lines import self_reward_stages
from self_rewarding_lm_pytorch.demo.report import LINES, format_table, write_plot, write_report
from self_rewarding_lm_pytorch.demo.task import AdditionTask, demo_reward_config

__all__ = [
    "PRESETS",
    "DemoSettings",
    "RunFolderExistsError",
    "default_line_workers",
    "default_sft_threads",
    "run_demo",
]


class RunFolderExistsError(FileExistsError):
    """The demo's output folder already holds a run (it is never overwritten silently)."""


@dataclass(frozen=True)
class DemoSettings:
    """Everything that shapes a demo run (recorded in the report and the manifest)."""

    max_digits: int = 2
    dim: int = 64
    depth: int = 2
    heads: int = 4
    max_seq_len: int = 64
    # A SMALL labelled seed set that SFT fits completely (round 5 in bench/results/demo.md): M1 then answers
    # every seed prompt and is limited by what 1000 answers teach about the other prompts, so further SFT on
    # the seed data stops helping (the control line) and new prompts answered right carry new information.
    # 2-digit addition has only 10,000 distinct prompts (operands 0..99): the drawn sets must fit in them.
    num_instruction: int = 1000
    num_evaluation: int = 1500
    # A third of the judge examples judge a right answer; 80% of the wrong ones are uniform random numbers
    # (the rest plausible mistakes), so the judge's column steps cannot copy the judged answer's digits and
    # must compute the sum: 88-95% right whatever answer it is shown (round 6 in bench/results/demo.md).
    eval_correct_fraction: float = 1 / 3
    judge_random_wrong_fraction: float = 0.8
    # Seed examples of writing a new prompt from `prompt_shots` others (the paper's base model can
    # already do this; ours learns it in SFT), and how many prompts the model then writes itself.
    num_prompt_writing: int = 300
    prompt_shots: int = 4  # the paper uses 8; 4 fit the 64-token context with room for the answer
    num_self_reward_prompts: int = 1200
    num_heldout: int = 400
    # Until every seed answer is right (measured: 100% of the seed prompts greedy at 2400 steps).
    sft_steps: int = 2400
    sft_batch_size: int = 32
    sft_learning_rate: float = 2e-3
    # Pairs asked per iteration; each iteration makes what 2 passes over the prompts give.
    dpo_pairs: tuple[int, ...] = (1200, 1200)
    # Epochs over the pairs actually made (tens for the judge, hundreds for the oracle), capped: the new
    # answers must be learned as well as the seed ones, which takes several epochs at a high rate.
    dpo_epochs: float = 4.0
    dpo_max_steps: int = 300
    dpo_batch_size: int = 16
    dpo_learning_rate: float = 1e-3
    dpo_lr_schedule: str = "cosine"
    dpo_warmup_steps: int = 5
    dpo_beta: float = 0.1
    dpo_loss_type: str = "sigmoid"
    # NLL on the chosen answer beside DPO (Pang et al. 2024, iterative RPO), per token.
    dpo_sft_weight: float = 1.0
    # Seed SFT examples replayed in every DPO step (0 turns it off), `replay_per_pair` per pair, NLL
    # weighted `replay_weight`: at this rate the model would otherwise forget its seed answers and judge.
    # One per pair (round 7): from the same M1, the reference-judge line ends at the same M3 as with two
    # (53.8% / 54.0%) and the oracle 3 points lower (62.3% / 65.5%), each iteration in about half the time.
    replay_per_pair: int = 1
    replay_weight: float = 1.0
    # The self-reward line samples as the consistency and oracle lines do (8 at temperature 1): with 4 at
    # temperature 0.7 it fell 8.6 points, with these it held level (round 6).
    num_candidates: int = 8
    self_reward_temperature: float = 1.0
    # One greedy judgment per candidate: the judge's verdict is deterministic, so a candidate's score
    # is what the judge believes, not sampling noise (at temperature 0.7 three samples were needed).
    num_sampled_reward_responses: int = 1
    judge_temperature: float = 0.0
    # The consistency line: 8 samples at temperature 1 (DESIGN.md's table: 57% of its pairs put a right
    # answer first, 4% a wrong one), a pair only where the majority leads by `consistency_min_margin`.
    # The reference-guided judge line: the same iterations, the judge's worked sum compared with the candidate.
    reference_judge: bool = True
    consistency: bool = True
    consistency_samples: int = 8
    consistency_temperature: float = 1.0
    consistency_min_margin: float = 0.25
    # The oracle line samples as the consistency line does, so it shows what the same candidates give
    # with a perfect reward.
    oracle_candidates: int = 8
    oracle_temperature: float = 1.0
    eval_num_judgments: int = 1
    max_new_tokens: int = 6
    judge_max_new_tokens: int = 40
    oracle: bool = True
    # The no-pairs control (needs the oracle line: it trains as many steps as the oracle's iterations).
    control: bool = True

    def __post_init__(self):
        AdditionTask(self.max_digits).check_judge_fits(self.max_seq_len, self.judge_max_new_tokens)
        # self-reward prompts are written by the model, not drawn
        needed = self.num_instruction + self.num_evaluation + self.num_heldout
        available = (10**self.max_digits) ** 2  # operands 0 .. 10**max_digits - 1
        if needed > available:
            raise ValueError(
                f"the demo's prompt sets need {needed} distinct prompts but {self.max_digits}-digit "
                f"addition has only {available}: lower num_instruction/num_evaluation/... or raise max_digits"
            )


PRESETS = {
    "default": DemoSettings(),
    "quick": DemoSettings(
        num_evaluation=500,
        num_prompt_writing=100,
        num_self_reward_prompts=200,
        num_heldout=60,
        sft_steps=400,
        dpo_pairs=(100, 100),
        dpo_max_steps=15,
        replay_per_pair=1,
        num_candidates=4,
        consistency_samples=4,
        oracle_candidates=4,
    ),
    # test-only (hidden from --help): the smallest run that still exercises every stage and file.
    "tiny": DemoSettings(
        dim=32,
        depth=1,
        heads=2,
        num_instruction=200,
        num_evaluation=100,
        num_prompt_writing=50,
        num_self_reward_prompts=24,
        num_heldout=12,
        sft_steps=40,
        num_candidates=4,
        dpo_pairs=(4, 4),
        dpo_max_steps=2,
        dpo_batch_size=4,
        replay_per_pair=1,
        oracle_candidates=4,
        eval_num_judgments=1,
        num_sampled_reward_responses=1,
        consistency_samples=4,
    ),
}


def _prepare_out(out: Path, overwrite: bool):
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RunFolderExistsError(
                f"{out} already holds files: pass --overwrite to replace it, or choose another --out"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _write_data(s: DemoSettings, seed: int, data_dir: Path, reward_config) -> dict:
    import random

    task = AdditionTask(s.max_digits, random_wrong_fraction=s.judge_random_wrong_fraction)
    data = task.build(
        num_instruction=s.num_instruction,
        num_evaluation=s.num_evaluation,
        num_self_reward_prompts=0,  # written by the model (prompt self-generation)
        num_heldout=s.num_heldout,
        seed=seed,
        correct_fraction=s.eval_correct_fraction,
        render=lambda p, r: reward_config.render(prompt=p, response=r),
    )
    seed_prompts = [r["prompt"] for r in data.instruction]
    writing = task.prompt_writing_examples(seed_prompts, s.num_prompt_writing, s.prompt_shots, random.Random(seed + 1))
    write_jsonl(data_dir / "sft.jsonl", data.sft + writing)
    write_jsonl(data_dir / "evaluation.jsonl", data.evaluation)
    write_jsonl(data_dir / "seed_prompts.jsonl", [{"prompt": p} for p in seed_prompts])
    write_jsonl(data_dir / "heldout.jsonl", [{"prompt": p} for p in data.heldout_prompts])
    stats = {**data.stats, "num_prompt_writing": len(writing)}
    stats.pop("num_self_reward_prompts", None)
    return {"heldout": data.heldout_prompts, "stats": stats}


def _usable_cores() -> int:
    # the cores this process may run on (a container or `taskset` may allow fewer than the machine has)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_line_workers() -> int:
    """Two worker processes for the lines from M1 wherever there is a second usable core, else none."""
    return 2 if _usable_cores() >= 2 else 0


def default_sft_threads() -> int:
    """Torch threads while nothing else of the demo runs (SFT, M1's evaluation, prompt writing): two where
    there are two usable cores (an SFT step 1.4x faster, measured), since one process then has them.
    The thread count changes the order of floating-point sums, so M1 (and every number after it) differs
    between `sft_threads` 1 and 2; a run is reproducible for a given count, recorded in the report."""
    return min(2, _usable_cores())


def run_demo(
    out: str | Path,
    *,
    settings: DemoSettings = PRESETS["default"],
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    command: str = "srlm demo",
    threads: int | None = 1,
    line_workers: int | None = None,
    sft_threads: int | None = None,
) -> dict:
    """Run the demo into `out`; returns the manifest (also written to `out/manifest.json`).

    `line_workers` processes (default `default_line_workers()`; 0 = none) run the other lines beside the
    self-reward line's iterations, so a 2-core machine runs them about twice as fast; the rows are the same
    either way. Until they start, the demo's one process uses `sft_threads` torch threads (default
    `default_sft_threads()`: 2 on 2+ cores); from then on each process uses `threads` (1 by default: with
    several processes sharing the cores, OpenMP threads spin-waiting on busy cores made a step 10x slower,
    measured; None leaves torch's default). Torch's thread count is restored on return.
    """
    workers = default_line_workers() if line_workers is None else line_workers
    previous = torch.get_num_threads()
    first = default_sft_threads() if sft_threads is None else sft_threads
    torch.set_num_threads(first)
    try:
        return _run(Path(out), settings, seed, overwrite, progress, command, threads, LineRuns(workers), first)
    finally:
        torch.set_num_threads(previous)


def _run(
    out: Path,
    settings: DemoSettings,
    seed: int,
    overwrite: bool,
    progress: bool,
    command: str,
    threads: int | None,
    lines: LineRuns,
    sft_threads: int,
) -> dict:
    started = time.time()
    _prepare_out(out, overwrite)
    tokenizer, reward_config = ByteTokenizer(), demo_reward_config()
    data = _write_data(settings, seed, out / "data", reward_config)
    log = JsonlAppender(out / "metrics.jsonl")
    evaluator = Evaluator(settings, tokenizer, reward_config, data["heldout"], seed, log=log)

    def start_lines():  # M1 and the prompts exist now: every other line can start from them
        if threads is not None:  # from here on, processes share the cores
            torch.set_num_threads(threads)
        # bars of processes running side by side would overwrite each other: workers print rows only
        jobs = line_jobs(
            settings,
            out=out,
            seed=seed,
            heldout=data["heldout"],
            m1_row=evaluator.rows[0],
            progress=progress and not lines.workers,
            threads=threads,
        )
        lines.start(jobs)

    torch.manual_seed(seed)
    model = build_model(settings, tokenizer.vocab_size)
    print(
        f"[demo] self-rewarding run: SFT ({settings.sft_steps} steps), prompt self-generation, then "
        f"{len(settings.dpo_pairs)} self-reward DPO iterations -> {out / 'self-reward'}",
        flush=True,
    )
    hook = evaluator.hook("self-reward", 1, on_prompts_written=start_lines)
    try:
        run_pipeline(
            model,
            self_reward_stages(settings, out / "data"),
            out / "self-reward",
            hook,
            tokenizer=tokenizer,
            reward_config=reward_config,
            seed=seed,
            progress=progress,
        )
        _collect_lines(lines, evaluator, log)
    finally:
        lines.close()
        log.close()
    processes = {"torch threads (SFT)": sft_threads, "torch threads": threads, "line workers": lines.workers}
    return _finish(
        out,
        evaluator.rows,
        settings,
        seed,
        data["stats"],
        evaluator.stage_seconds,
        time.time() - started,
        command,
        processes,
    )


def _collect_lines(lines: LineRuns, evaluator: Evaluator, log: JsonlAppender) -> None:
    """The other lines' rows and stage times into `evaluator`, in the report's order whatever ran first,
    and into the log (M1 is logged once, by the self-reward line)."""
    others = []
    for line_rows, seconds in lines.results():
        others.extend(line_rows)
        evaluator.stage_seconds.update(seconds)
    others.sort(key=lambda row: LINES.index(row["run"]))
    evaluator.rows.extend(others)
    for row in others:
        if row["stage"] != "M1":
            log.write(row)


def _finish(out, rows, settings, seed, data_stats, seconds, total, command, processes) -> dict:
    plot = write_plot(out / "metrics.png", rows)
    shown = {
        **dataclasses.asdict(settings),
        "seed": seed,
        **processes,
        "python": platform.python_version(),
        "torch": torch.__version__,
        **data_stats,
    }
    write_report(
        out / "report.md", rows, settings=shown, seconds=total, command=command, plot_name=plot.name if plot else None
    )
    print("\n" + format_table(rows), flush=True)
    manifest = {
        "command": command,
        "seed": seed,
        "settings": dataclasses.asdict(settings),
        "data": data_stats,
        "processes": processes,
        "seconds": round(total, 1),
        "stage_seconds": seconds,
        "rows": rows,
        "files": [*sorted(str(p.relative_to(out)) for p in out.iterdir()), "manifest.json"],
        "argv": sys.argv,
    }
    atomic_write_json(out / "manifest.json", json.loads(json.dumps(manifest, default=str)))
    print(f"[demo] done in {total:.0f} s: {out / 'report.md'}" + (f", {plot}" if plot else ""), flush=True)
    return manifest
