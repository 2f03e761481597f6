"""The demo's report: a Markdown table per stage, the settings, the run time, and a PNG plot.

Rows are dicts `{"run": <one of LINES>, "stage": "M1", ...metrics}`; the
writers read only those, so they are testable without training anything.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from self_rewarding_lm_pytorch.core.files import atomic_write_bytes, atomic_write_text

__all__ = ["METRICS", "format_table", "render_report", "write_plot", "write_report"]

# (key, column title, is a rate shown as a percentage)
METRICS = [
    ("accuracy", "accuracy (greedy) [95% CI]", True),
    ("best_of_4_accuracy", "best-of-4 by own judge", True),
    ("oracle_best_of_4", "any of 4 right", True),
    ("judge_pairwise_accuracy", "judge pairwise acc.", True),
    ("judge_parse_failure_rate", "judge parse failures", True),
    ("pairs_made", "pairs made", False),
    ("pairs_correct_first", "pairs right over wrong", False),
    ("pairs_wrong_first", "pairs wrong over right", False),
    ("reward_agreement", "reward agrees with verifier (own answers)", True),
    ("dpo_margin", "DPO reward margin", False),
    ("mean_response_length", "mean answer length", False),
]
LINES = ("self-reward", "reference-judge", "consistency", "oracle", "control")
SELF_REWARD_LINES = ("self-reward", "reference-judge", "consistency")  # no ground truth after the seed data
# The goals, checked against what the run measured (points of greedy accuracy, M1 -> M3).
ORACLE_GOAL, SELF_REWARD_GOAL = 5.0, 3.0


def _cell(value, is_rate: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if is_rate:
        return f"{100 * value:.1f}%"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def format_table(rows: list[dict]) -> str:
    """A Markdown table, one row per (run, stage)."""
    header = "| run | model | " + " | ".join(title for _, title, _ in METRICS) + " |"
    rule = "|" + "---|" * (len(METRICS) + 2)
    lines = [header, rule]
    for row in rows:
        cells = [_cell(row.get(key), rate) for key, _, rate in METRICS]
        if row.get("accuracy_ci_low") is not None:
            cells[0] += f" [{100 * row['accuracy_ci_low']:.1f}, {100 * row['accuracy_ci_high']:.1f}]"
        lines.append(f"| {row['run']} | {row['stage']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict(rows: list[dict]) -> str:
    by = {(r["run"], r["stage"]): r for r in rows}
    sentences, gains = [], {}
    for line in LINES:
        m1, m3 = by.get((line, "M1")), by.get((line, "M3"))
        if m1 is None or m3 is None:
            continue
        gains[line] = delta = 100 * (m3["accuracy"] - m1["accuracy"])
        word = "beats" if delta > 0 else "ties" if delta == 0 else "does not beat"
        sentences.append(
            f"{line}: M3 {word} M1 on greedy accuracy, {100 * m1['accuracy']:.1f}% -> {100 * m3['accuracy']:.1f}% "
            f"({delta:+.1f} points, on {m1.get('num_heldout', '?')} held-out prompts)."
        )
    if not sentences:
        return "The run did not reach M3."
    if "oracle" in gains:
        met = "met" if gains["oracle"] >= ORACLE_GOAL else "not met"
        sentences.append(f"Goal oracle M3 >= M1 + {ORACLE_GOAL:.0f} points: {met}.")
    own = {k: v for k, v in gains.items() if k in SELF_REWARD_LINES}
    if own:
        best = max(own, key=lambda line: own[line])
        met = "met" if own[best] >= SELF_REWARD_GOAL else "not met"
        beyond = f", {own[best] - gains['control']:+.1f} beyond the control" if "control" in gains else ""
        sentences.append(
            f"Goal a self-reward line M3 >= M1 + {SELF_REWARD_GOAL:.0f} points: {met} "
            f"(best: {best}, {own[best]:+.1f}{beyond})."
        )
    if "control" in gains:
        sentences.append(
            f"The control (no pairs, the seed data replayed as long) moved {gains['control']:+.1f} points: "
            "what the lines gain beyond it comes from their pairs."
        )
    return "\n".join(f"- {s}" for s in sentences)


def render_report(rows: list[dict], *, settings: dict, seconds: float, command: str, plot_name: str | None) -> str:
    """The whole report.md text."""
    settings_lines = "\n".join(f"| `{k}` | {v} |" for k, v in settings.items())
    plot = f"\n![metrics per stage]({plot_name})\n" if plot_name else "\n(No plot: matplotlib is not installed.)\n"
    return f"""# srlm demo report

Command: `{command}`
Wall time: {seconds:.0f} s ({seconds / 60:.1f} min)

{_verdict(rows)}

M1 is the SFT model (instruction data + evaluation data + prompt-writing examples); it then writes
the prompts of every DPO iteration itself (prompt self-generation). M2 and M3 are two DPO
iterations: `self-reward` rows judge their own candidates (the paper's LLM-as-a-judge: the score the
judge writes), `reference-judge` rows use the same judge but compare the sum it worked out with the
candidate instead of trusting its written score, `consistency` rows reward the share of the model's
own samples that agree (no judge, no labels), `oracle` rows reward with the ground-truth verifier (the
ceiling); every iteration replays the seed data beside its pairs. `control` rows train on that replay
alone, no pairs, as many steps as the oracle's iterations.
Metrics are measured on held-out prompts after each stage; "judge pairwise acc." compares the
judge's scores for a correct and a deliberately wrong answer (50% is chance); it and "best-of-4 by
own judge" use the judge's written score on every line, `reference-judge` included; the pair columns and
"reward agrees with verifier" describe each iteration's own candidates and pairs, checked by the
verifier for this report only; "DPO reward margin" is the mean `rewards/margins` of the iteration's
last logged steps. Every number comes from this run.

{format_table(rows)}
{plot}
{_loss_choice(settings)}

## Settings

| setting | value |
|---|---|
{settings_lines}
"""


def _loss_choice(settings: dict) -> str:
    """Why the DPO iterations use the loss they use (issue 16: the loss the benchmark table supports)."""
    loss, nll = settings.get("dpo_loss_type", "sigmoid"), settings.get("dpo_sft_weight", 0.0)
    return f"""## Why this loss

The DPO iterations use `{loss}` with a per-token NLL term on the chosen answer of weight {nll} (RPO,
Pang et al. 2024). `bench/results/preference_losses.md` trains ten preference losses on this demo's
M1 with verifier pairs: plain DPO lowers held-out accuracy there (the chosen answer's log-prob falls,
likelihood displacement), while the losses that keep the chosen answer's log-prob rising (this
NLL-anchored sigmoid, ORPO, DPOP) hold it. Change it with the `dpo_loss_type` and `dpo_sft_weight`
settings."""


def write_report(path: Path, rows: list[dict], **kwargs) -> Path:
    return atomic_write_text(path, render_report(rows, **kwargs))


def write_plot(path: Path, rows: list[dict]) -> Path | None:
    """A PNG of the rate metrics per stage, one line per run; None (with a warning) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on servers and CI
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn(
            "matplotlib is not installed: skipping the plot (pip install 'self-rewarding-lm-pytorch[demo]')",
            stacklevel=2,
        )
        return None
    import io

    rates = [(k, t) for k, t, rate in METRICS if rate]
    fig, axes = plt.subplots(1, len(rates), figsize=(3.2 * len(rates), 3.2), squeeze=False)
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    for ax, (key, title) in zip(axes[0], rates, strict=True):
        for run, style in (
            ("self-reward", "o-"),
            ("reference-judge", "d-"),
            ("consistency", "^-."),
            ("oracle", "s--"),
            ("control", "x:"),
        ):
            points = [(stages.index(r["stage"]), r.get(key)) for r in rows if r["run"] == run]
            points = [(x, y) for x, y in points if y is not None and not (isinstance(y, float) and math.isnan(y))]
            if points:
                ax.plot([x for x, _ in points], [y for _, y in points], style, label=run)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(stages)), stages)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
