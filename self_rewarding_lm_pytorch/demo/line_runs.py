"""Running the demo's lines: build a line's model, run its pipeline, measure every model it makes.

The self-reward line runs in the demo's own process (its SFT makes M1 and its prompt-generation stage the
prompts every line trains on). The other lines start from M1 on those prompts and need nothing else from
each other, except the control, which trains as many steps as the oracle did: so they run as jobs
(`("oracle", "control")`, `("reference-judge",)`, `("consistency",)`), either in worker processes beside
the self-reward line's iterations (`line_workers`, each a fresh process with one torch thread, taking the
next job when it finishes one) or afterwards in this process.
A line's result does not depend on where it ran: each pipeline seeds itself from the run's seed and
evaluation is seeded too (tests/test_demo.py compares the two ways row for row).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from self_rewarding_lm_pytorch.core.files import JsonlAppender
from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
from self_rewarding_lm_pytorch.demo.evaluate import evaluate_model
from self_rewarding_lm_pytorch.demo.iterations import iteration_stats, wilson_interval
from self_rewarding_lm_pytorch.demo.lines import (
    consistency_stages,
    control_stages,
    oracle_stages,
    reference_judge_stages,
)
from self_rewarding_lm_pytorch.demo.report import format_table
from self_rewarding_lm_pytorch.demo.task import demo_reward_config

if TYPE_CHECKING:
    from self_rewarding_lm_pytorch.demo.run import DemoSettings

__all__ = ["Evaluator", "LineJob", "LineRuns", "build_model", "line_jobs", "run_line_job", "run_pipeline"]


def build_model(s: DemoSettings, vocab_size: int):
    from x_transformers import Decoder, TransformerWrapper

    return TransformerWrapper(
        num_tokens=vocab_size,
        max_seq_len=s.max_seq_len,
        attn_layers=Decoder(dim=s.dim, depth=s.depth, heads=s.heads, rotary_pos_emb=True),
    )


def run_pipeline(model, stages, folder: Path, hook, *, tokenizer, reward_config, seed: int, progress: bool):
    from self_rewarding_lm_pytorch.pipeline import SelfRewardingTrainer

    SelfRewardingTrainer(
        model,
        stages,
        tokenizer=tokenizer,
        self_reward_prompt_config=reward_config,
        accelerate_kwargs={"cpu": True},
        checkpoints_folder=folder,
        seed=seed,
        on_stage_end=hook,
        progress=progress,
    )()


@dataclass
class Evaluator:
    """`on_stage_end` hooks: measure the stage's model on the held-out prompts and record a row (logged to
    `metrics.jsonl` only by the process that owns it)."""

    settings: DemoSettings
    tokenizer: Any
    reward_config: Any
    heldout: list[str]
    seed: int
    rows: list[dict] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    log: JsonlAppender | None = None

    def hook(self, run: str, first_label: int, on_prompts_written: Callable[[], None] | None = None):
        clock = {"t": time.time(), "label": first_label}

        def on_stage_end(info):
            seconds = round(time.time() - clock["t"], 1)
            if type(info.config).kind == "prompt-generation":
                print(f"[demo] {run}: prompts written: {info.summary.get('prompts')}", flush=True)
                self.stage_seconds[f"{run}/prompts"] = seconds
                if on_prompts_written is not None:
                    on_prompts_written()
                clock["t"] = time.time()
                return  # the model did not change: nothing to measure
            label = f"M{clock['label']}"
            clock["label"] += 1
            self.stage_seconds[f"{run}/{label}"] = seconds
            print(f"[demo] {run}: evaluating {label} on {len(self.heldout)} held-out prompts...", flush=True)
            row = {"run": run, "stage": label, "pairs_made": info.summary.get("num_pairs"), **self.measure(info.model)}
            if "num_pairs" in info.summary:
                row |= iteration_stats(info.stage_dir)
            self.rows.append(row)
            if self.log is not None:
                self.log.write(row)
            print(format_table([row]).splitlines()[-1], flush=True)
            clock["t"] = time.time()

        return on_stage_end

    def measure(self, model) -> dict:
        s = self.settings
        metrics = evaluate_model(
            model,
            self.tokenizer,
            self.reward_config,
            self.heldout,
            num_candidates=4,
            num_judgments=s.eval_num_judgments,
            max_new_tokens=s.max_new_tokens,
            judge_max_new_tokens=s.judge_max_new_tokens,
            judge_temperature=s.judge_temperature,
            seed=self.seed,
        )
        n = metrics["num_heldout"]
        low, high = wilson_interval(round(metrics["accuracy"] * n), n)
        return {**metrics, "accuracy_ci_low": low, "accuracy_ci_high": high}


@dataclass(frozen=True)
class LineJob:
    """Lines that run one after the other from M1 (picklable: a worker process gets it whole)."""

    lines: tuple[str, ...]
    out: Path
    settings: DemoSettings
    seed: int
    heldout: list[str]
    m1_row: dict
    progress: bool
    threads: int | None


def line_jobs(settings: DemoSettings, **common) -> list[LineJob]:
    """The lines after the self-reward one, grouped by what they need (the control follows the oracle); the
    short consistency line last, so it goes to whichever worker finishes first."""
    wanted = {
        "reference-judge": settings.reference_judge,
        "consistency": settings.consistency,
        "oracle": settings.oracle,
        "control": settings.control,
    }
    groups = [("oracle", "control") if settings.oracle else (), ("reference-judge",), ("consistency",)]
    kept = [tuple(line for line in group if wanted[line]) for group in groups]
    return [LineJob(lines=group, settings=settings, **common) for group in kept if group]


def oracle_steps(rows: list[dict]) -> list[int]:
    """The DPO steps of each oracle iteration, in order (what the control line trains for)."""
    return [r.get("dpo_steps") or 0 for r in rows if r["run"] == "oracle" and r["stage"] != "M1"]


def run_line_job(job: LineJob) -> tuple[list[dict], dict[str, float]]:
    """Run `job.lines` from M1; returns their rows (M1's first, as every line starts from it) and times."""
    from self_rewarding_lm_pytorch.training.checkpoint import load_model

    if job.threads is not None:
        torch.set_num_threads(job.threads)
    s, data_dir = job.settings, job.out / "data"
    prompts_file = job.out / "self-reward" / "02-prompt-generation" / "prompts.jsonl"
    tokenizer, reward_config = ByteTokenizer(), demo_reward_config()
    evaluator = Evaluator(s, tokenizer, reward_config, job.heldout, job.seed)
    stage_lists = {
        "reference-judge": lambda: reference_judge_stages(s, prompts_file, data_dir),
        "consistency": lambda: consistency_stages(s, prompts_file, data_dir),
        "oracle": lambda: oracle_stages(s, prompts_file, data_dir),
        "control": lambda: control_stages(s, data_dir, oracle_steps(evaluator.rows)),
    }
    for line in job.lines:
        print(f"[demo] {line} run: the same iterations from M1 -> {job.out / line}", flush=True)
        evaluator.rows.append({**job.m1_row, "run": line})
        model = build_model(s, tokenizer.vocab_size)
        load_model(model, job.out / "self-reward" / "01-sft" / "model.safetensors")
        hook = evaluator.hook(line, 2)
        run_pipeline(
            model,
            stage_lists[line](),
            job.out / line,
            hook,
            tokenizer=tokenizer,
            # every line's models are measured with the judge as written (`reward_config`)
            reward_config=demo_reward_config(reference_guided=True) if line == "reference-judge" else reward_config,
            seed=job.seed,
            progress=job.progress,
        )
    return evaluator.rows, evaluator.stage_seconds


class LineRuns:
    """The line jobs of one demo run: started in `workers` processes as soon as M1 and the prompts exist
    (`start`), or, with no workers, run here when their results are asked for (`results`)."""

    def __init__(self, workers: int):
        if workers < 0:
            raise ValueError(f"line_workers must be >= 0, got {workers}")
        self.workers = workers
        self._pool: Any = None
        self._pending: list[tuple[LineJob, Any]] = []

    def start(self, jobs: list[LineJob]) -> None:
        if self.workers and jobs:
            # spawn, not fork: the parent holds torch's thread pools and an accelerate state
            processes = min(self.workers, len(jobs))
            self._pool = multiprocessing.get_context("spawn").Pool(processes)
            names = " and ".join(" then ".join(job.lines) for job in jobs)
            print(f"[demo] {names}: started in {processes} worker process(es)", flush=True)
        for job in jobs:
            started = self._pool.apply_async(run_line_job, (job,)) if self._pool else None
            self._pending.append((job, started))

    def results(self):
        """Each job's (rows, stage seconds), in the order the jobs were started (call `close` afterwards)."""
        for job, started in self._pending:
            yield started.get() if started is not None else run_line_job(job)

    def close(self) -> None:
        """Stop the workers: idle once every result is in, still running after a failure elsewhere."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
