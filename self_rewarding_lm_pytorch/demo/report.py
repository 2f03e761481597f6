"""The demo's report: a Markdown table per stage, the settings, the run time, and a PNG plot.

Rows are dicts `{"run": "self-reward" | "oracle", "stage": "M1", ...metrics}`; both writers read
only those, so they are testable without training anything.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from self_rewarding_lm_pytorch.core.files import atomic_write_bytes, atomic_write_text

__all__ = ["METRICS", "format_table", "render_report", "write_plot", "write_report"]

# (key, column title, is a rate shown as a percentage)
METRICS = [
    ("accuracy", "accuracy (greedy)", True),
    ("best_of_4_accuracy", "best-of-4 by own judge", True),
    ("oracle_best_of_4", "any of 4 right", True),
    ("judge_pairwise_accuracy", "judge pairwise acc.", True),
    ("judge_parse_failure_rate", "judge parse failures", True),
    ("pairs_made", "pairs made", False),
    ("mean_response_length", "mean answer length", False),
]


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
        lines.append(f"| {row['run']} | {row['stage']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict(rows: list[dict]) -> str:
    by = {(r["run"], r["stage"]): r for r in rows}
    m1, m3 = by.get(("self-reward", "M1")), by.get(("self-reward", "M3"))
    if m1 is None or m3 is None:
        return "The run did not reach M3."
    delta = m3["accuracy"] - m1["accuracy"]
    word = "beats" if delta > 0 else "ties" if delta == 0 else "does not beat"
    text = (
        f"Self-rewarding M3 {word} M1 on greedy accuracy: {100 * m1['accuracy']:.1f}% -> "
        f"{100 * m3['accuracy']:.1f}% ({100 * delta:+.1f} points, on {m1.get('num_heldout', '?')} held-out prompts)."
    )
    oracle = by.get(("oracle", "M3"))
    if oracle is not None:
        text += f" The oracle line (ground-truth reward from M1) reaches {100 * oracle['accuracy']:.1f}%."
    return text


def render_report(rows: list[dict], *, settings: dict, seconds: float, command: str, plot_name: str | None) -> str:
    """The whole report.md text."""
    settings_lines = "\n".join(f"| `{k}` | {v} |" for k, v in settings.items())
    plot = f"\n![metrics per stage]({plot_name})\n" if plot_name else "\n(No plot: matplotlib is not installed.)\n"
    return f"""# srlm demo report

Command: `{command}`
Wall time: {seconds:.0f} s ({seconds / 60:.1f} min)

{_verdict(rows)}

M1 is the SFT model (instruction data + evaluation data); M2 and M3 are the two self-reward DPO
iterations, where the model judges its own candidates. The oracle rows run the same two
iterations from M1 with the ground-truth verifier as an external reward. Metrics are measured on
held-out prompts after each stage; "judge pairwise acc." compares the judge's scores for a correct
and a deliberately wrong answer to each prompt (50% is chance). Every number comes from this run.

{format_table(rows)}
{plot}
## Settings

| setting | value |
|---|---|
{settings_lines}
"""


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
        for run, style in (("self-reward", "o-"), ("oracle", "s--")):
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
