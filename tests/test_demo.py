"""The demo: task and verifier, seed data, evaluation helpers, the report, and a tiny end-to-end run."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from self_rewarding_lm_pytorch.demo.evaluate import best_of_k, pairwise_accuracy
from self_rewarding_lm_pytorch.demo.report import format_table, render_report, write_plot
from self_rewarding_lm_pytorch.demo.task import (
    AdditionTask,
    demo_reward_config,
    digit_marks,
    is_correct,
    judge_steps,
    judge_target,
    parse_prompt,
    render_judge_prompt,
    verifier_reward,
)


@pytest.mark.parametrize(
    "prompt, response, expected",
    [
        ("12+34=", "46", True),
        ("12+34=", " 46 ", True),
        ("12+34=", "47", False),
        ("12+34=", "046", False),
        ("99+1=", "100", True),
        ("0+0=", "0", True),
        ("5+5=", "", False),
        ("5+5=", "10 ", True),
        ("5+5=", "1 0", False),
    ],
)
@pytest.mark.unit
def test_verifier(prompt, response, expected):
    assert is_correct(prompt, response) is expected


@pytest.mark.unit
def test_bad_prompt_is_a_clear_error():
    with pytest.raises(ValueError, match="not an addition prompt"):
        parse_prompt("12-3=")
    assert verifier_reward(["1+2=", "1+2="], ["3", "4"]) == [1.0, 0.0]


@pytest.mark.unit
def test_wrong_answers_are_wrong_and_plausible():
    task, rng = AdditionTask(max_digits=3), random.Random(0)
    for prompt in task.sample_prompts(300, rng):
        wrong = task.wrong_answer(prompt, rng)
        assert wrong.isdigit() and not is_correct(prompt, wrong)
    # the classic dropped carry is among the mistakes: 58+67 = 125, without carries 15
    seen = {task.wrong_answer("58+67=", random.Random(s)) for s in range(200)}
    assert "15" in seen and "125" not in seen


@pytest.mark.unit
def test_judge_prompt_matches_the_reward_config_and_targets_parse():
    config = demo_reward_config()
    assert config.render(prompt="12+34=", response="46") == render_judge_prompt("12+34=", "46") == "Judge 46 ? 12+34="
    right, wrong = judge_target("12+34=", "46"), judge_target("12+34=", "45")
    assert right == "240:06 130:04 46 44=66= Score: 5" and config.parse(right) == 5.0
    assert wrong == "240:06 130:04 46 44=65! Score: 1" and config.parse(wrong) == 1.0
    assert config.parse("46 44=66= Score: 9") is None  # out of the 1..5 range


@pytest.mark.unit
def test_judge_steps_add_column_by_column_from_the_units_up():
    """Hand-derived: 57+89: 7+9+0 = 16, 5+8+1 = 14 -> 146; 5+7 padded to 05+07: 5+7+0 = 12, 0+0+1 = 01 -> 12;
    999+1: 9+1 = 10, 9+0+1 = 10, 9+0+1 = 10 -> 1000."""
    assert judge_steps(57, 89, 2) == "790:16 581:14"
    assert judge_steps(5, 7, 2) == "570:12 001:01"
    assert judge_steps(999, 1, 3) == "910:10 901:10 901:10"
    assert judge_target("57+89=", "146") == "790:16 581:14 146 11=44=66= Score: 5"
    assert judge_target("57+89=", "145") == "790:16 581:14 146 11=44=65! Score: 1"
    assert judge_target("5+7=", "12") == "570:12 001:01 12 11=22= Score: 5"  # 1-digit operands: the same steps
    assert judge_target("5+7=", "") == "570:12 001:01 12 1_!2_! Score: 1"
    assert judge_target("5+7=", "12", digits=1) == "570:12 12 11=22= Score: 5"
    assert judge_target("123+4=", "127", digits=2) == "340:07 200:02 100:01 127 11=22=77= Score: 5"  # never cut
    with pytest.raises(ValueError, match="do not fit in 2 digits"):
        judge_steps(100, 1, 2)


def _steps_sum(target: str) -> int:
    """Reassemble the sum from a judge target's steps alone: each step's digit, units first, then the last carry."""
    steps = [step for step in target.split() if re.fullmatch(r"\d{3}:\d{2}", step)]
    digits = [step[-1] for step in steps]
    return int(steps[-1][-2] + "".join(reversed(digits)))


@settings(max_examples=300, deadline=None)
@given(a=st.integers(0, 99), b=st.integers(0, 99), wrong=st.integers(0, 400), pad=st.sampled_from(["", " "]))
@pytest.mark.unit
def test_judge_target_properties(a, b, wrong, pad):
    """A right answer never gets a `!` and always scores 5; a wrong one always scores 1; the steps' digits
    reassemble a+b and every step is a correct column sum with the previous step's carry."""
    prompt, config = f"{a}+{b}=", demo_reward_config()
    right_target = judge_target(prompt, pad + str(a + b) + pad)
    assert "!" not in right_target and config.parse(right_target) == 5.0
    assert _steps_sum(right_target) == a + b and right_target.split()[2] == str(a + b)
    carry = 0
    for step in right_target.split()[:2]:
        x, y, c, colon, high, low = step
        assert colon == ":" and int(c) == carry and int(x) + int(y) + carry == 10 * int(high) + int(low)
        carry = int(high)
    if wrong != a + b:
        wrong_target = judge_target(prompt, str(wrong))
        assert "!" in wrong_target and config.parse(wrong_target) == 1.0
        assert wrong_target.split()[:3] == right_target.split()[:3]  # the working does not look at the answer
    # The reference-guided judge reads the worked sum and compares it itself: right on the targets, and
    # right where the judge's own comparison went wrong (a target whose marks and score were flipped).
    reference = demo_reward_config(reference_guided=True)
    assert reference.judge_answer(right_target) == str(a + b)
    assert reference.parse(right_target, response=pad + str(wrong) + pad) == (5.0 if wrong == a + b else 1.0)
    fooled = right_target.replace("Score: 5", "Score: 1")
    assert config.parse(fooled) == 1.0 and reference.parse(fooled, response=str(a + b)) == 5.0


@pytest.mark.unit
def test_judge_examples_must_fit_the_context():
    """2 digits: "Judge 298 ? 99+99=" (18 bytes) + "990:18 991:19 198 12!99=98! Score: 1" (36) + EOS = 55 <= 64."""
    assert AdditionTask(max_digits=2).longest_judgment() == (18, 36)
    AdditionTask(max_digits=2).check_judge_fits(64, 40)
    with pytest.raises(ValueError, match="need 69 tokens"):
        AdditionTask(max_digits=3).check_judge_fits(64, 40)
    with pytest.raises(ValueError, match="judge_max_new_tokens must be in"):
        AdditionTask(max_digits=2).check_judge_fits(64, 30)  # would cut the verdict off
    with pytest.raises(ValueError, match="judge_max_new_tokens must be in"):
        AdditionTask(max_digits=2).check_judge_fits(64, 50)  # 18 + 50 > 64: the judge would never be asked


@pytest.mark.unit
def test_digit_marks_line_up_from_the_left_and_pad():
    """Hand-derived: 100 vs 10 -> (1,1)= (0,0)= (0,_)!; 7 vs 17 -> (7,1)! (_,7)!; equal -> all `=`."""
    assert digit_marks("100", "10") == "11= 00= 0_!"
    assert digit_marks("7", "17") == "71! _7!"
    assert digit_marks("85", "85", sep="") == "88=55="
    # a wrong answer always gets at least one `!`, a right one never does
    task, rng = AdditionTask(max_digits=2), random.Random(1)
    for prompt in task.sample_prompts(200, rng):
        right, wrong = task.answer(prompt), task.wrong_answer(prompt, rng)
        assert "!" not in judge_target(prompt, right) and "!" in judge_target(prompt, wrong)


@pytest.mark.unit
def test_random_wrong_answers_carry_no_digits_of_the_sum():
    """With `random_wrong_fraction` 1 every deliberately wrong judged answer is uniform over 0..198 minus the sum,
    so it shares a digit with the sum about as often as chance (a plausible mistake shares most of them)."""
    prompts = AdditionTask(max_digits=2).sample_prompts(2000, random.Random(0))
    task = AdditionTask(max_digits=2, random_wrong_fraction=1.0)
    records = task.evaluation_examples(prompts, random.Random(1), correct_fraction=0.0)
    answers = [rec["prompt"].removeprefix("Judge ").split(" ? ")[0] for rec in records]
    assert all(not is_correct(p, a) and 0 <= int(a) <= 198 for p, a in zip(prompts, answers, strict=True))
    assert all(rec["response"].endswith("Score: 1") for rec in records)
    same = [
        x == y
        for p, a in zip(prompts, answers, strict=True)
        for x, y in zip(str(sum(parse_prompt(p))), a, strict=False)
    ]
    assert sum(same) / len(same) < 0.2
    with pytest.raises(ValueError, match="random_wrong_fraction"):
        AdditionTask(random_wrong_fraction=1.5)


@pytest.mark.unit
def test_seed_data_is_disjoint_balanced_and_reproducible():
    task = AdditionTask(max_digits=2)
    kwargs = dict(num_instruction=300, num_evaluation=400, num_self_reward_prompts=100, num_heldout=50, seed=3)
    data = task.build(**kwargs, render=render_judge_prompt)
    assert data == task.build(**kwargs, render=render_judge_prompt)
    train = {r["prompt"] for r in data.instruction}
    assert len(train) == 300 and not train & set(data.heldout_prompts)
    assert not set(data.self_reward_prompts) & (train | set(data.heldout_prompts))
    assert all(is_correct(r["prompt"], r["response"]) for r in data.instruction)
    # every evaluation target states the true sum and a score that reflects correctness
    for rec in data.evaluation:
        response, prompt = rec["prompt"].removeprefix("Judge ").split(" ? ")
        assert rec["response"] == judge_target(prompt, response, digits=2)
        assert prompt not in train | set(data.heldout_prompts)  # EFT prompts are their own
    correct = data.stats["num_evaluation_correct"]
    assert 150 < correct < 250  # about half right, half deliberately wrong
    assert len(data.sft) == 700


@pytest.mark.unit
def test_heldout_prompts_follow_the_training_distribution():
    """The sets are cut at random from one pool: the scarce 1-digit + 1-digit sums (100 of 10,000) are not
    piled into the held-out set, as they were when it was drawn first (16% of it instead of ~1-4%)."""
    data = AdditionTask(max_digits=2).build(
        num_instruction=1000, num_evaluation=1500, num_self_reward_prompts=0, num_heldout=400, seed=0
    )

    def one_digit_share(prompts):
        return sum(max(len(x) for x in p[:-1].split("+")) == 1 for p in prompts) / len(prompts)

    train = [r["prompt"] for r in data.instruction]
    assert one_digit_share(data.heldout_prompts) < 0.06 and one_digit_share(train) < 0.06
    assert abs(one_digit_share(data.heldout_prompts) - one_digit_share(train)) < 0.03


@pytest.mark.unit
def test_settings_that_need_more_prompts_than_exist_fail_early():
    from self_rewarding_lm_pytorch.demo.run import DemoSettings

    with pytest.raises(ValueError, match="only 10000"):  # 2-digit operands 0..99: 100 * 100 prompts
        DemoSettings(num_instruction=4000, num_evaluation=6000, num_heldout=400)
    with pytest.raises(ValueError, match="correct_fraction"):
        AdditionTask().evaluation_examples(["1+2="], random.Random(0), correct_fraction=1.5)


@pytest.mark.unit
def test_wilson_interval_by_hand():
    from self_rewarding_lm_pytorch.demo.iterations import wilson_interval

    # p = 0.5, n = 100, z = 1.96: centre 0.5, half-width 1.96 * sqrt(0.0025 + 0.96^2/40000) / 1.0384 = 0.0955
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)


@pytest.mark.unit
def test_pairwise_accuracy_and_best_of_k():
    """Hand-derived: pairs (5,1) win, (3,3) tie, (nan,1) loses (NaN ranks lowest) -> (1 + 0.5 + 0) / 3."""
    assert pairwise_accuracy([5.0, 3.0, math.nan], [1.0, 3.0, 1.0]) == pytest.approx(0.5)
    assert math.isnan(pairwise_accuracy([], []))
    scores = torch.tensor([[1.0, math.nan, 4.0, 4.0], [math.nan, math.nan, math.nan, 2.0]])
    assert best_of_k(scores).tolist() == [2, 3]  # ties go to the first; NaN never wins over a number


ROWS = [
    {
        "run": "self-reward",
        "stage": "M1",
        "accuracy": 0.25,
        "best_of_4_accuracy": 0.3,
        "oracle_best_of_4": 0.5,
        "judge_pairwise_accuracy": 0.6,
        "judge_parse_failure_rate": 0.0,
        "pairs_made": None,
        "mean_response_length": 2.0,
        "num_heldout": 40,
    },
    {
        "run": "self-reward",
        "stage": "M3",
        "accuracy": 0.35,
        "best_of_4_accuracy": 0.4,
        "oracle_best_of_4": 0.5,
        "judge_pairwise_accuracy": math.nan,
        "judge_parse_failure_rate": 0.1,
        "pairs_made": 12,
        "pairs_correct_first": 7,
        "pairs_wrong_first": 2,
        "reward_agreement": 0.625,
        "dpo_margin": 0.5,
        "mean_response_length": 2.25,
        "num_heldout": 40,
        "accuracy_ci_low": 0.22,
        "accuracy_ci_high": 0.51,
    },
    {"run": "oracle", "stage": "M1", "accuracy": 0.25, "num_heldout": 40},
    {"run": "oracle", "stage": "M3", "accuracy": 0.275, "num_heldout": 40},
]


@pytest.mark.unit
def test_report_table_and_verdict():
    table = format_table(ROWS)
    assert "| self-reward | M1 | 25.0% | 30.0% | 50.0% | 60.0% | 0.0% | - | - | - | - | - | 2.0 |" in table
    assert (
        "| self-reward | M3 | 35.0% [22.0, 51.0] | 40.0% | 50.0% | - | 10.0% | 12 | 7 | 2 | 62.5% | 0.5 | 2.2 |"
        in table
    )
    text = render_report(ROWS, settings={"dim": 64}, seconds=90, command="srlm demo", plot_name=None)
    assert "self-reward: M3 beats M1 on greedy accuracy, 25.0% -> 35.0% (+10.0 points, on 40 held-out prompts)" in text
    assert "Goal oracle M3 >= M1 + 5 points: not met." in text  # +2.5 points
    assert "Goal a self-reward line M3 >= M1 + 3 points: met (best: self-reward, +10.0)." in text
    assert "| `dim` | 64 |" in text and "No plot" in text


@pytest.mark.unit
def test_control_line_is_reported_but_never_counts_as_a_self_reward_line():
    # the control (no pairs) rises 20 points, the self-reward line 2: the self-reward goal is not met
    rows = [
        {**ROWS[0], "accuracy": 0.25},
        {**ROWS[1], "accuracy": 0.27},
        {"run": "control", "stage": "M1", "accuracy": 0.25, "num_heldout": 40},
        {"run": "control", "stage": "M3", "accuracy": 0.45, "num_heldout": 40},
    ]
    text = render_report(rows, settings={}, seconds=1, command="srlm demo", plot_name=None)
    assert (
        "Goal a self-reward line M3 >= M1 + 3 points: not met (best: self-reward, +2.0, -18.0 beyond the control)."
        in text
    )
    assert "The control (no pairs, the seed data replayed as long) moved +20.0 points" in text


@pytest.mark.unit
def test_control_trains_as_many_steps_as_each_oracle_iteration():
    from self_rewarding_lm_pytorch.demo.line_runs import oracle_steps
    from self_rewarding_lm_pytorch.demo.lines import control_stages
    from self_rewarding_lm_pytorch.demo.run import PRESETS

    rows = [
        {"run": "oracle", "stage": "M1", "dpo_steps": 0},
        {"run": "consistency", "stage": "M2", "dpo_steps": 99},
        {"run": "oracle", "stage": "M2", "dpo_steps": 195},
        {"run": "oracle", "stage": "M3", "dpo_steps": 0},  # an iteration without pairs trains nothing
    ]
    assert oracle_steps(rows) == [195, 0]
    s = PRESETS["default"]
    first, second = control_stages(s, Path("data"), oracle_steps(rows))
    assert first.num_train_steps == 195 and first.batch_size == s.dpo_batch_size * s.replay_per_pair
    assert first.learning_rate == s.dpo_learning_rate and first.lr_schedule == s.dpo_lr_schedule
    assert second.num_train_steps == 1 and second.warmup_steps == 0  # a stage trains at least one step


@pytest.mark.unit
def test_report_says_which_loss_and_why():
    settings = {"dpo_loss_type": "dpop", "dpo_sft_weight": 0.5}
    text = render_report(ROWS, settings=settings, seconds=1, command="srlm demo", plot_name=None)
    assert "use `dpop` with a per-token NLL term on the chosen answer of weight 0.5" in text
    assert "bench/results/preference_losses.md" in text


@pytest.mark.e2e
def test_plot_is_a_png_or_skipped_with_a_warning(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    path = write_plot(tmp_path / "m.png", ROWS)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.warns(UserWarning, match="matplotlib is not installed"):
        assert write_plot(tmp_path / "n.png", ROWS) is None
    assert not (tmp_path / "n.png").exists()


@pytest.mark.e2e
def test_demo_end_to_end_tiny(tmp_path, capsys):
    """`srlm demo` with the hidden test-only "tiny" preset (smaller than --quick): every stage runs,
    and the run folder gets the report, the plot, the manifest and every line's pipeline run."""
    from self_rewarding_lm_pytorch.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--preset", "tiny", "--out", str(out), "--seed", "1", "--workers", "2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    labels = [(r["run"], r["stage"]) for r in manifest["rows"]]
    assert labels == [
        ("self-reward", "M1"),
        ("self-reward", "M2"),
        ("self-reward", "M3"),
        ("reference-judge", "M1"),
        ("reference-judge", "M2"),
        ("reference-judge", "M3"),
        ("consistency", "M1"),
        ("consistency", "M2"),
        ("consistency", "M3"),
        ("oracle", "M1"),
        ("oracle", "M2"),
        ("oracle", "M3"),
        ("control", "M1"),
        ("control", "M2"),
        ("control", "M3"),
    ]
    for row in manifest["rows"]:
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["judge_parse_failure_rate"] <= 1
    report = (out / "report.md").read_text()
    assert "| self-reward | M3 |" in report and "Wall time" in report
    for line in ("self-reward", "reference-judge", "consistency", "oracle", "control"):
        assert (out / line / "manifest.json").exists()
    assert (out / "self-reward" / "02-prompt-generation" / "stats.json").exists()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 11  # M1 is measured once, not again for the other lines
    for row in metrics:
        assert {"run", "stage", "accuracy", "num_heldout", "accuracy_ci_low", "accuracy_ci_high"} <= set(row)
        assert row["accuracy_ci_low"] <= row["accuracy"] <= row["accuracy_ci_high"]
    for row in metrics[1:]:
        if row["run"] == "control":  # no pairs: SFT on the replayed seed data
            continue
        assert {"pairs_made", "pairs_correct_first", "pairs_wrong_first", "reward_agreement", "dpo_margin"} <= set(row)
    try:
        import matplotlib  # noqa: F401

        assert (out / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    except ImportError:
        assert "No plot" in report
    assert "| run | model |" in capsys.readouterr().out
    from self_rewarding_lm_pytorch.demo.run import default_sft_threads

    assert manifest["processes"] == {
        "torch threads (SFT)": default_sft_threads(),
        "torch threads": 1,
        "line workers": 2,
    }
    # the run folder is never overwritten silently
    assert main(["demo", "--preset", "tiny", "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err

    # The lines ran in two worker processes beside the self-reward line; one after another in this
    # process they give the same rows, the same sampled candidates and the same final weights.
    from self_rewarding_lm_pytorch.demo.run import PRESETS, run_demo

    before = torch.get_num_threads()
    here = run_demo(tmp_path / "sequential", settings=PRESETS["tiny"], seed=1, progress=False, line_workers=0)
    assert torch.get_num_threads() == before  # SFT's threads, then the lines', then the caller's again
    assert json.dumps(here["rows"], default=str) == json.dumps(manifest["rows"])  # as JSON: nan == nan
    assert (tmp_path / "sequential" / "metrics.jsonl").read_text() == (out / "metrics.jsonl").read_text()
    compared = 0
    for line in ("reference-judge", "consistency", "oracle", "control"):
        for path in sorted((out / line).glob("*/*")):
            if path.name in ("model.safetensors", "candidates.jsonl", "pairs.jsonl"):
                compared += path.name == "model.safetensors"
                twin = tmp_path / "sequential" / path.relative_to(out)
                assert twin.read_bytes() == path.read_bytes(), path
    assert compared == 8  # every stage of the four lines ends with its model


@pytest.mark.unit
def test_line_jobs_keep_the_control_after_the_oracle_and_drop_lines_turned_off():
    from self_rewarding_lm_pytorch.demo.line_runs import LineRuns, line_jobs
    from self_rewarding_lm_pytorch.demo.run import PRESETS

    def lines(**changes):
        settings = dataclasses.replace(PRESETS["tiny"], **changes)
        common = dict(out=Path("x"), seed=0, heldout=[], m1_row={}, progress=False, threads=1)
        return [job.lines for job in line_jobs(settings, **common)]

    assert lines() == [("oracle", "control"), ("reference-judge",), ("consistency",)]
    assert lines(oracle=False, reference_judge=False) == [("consistency",)]  # the control trains as long as the oracle
    assert lines(control=False, consistency=False) == [("oracle",), ("reference-judge",)]
    assert lines(oracle=False, consistency=False, reference_judge=False) == []
    with pytest.raises(ValueError, match="line_workers"):
        LineRuns(-1)


@pytest.mark.unit
def test_demo_thread_and_worker_counts_are_checked_by_the_cli(tmp_path, capsys):
    from self_rewarding_lm_pytorch.cli import main

    for flag, value in (("--sft-threads", "0"), ("--workers", "-1")):
        with pytest.raises(SystemExit) as exit_info:
            main(["demo", "--preset", "tiny", "--out", str(tmp_path / "never"), flag, value])
        assert exit_info.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
