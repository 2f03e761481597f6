"""The staged pipeline: order, folders, manifest, resume after a crash, reproducibility, bad input."""

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_same_weights, tiny_lm, upper_case_sft, weights

from self_rewarding_lm_pytorch import (
    ByteTokenizer,
    ExternalRewardDPOConfig,
    RewardConfig,
    RunMismatchError,
    SelfRewardDPOConfig,
    SelfRewardingTrainer,
    SFTConfig,
    create_default_paper_config,
)

PROMPTS = ["ab", "cd", "ef", "gh", "ij", "kl"]
SFT_DATA = upper_case_sft(PROMPTS)


def make_model(seed=0, max_seq_len=48):
    return tiny_lm(max_seq_len=max_seq_len, dim=16, seed=seed)


def count_a(prompts, responses):
    """A programmatic reward that rarely ties: how many 'a' bytes, minus a little for length."""
    return [r.count("a") - 0.01 * len(r) for r in responses]


def small_pipeline(**dpo_overrides):
    # A barely trained tiny model rarely writes EOS within 6 tokens, and unfinished candidates are not
    # chosen by default (they would teach cut-off answers): these mechanics tests allow them.
    dpo = dict(num_train_steps=4, batch_size=2, max_new_tokens=6, checkpoint_every=2, log_every=1, learning_rate=1e-3)
    dpo.setdefault("allow_unfinished_chosen", True)
    dpo.update(dpo_overrides)
    return [
        SFTConfig(SFT_DATA, num_train_steps=3, batch_size=2, learning_rate=1e-3),
        ExternalRewardDPOConfig(count_a, PROMPTS, 6, **dpo),
    ]


def run(tmp_path, stages, name="run", seed=7, model=None, **kwargs):
    model = model or make_model()
    trainer = SelfRewardingTrainer(
        model,
        stages,
        tokenizer=ByteTokenizer(),
        checkpoints_folder=tmp_path / name,
        seed=seed,
        accelerate_kwargs=dict(cpu=True),
        progress=False,
        **kwargs,
    )
    return trainer, model


@pytest.mark.e2e
def test_stages_run_in_order_each_in_its_folder(tmp_path):
    trainer, _model = run(tmp_path, small_pipeline())
    summaries = trainer()
    folder = tmp_path / "run"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [s["folder"] for s in manifest["finished"]] == ["01-sft", "02-external-reward-dpo"]
    for name in ("01-sft", "02-external-reward-dpo"):
        assert (folder / name / "model.safetensors").exists()
        assert json.loads((folder / name / "config.json").read_text())["kind"] == name[3:]
    assert (folder / "02-external-reward-dpo" / "pairs.jsonl").exists()
    assert summaries[1]["trained"] and summaries[1]["num_pairs"] > 0
    # The stage's num_train_steps reaches its trainer (the reference package dropped it).
    assert summaries[0]["train_steps"] == 3 and summaries[1]["train_steps"] == 4


@pytest.mark.e2e
def test_same_seed_same_weights_and_rerun_is_a_no_op(tmp_path):
    trainer_a, model_a = run(tmp_path, small_pipeline(), name="a")
    trainer_a()
    trainer_b, model_b = run(tmp_path, small_pipeline(), name="b")
    trainer_b()
    assert_same_weights(weights(model_a), weights(model_b), atol=0)

    # A finished run reruns as a no-op: it loads the last stage's model and trains nothing.
    stamp = (tmp_path / "a" / "02-external-reward-dpo" / "model.safetensors").stat().st_mtime_ns
    trainer_c, model_c = run(tmp_path, small_pipeline(), name="a", model=make_model(seed=123))
    trainer_c()
    assert_same_weights(weights(model_c), weights(model_a), atol=0)
    assert (tmp_path / "a" / "02-external-reward-dpo" / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.e2e
def test_a_different_pipeline_never_silently_overwrites(tmp_path):
    run(tmp_path, small_pipeline())[0]()
    other, _ = run(tmp_path, small_pipeline(dpo_beta=0.5))
    with pytest.raises(RunMismatchError, match="overwrite_checkpoints=True"):
        other()
    other(overwrite_checkpoints=True)  # the explicit request replaces the run
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert len(manifest["finished"]) == 2


@pytest.mark.e2e
def test_crash_in_second_stage_then_rerun_matches_uninterrupted(tmp_path, monkeypatch):
    """A crash after the stage's step-2 checkpoint; the rerun resumes inside stage 2 from it."""
    reference, model_ref = run(tmp_path, small_pipeline(), name="straight")
    reference()

    undo = crash_at_call(monkeypatch, "dpo", 3)
    crashed, _ = run(tmp_path, small_pipeline(), name="crashed")
    with pytest.raises(RuntimeError, match="injected crash"):
        crashed()
    undo()
    manifest = json.loads((tmp_path / "crashed" / "manifest.json").read_text())
    assert [s["folder"] for s in manifest["finished"]] == ["01-sft"]

    resumed, model_resumed = run(tmp_path, small_pipeline(), name="crashed", model=make_model(seed=99))
    resumed()
    assert_same_weights(weights(model_resumed), weights(model_ref))


@pytest.mark.e2e
def test_garbage_judge_makes_no_pairs_and_the_pipeline_goes_on(tmp_path):
    """A judge whose text never parses: the stage trains nothing, says so, still checkpoints."""
    never = RewardConfig("Rate {{ prompt }} / {{ response }}. Score:", "Rating: {{ reward }} of 10")
    stages = [
        SelfRewardDPOConfig(
            PROMPTS[:3],
            2,
            num_train_steps=2,
            batch_size=2,
            max_new_tokens=4,
            judge_max_new_tokens=4,
            num_sampled_reward_responses=1,
        ),
        SFTConfig(SFT_DATA, num_train_steps=2, batch_size=2),
    ]
    trainer, _ = run(tmp_path, stages, self_reward_prompt_config=never)
    with pytest.warns(UserWarning, match="no preference pairs were made"):
        summaries = trainer()
    assert summaries[0]["trained"] is False and summaries[0]["num_pairs"] == 0
    assert summaries[0]["preferences"]["parse_failure_rate"] == 1.0
    assert (tmp_path / "run" / "01-self-reward-dpo" / "model.safetensors").exists()
    assert (tmp_path / "run" / "02-sft" / "model.safetensors").exists()


@pytest.mark.unit
def test_dict_configs_mean_the_paper_recipe():
    stages = create_default_paper_config(
        train_sft_dataset=SFT_DATA, self_reward_prompt_dataset=PROMPTS, dpo_num_train_steps=5
    )
    assert [type(s).kind for s in stages] == ["sft", "self-reward-dpo", "self-reward-dpo"]
    assert [s.num_generated_preference_pairs for s in stages[1:]] == [3964, 6942]
    assert all(s.num_train_steps == 5 and s.dpo_beta == 0.1 for s in stages[1:])
    assert stages[1].num_candidate_responses == 4 and stages[1].num_sampled_reward_responses == 3
    assert stages[1].gen_temperature == 0.7 and stages[1].gen_top_p == 0.9


@pytest.mark.unit
def test_bad_configs_fail_at_construction():
    with pytest.raises(TypeError, match="not a stage config"):
        SelfRewardingTrainer(make_model(), [SFTConfig(SFT_DATA), "sft"])
    with pytest.raises(ValueError, match="empty"):
        SelfRewardingTrainer(make_model(), [])
    with pytest.raises(ValueError, match="batch_size"):
        SFTConfig(SFT_DATA, batch_size=0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        SFTConfig(SFT_DATA, not_a_field=1)
    with pytest.raises(ValueError, match="num_candidate_responses"):
        SelfRewardDPOConfig(PROMPTS, 4, num_candidate_responses=1)
    with pytest.raises(TypeError, match="reward_model"):
        ExternalRewardDPOConfig(42, PROMPTS, 4)


@pytest.mark.e2e
def test_a_reward_model_plugs_into_the_external_reward_stage(tmp_path):
    """The stage scores with RewardModel.score; pairs.jsonl agrees with the model's own scores."""
    from self_rewarding_lm_pytorch import RewardModel

    torch.manual_seed(3)
    rm = RewardModel(num_tokens=259, max_seq_len=48, dim=16, depth=1, heads=2)
    stages = [
        ExternalRewardDPOConfig(
            rm, PROMPTS, 4, num_train_steps=2, batch_size=2, max_new_tokens=6, allow_unfinished_chosen=True
        )
    ]
    trainer, _ = run(tmp_path, stages)
    summaries = trainer()
    assert summaries[0]["num_pairs"] > 0
    pairs = [json.loads(line) for line in (tmp_path / "run" / "01-external-reward-dpo" / "pairs.jsonl").open()]
    for pair in pairs:
        chosen, rejected = rm.score([pair["prompt"]] * 2, [pair["chosen"], pair["rejected"]]).tolist()
        assert chosen > rejected
        assert chosen == pytest.approx(pair["chosen_score"], abs=1e-4)


def launch_pipeline(out, *, processes, seed="7"):
    from launcher import launch

    launch(Path(__file__).parent / "scripts" / "two_process_pipeline.py", out, seed, processes=processes)


@pytest.mark.distributed
def test_two_processes_run_the_pipeline_to_the_weights_of_one(tmp_path):
    """`accelerate launch` with 2 processes (gloo): they split preference generation, make the same
    pairs as one process, and both end with the single-process weights."""
    from safetensors.torch import load_file

    one, two = tmp_path / "one", tmp_path / "two"
    launch_pipeline(one, processes=1)
    launch_pipeline(two, processes=2)
    expected = load_file(str(one / "weights-rank0.safetensors"))
    for rank in (0, 1):
        assert_same_weights(load_file(str(two / f"weights-rank{rank}.safetensors")), expected)
    manifest = json.loads((two / "run" / "manifest.json").read_text())
    assert [s["folder"] for s in manifest["finished"]] == ["01-sft", "02-external-reward-dpo"]
    # Each process generated a share of the preference chunks; together they made one process's pairs.
    assert (two / "pairs.jsonl").read_text() == (one / "pairs.jsonl").read_text()


@pytest.mark.distributed
def test_two_processes_without_a_seed_agree_on_one(tmp_path):
    """seed=None: the main process draws the seed and every process runs with it (each drawing its
    own would give every rank different samples and data order, which DDP would hide)."""
    launch_pipeline(tmp_path, processes=2, seed="none")
    seeds = {(tmp_path / f"seed-rank{rank}.txt").read_text() for rank in (0, 1)}
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert seeds == {str(manifest["seed"])}


# --- what a rerun may continue, and what it must refuse ---


def crash_at_call(monkeypatch, stage: str, n: int):
    """Make the n-th training step of the DPO ("dpo") or SFT ("sft") task raise; returns an undo."""
    from self_rewarding_lm_pytorch.trainers import dpo, sft

    task = {"dpo": dpo.PairTask, "sft": sft.SFTTask}[stage]
    original, calls = task.step, {"n": 0}

    def crashing_step(self, model, batch):
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("injected crash")
        return original(self, model, batch)

    monkeypatch.setattr(task, "step", crashing_step)
    return lambda: monkeypatch.setattr(task, "step", original)


@pytest.mark.e2e
def test_an_unfinished_stage_with_a_changed_config_is_refused(tmp_path, monkeypatch):
    """Its candidates were sampled with the old settings; reusing them silently would be wrong."""
    undo = crash_at_call(monkeypatch, "dpo", 3)
    with pytest.raises(RuntimeError, match="injected crash"):
        run(tmp_path, small_pipeline())[0]()
    undo()
    with pytest.raises(RunMismatchError, match="02-external-reward-dpo was started with another config"):
        run(tmp_path, small_pipeline(gen_temperature=1.5))[0]()


@pytest.mark.e2e
def test_a_retry_before_any_checkpoint_starts_from_the_initial_weights(tmp_path, monkeypatch):
    """A crash inside the first stage leaves a half-trained model in memory; the retry, even with a
    freshly initialised model, must start where the interrupted attempt started."""
    straight, model_straight = run(tmp_path, small_pipeline(), name="straight")
    straight()

    undo = crash_at_call(monkeypatch, "sft", 3)
    with pytest.raises(RuntimeError, match="injected crash"):
        run(tmp_path, small_pipeline(), name="crashed")[0]()
    undo()
    retry, model_retry = run(tmp_path, small_pipeline(), name="crashed", model=make_model(seed=5))
    retry()
    assert_same_weights(weights(model_retry), weights(model_straight))


@pytest.mark.e2e
def test_foreign_folders_and_manifests_are_refused(tmp_path):
    (tmp_path / "run" / "01-sft").mkdir(parents=True)  # stage folders with no manifest
    with pytest.raises(RunMismatchError, match=r"no manifest\.json"):
        run(tmp_path, small_pipeline())[0]()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text('{"something": "else"}')
    with pytest.raises(RunMismatchError, match="not a manifest"):
        run(tmp_path, small_pipeline(), name="other")[0]()


@pytest.mark.e2e
def test_overwrite_removes_only_what_a_run_wrote(tmp_path):
    folder = tmp_path / "run"
    run(tmp_path, small_pipeline())[0]()
    (folder / "notes.txt").write_text("mine")
    (folder / "sft").mkdir()  # e.g. an SFTTrainer's default folder under ./checkpoints
    run(tmp_path, small_pipeline(dpo_beta=0.3))[0](overwrite_checkpoints=True)
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "sft").is_dir()
    assert json.loads((folder / "manifest.json").read_text())["finished"][1]["kind"] == "external-reward-dpo"


@pytest.mark.unit
def test_what_a_stage_hash_sees(tmp_path):
    """Data contents and the judge template change a stage; how often it logs does not."""
    from self_rewarding_lm_pytorch.manifest import stage_hash
    from self_rewarding_lm_pytorch.self_reward.judge import DEFAULT_REWARD_CONFIG

    other_judge = RewardConfig("Rate {{ prompt }} / {{ response }}.", "Rating: {{ reward }}")
    prompts = [f"p{i}" for i in range(40)]
    base = SelfRewardDPOConfig(prompts, 4)
    h = stage_hash(base, DEFAULT_REWARD_CONFIG)
    assert h == stage_hash(
        SelfRewardDPOConfig(list(prompts), 4, log_every=1, checkpoint_every=5), DEFAULT_REWARD_CONFIG
    )
    assert h != stage_hash(SelfRewardDPOConfig([*prompts[:-1], "changed"], 4), DEFAULT_REWARD_CONFIG)
    assert h != stage_hash(base, other_judge)
    sft = SFTConfig(SFT_DATA)
    assert stage_hash(sft, DEFAULT_REWARD_CONFIG) == stage_hash(sft, other_judge)  # SFT does not judge
    data = tmp_path / "prompts.jsonl"
    data.write_text('"a"\n')
    h_file = stage_hash(SelfRewardDPOConfig(str(data), 4), DEFAULT_REWARD_CONFIG)
    data.write_text('"b"\n')
    assert h_file != stage_hash(SelfRewardDPOConfig(str(data), 4), DEFAULT_REWARD_CONFIG)


@pytest.mark.unit
def test_a_seed_out_of_range_is_refused_at_construction():
    with pytest.raises(ValueError, match="seed"):
        SelfRewardingTrainer(make_model(), small_pipeline(), seed=2**40)
