"""The `srlm` command (also `python -m self_rewarding_lm_pytorch`): thin front ends over the library.

    srlm demo [--quick] [--out DIR] [--seed N] [--overwrite] [--workers N]
    srlm run pipeline.toml [--resume | --overwrite] [--set KEY=VALUE ...] [--check]
    srlm generate --model-config M.toml --checkpoint W.safetensors --prompts P.jsonl --out O.jsonl ...
    srlm reward-model train --data ranked.jsonl --out DIR ...
    srlm judge --model-config M.toml --checkpoint W.safetensors --data pairs.jsonl --out S.jsonl ...

Works under `accelerate launch -m self_rewarding_lm_pytorch.cli run pipeline.toml` too.
Errors in the inputs exit with status 2 and a one-line message, before any training.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

__all__ = ["build_parser", "main"]


class CLIError(Exception):
    """A problem with the command line or its inputs, reported without a traceback."""


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _cmd_demo(args) -> int:
    from self_rewarding_lm_pytorch.demo.run import PRESETS, RunFolderExistsError, run_demo

    preset = args.preset or ("quick" if args.quick else "default")
    command = " ".join(["srlm", *args.argv])
    try:
        run_demo(
            args.out,
            settings=PRESETS[preset],
            seed=args.seed,
            overwrite=args.overwrite,
            command=command,
            line_workers=args.workers,
        )
    except RunFolderExistsError as err:
        raise CLIError(str(err)) from None
    return 0


def _load_weights(model, path, what: str):
    from self_rewarding_lm_pytorch.training.checkpoint import load_model

    try:
        load_model(model, path)
    except (RuntimeError, KeyError, ValueError) as err:  # missing/unexpected keys, shape mismatches
        raise CLIError(f"{what} {path} does not fit the [model] kwargs: {str(err).splitlines()[0][:300]}") from None


def _load_model(model_config: str, checkpoint: str | None):
    """(model, tokenizer, [judge] table or None) from a TOML file's [model]/tokenizer and a checkpoint,
    or from its `[model] hf = "folder"` (a Hugging Face model with its tokenizer)."""
    from self_rewarding_lm_pytorch.config_file import build_model, build_tokenizer, load_model_section

    section = load_model_section(model_config)
    hf = section["hf"]
    if hf.model is not None:
        from self_rewarding_lm_pytorch.config_hf import build_hf_model

        if checkpoint is not None:
            raise CLIError(
                f"--checkpoint is for x-transformers models; {model_config}'s [model] hf loads its own weights"
            )
        if hf.lora is not None:
            raise CLIError(f"{model_config}: [lora] adds an adapter to train, and this command trains nothing")
        model, tokenizer, _ = build_hf_model(hf)
        return model, tokenizer, section["judge"]
    tokenizer = build_tokenizer(section["tokenizer"])
    model = build_model(section["model"], tokenizer, where=str(model_config))
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise CLIError(f"--checkpoint: no such file {checkpoint}")
        _load_weights(model, checkpoint, "--checkpoint")
    return model, tokenizer, section["judge"]


def _check_run(config: str, overrides: tuple[str, ...]) -> int:
    """`srlm run --check`: list the file's imports, then validate everything that needs no import.

    Nothing is imported: an `{ import = ... }` entry runs that module's code, so a file from
    someone else is read here before any of its code can run.
    """
    from self_rewarding_lm_pytorch.config_file import (
        DeferredImport,
        build_model,
        build_reward_config,
        build_stage_configs,
        build_tokenizer,
        find_imports,
        parse_pipeline,
        read_pipeline_toml,
    )

    raw = read_pipeline_toml(config, overrides=overrides)
    imports = find_imports(raw)
    if imports:
        print(f"{config}: running it imports {len(imports)} object(s), each running its module's code:")
        for where, spec in imports:
            print(f"  {where}: {spec}")
    else:
        print(f"{config}: imports nothing")
    pipeline = parse_pipeline(raw, path=Path(config), imports=False)
    if pipeline.tokenizer == "byte":
        build_model(pipeline.model, build_tokenizer("byte"), where=config)
    # Stages holding an import are built when the run imports it; the others are built now.
    ready = [(kind, kw) for kind, kw in pipeline.stages if not any(isinstance(v, DeferredImport) for v in kw.values())]
    build_stage_configs(dataclasses.replace(pipeline, stages=ready))
    build_reward_config(pipeline.judge, where=config)
    note = " (the run folder holds a run: running needs --resume or --overwrite)"
    note = note if (pipeline.run_dir / "manifest.json").exists() else ""
    print(f"{config}: OK ({len(pipeline.stages)} stages: {', '.join(k for k, _ in pipeline.stages)}){note}")
    return 0


def _cmd_run(args) -> int:
    from self_rewarding_lm_pytorch.config_file import (
        build_model,
        build_reward_config,
        build_stage_configs,
        build_tokenizer,
        load_pipeline_file,
    )
    from self_rewarding_lm_pytorch.pipeline import SelfRewardingTrainer
    from self_rewarding_lm_pytorch.training.loop import make_accelerator

    if args.resume and args.overwrite:
        raise CLIError("--resume and --overwrite contradict each other: pick one")
    if args.check:
        return _check_run(args.config, tuple(args.set or ()))
    pipeline = load_pipeline_file(args.config, overrides=tuple(args.set or ()))
    peft_config = None
    if pipeline.hf is not None and pipeline.hf.model is not None:
        from self_rewarding_lm_pytorch.config_hf import build_hf_model

        model, tokenizer, peft_config = build_hf_model(pipeline.hf)
    else:
        tokenizer = build_tokenizer(pipeline.tokenizer)
        model = build_model(pipeline.model, tokenizer, where=args.config)
    configs = build_stage_configs(pipeline)
    reward_config = build_reward_config(pipeline.judge, where=args.config)
    if pipeline.init_checkpoint is not None:
        _load_weights(model, pipeline.init_checkpoint, "init_checkpoint")
    try:
        accelerator = make_accelerator(pipeline.accelerate)
    except (TypeError, ValueError) as err:
        raise CLIError(f"{args.config}: [accelerate]: {err}") from None
    # Every process reads the folder's state before any process writes to it (the barrier below).
    existing = (pipeline.run_dir / "manifest.json").exists()
    accelerator.wait_for_everyone()
    if existing and not (args.resume or args.overwrite):
        raise CLIError(
            f"{pipeline.run_dir} already holds a run: pass --resume to continue it or --overwrite to replace it"
        )
    trainer = SelfRewardingTrainer(
        model,
        configs,
        tokenizer=tokenizer,
        self_reward_prompt_config=reward_config,
        accelerate_kwargs=pipeline.accelerate,
        checkpoints_folder=pipeline.run_dir,
        seed=pipeline.seed,
        peft_config=peft_config,
        save_merged=pipeline.hf is not None and pipeline.hf.lora is not None and pipeline.hf.lora.save_merged,
    )
    summaries = trainer(overwrite_checkpoints=args.overwrite)
    accelerator.print(f"done: {len(summaries)} stages in {pipeline.run_dir} (manifest.json lists them)")
    return 0


def _read_prompts(path: str) -> list[str]:
    from self_rewarding_lm_pytorch.core.files import read_jsonl

    if not Path(path).is_file():
        raise CLIError(f"--prompts: no such file {path}")
    prompts = []
    for i, rec in enumerate(read_jsonl(path)):
        prompt = rec.get("prompt") if isinstance(rec, dict) else rec
        if not isinstance(prompt, str):
            raise CLIError(f"{path}: line {i + 1} has no string 'prompt'")
        prompts.append(prompt)
    return prompts


def _scorer(args, model, tokenizer):
    from self_rewarding_lm_pytorch.config_file import import_object

    if args.scorer == "perplexity":
        from self_rewarding_lm_pytorch.generation.synthetic import PerplexityScorer

        return PerplexityScorer(model, tokenizer)
    return import_object(args.scorer, where="--scorer")


def _load_reward_model(path: Path):
    """A RewardModel saved by `srlm reward-model train`: a safetensors file (x-transformers, byte-level) or a
    folder (a Hugging Face model or LoRA adapter with its tokenizer). It scores through its own tokenizer."""
    from self_rewarding_lm_pytorch.trainers.reward_model import RewardModel

    if not path.exists():
        raise CLIError(f"--reward-model: no such file or folder {path}")
    try:
        return RewardModel.from_pretrained(path)
    except (OSError, ValueError) as err:  # not a reward model, or an adapter whose base model is gone
        raise CLIError(f"--reward-model {path}: {str(err).splitlines()[0][:300]}") from None


def _cmd_generate(args) -> int:
    from self_rewarding_lm_pytorch.generation.best_of_n import GenerationConfig
    from self_rewarding_lm_pytorch.generation.synthetic import generate_synthetic_dataset

    # the reward model first: a bad --reward-model fails before the policy is loaded
    reward_model = None if args.reward_model is None else _load_reward_model(Path(args.reward_model))
    model, tokenizer, _ = _load_model(args.model_config, args.checkpoint)
    prompts = _read_prompts(args.prompts)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    stats = generate_synthetic_dataset(
        model,
        prompts,
        reward_model if reward_model is not None else _scorer(args, model, tokenizer),
        out=args.out,
        tokenizer=tokenizer,
        n=args.n,
        keep=args.keep,
        generation_config=config,
        seed=args.seed,
    )
    print(f"{args.out}: {stats}")
    return 0


_RM_SIZES = {"max_seq_len": 128, "dim": 64, "depth": 2, "heads": 4}  # the x-transformers reward model's defaults
RM_FILE, RM_FOLDER = "reward_model.safetensors", "reward_model"  # x-transformers file, Hugging Face folder


def _reward_model_to_train(args):
    """(RewardModel, LoRA config or None, accelerate kwargs): an x-transformers one from the size flags, or
    one around the Hugging Face model of `--model-config` (its `[model] hf`, `[tokenizer] hf`, `[lora]`
    and `mixed_precision`, validated as `srlm run` validates them)."""
    from self_rewarding_lm_pytorch.core.tokenizer import ByteTokenizer
    from self_rewarding_lm_pytorch.trainers.reward_model import RewardModel

    accelerate = {"cpu": True} if args.cpu else {}
    if args.model_config is None:
        size = {k: default if getattr(args, k) is None else getattr(args, k) for k, default in _RM_SIZES.items()}
        tokenizer = ByteTokenizer()
        rm = RewardModel(
            tokenizer.vocab_size,
            size["max_seq_len"],
            size["dim"],
            size["depth"],
            size["heads"],
            encoder=args.encoder,
            tokenizer=tokenizer,
        )
        return rm, None, accelerate
    from self_rewarding_lm_pytorch.config_file import load_model_section
    from self_rewarding_lm_pytorch.config_hf import build_hf_model

    given = [f"--{k.replace('_', '-')}" for k in _RM_SIZES if getattr(args, k) is not None]
    if given or args.encoder:
        flags = ", ".join(given + ["--encoder"] * args.encoder)
        raise CLIError(f"{flags}: sizes of an x-transformers reward model; --model-config gives the model instead")
    hf = load_model_section(args.model_config)["hf"]
    if hf.model is None:
        raise CLIError(
            f'--model-config {args.model_config}: needs [model] hf = "folder" (a Hugging Face causal LM); '
            "an x-transformers reward model is built from --dim, --depth, --heads and --max-seq-len"
        )
    model, tokenizer, peft_config = build_hf_model(hf)
    if hf.mixed_precision is not None:
        accelerate["mixed_precision"] = hf.mixed_precision
    return RewardModel(net=model, tokenizer=tokenizer), peft_config, accelerate


def _cmd_reward_model_train(args) -> int:
    from self_rewarding_lm_pytorch.trainers.reward_model import RewardModelTrainer

    out = Path(args.out)
    for name in (RM_FILE, RM_FOLDER):
        if (out / name).exists() and not args.overwrite:
            raise CLIError(f"{out} already holds {name}: pass --overwrite or choose another --out")
    rm, peft_config, accelerate = _reward_model_to_train(args)
    trainer = RewardModelTrainer(
        rm,
        None,  # the model's own tokenizer (bytes, or the Hugging Face model's)
        args.data,
        args.valid_data,
        max_ranks_per_batch=args.max_ranks_per_batch,
        batch_size=args.batch_size,
        num_train_steps=args.num_train_steps,
        learning_rate=args.learning_rate,
        valid_every=args.valid_every,
        seed=args.seed,
        accelerate_kwargs=accelerate or None,
        checkpoint_folder=out / "train",
        peft_config=peft_config,
    )
    trainer()
    path = rm.save(out / (RM_FOLDER if rm.is_hf else RM_FILE))
    print(f"reward model saved to {path} (load with RewardModel.from_pretrained, or srlm generate --reward-model)")
    return 0


def _judge_config(spec: str, table: dict | None):
    from self_rewarding_lm_pytorch.config_file import build_reward_config, load_model_section
    from self_rewarding_lm_pytorch.self_reward.judge import DEFAULT_REWARD_CONFIG

    if spec == "model-config":
        return build_reward_config(table) if table is not None else DEFAULT_REWARD_CONFIG
    if spec == "default":
        return DEFAULT_REWARD_CONFIG
    if spec == "demo":
        from self_rewarding_lm_pytorch.demo.task import demo_reward_config

        return demo_reward_config()
    section = load_model_section(spec, require_model=False)
    if section["judge"] is None:
        raise CLIError(f"--judge {spec}: the file has no [judge] table")
    return build_reward_config(section["judge"])


def _cmd_judge(args) -> int:
    import torch

    from self_rewarding_lm_pytorch.core.files import read_jsonl, write_jsonl
    from self_rewarding_lm_pytorch.self_reward.judge import judge_scores

    model, tokenizer, table = _load_model(args.model_config, args.checkpoint)
    reward_config = _judge_config(args.judge, table)
    if not Path(args.data).is_file():
        raise CLIError(f"--data: no such file {args.data}")
    records = read_jsonl(args.data)
    for i, rec in enumerate(records):
        if not (isinstance(rec, dict) and isinstance(rec.get("prompt"), str) and isinstance(rec.get("response"), str)):
            raise CLIError(f"{args.data}: line {i + 1} needs string 'prompt' and 'response'")
    result = judge_scores(
        model,
        tokenizer,
        reward_config,
        [r["prompt"] for r in records],
        [r["response"] for r in records],
        num_judgments=args.num_judgments,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        generator=torch.Generator().manual_seed(args.seed),
    )
    out = [
        {**rec, "score": None if s != s else float(s), "judgments": texts, "parsed": parsed}
        for rec, s, texts, parsed in zip(records, result.scores.tolist(), result.texts, result.parsed, strict=True)
    ]
    write_jsonl(args.out, out)
    print(
        f"{args.out}: {len(out)} pairs judged, {result.num_failed} of {result.num_judgments} judgments unparsed, "
        f"{result.num_skipped} too long to judge"
    )
    return 0


def _add_model_args(p):
    p.add_argument(
        "--model-config",
        required=True,
        metavar="TOML",
        help="a TOML file with [model] (TransformerWrapper/Decoder kwargs) and tokenizer; a pipeline file works",
    )
    p.add_argument("--checkpoint", metavar="SAFETENSORS", help="model weights (e.g. a stage's model.safetensors)")
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="srlm", description="Self-rewarding language models: pipelines, demo and tools."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the paper's recipe on a tiny model and a verifiable task, and report")
    p.add_argument("--quick", action="store_true", help="a smaller run (about a minute on an idle 2-core CPU)")
    p.add_argument("--out", default="srlm-demo", help="the run folder (default: ./srlm-demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument(
        "--workers",
        type=_non_negative_int,
        default=None,
        help="processes for the lines run beside the self-reward line (default: 2 on 2+ cores; 0: one after another)",
    )
    p.add_argument("--preset", choices=["default", "quick", "tiny"], help=argparse.SUPPRESS)  # tests use "tiny"
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("run", help="run a pipeline from a TOML file")
    p.add_argument("config", help="the pipeline TOML file")
    p.add_argument("--resume", action="store_true", help="continue the run in the run folder")
    p.add_argument("--overwrite", action="store_true", help="replace the run in the run folder")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a value, e.g. stages.0.num_train_steps=10 or run_dir=runs/b (repeatable)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="list the file's imports, then validate it without importing or running anything",
    )
    p.set_defaults(func=_cmd_run)

    _add_tool_parsers(sub)
    return parser


def _add_tool_parsers(sub):
    p = sub.add_parser("generate", help="best-of-N synthetic data: sample N, score, keep the best")
    _add_model_args(p)
    p.add_argument("--prompts", required=True, help="JSONL with a 'prompt' per line")
    p.add_argument("--out", required=True, help="output JSONL (resumed if it exists)")
    p.add_argument("--n", type=int, default=4, help="candidates per prompt (default 4)")
    p.add_argument("--keep", type=int, default=1, help="best candidates kept per prompt (default 1)")
    p.add_argument(
        "--scorer",
        default="perplexity",
        help="'perplexity' (the model's own, lower is better) "
        "or package.module:function (prompts, responses) -> scores",
    )
    p.add_argument("--reward-model", help="a RewardModel saved by `srlm reward-model train` (overrides --scorer)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=None)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("reward-model", help="train a ranked-list (multinomial) reward model")
    rm_sub = p.add_subparsers(dest="rm_command", required=True, metavar="ACTION")
    t = rm_sub.add_parser("train", help="train on {'prompt', 'ranked_outputs': [best, ..., worst]} records")
    t.add_argument("--data", required=True, help=".jsonl or .json ranked records")
    t.add_argument("--valid-data")
    t.add_argument("--out", required=True, help="folder for reward_model.safetensors and train/ checkpoints")
    t.add_argument("--overwrite", action="store_true")
    t.add_argument(
        "--model-config",
        metavar="TOML",
        help='a Hugging Face causal LM to put the reward head on: a TOML file with [model] hf = "folder" '
        "(optional [tokenizer] hf, [lora], mixed_precision, as in srlm run); saved as the folder "
        f"{RM_FOLDER}/. Default: an x-transformers decoder built from the sizes below, saved as {RM_FILE}",
    )
    for name, default in _RM_SIZES.items():
        flag = name.replace("_", "-")
        t.add_argument(f"--{flag}", type=int, default=None, help=f"x-transformers model (default {default})")
    for name, default in (
        ("max-ranks-per-batch", 4),
        ("batch-size", 8),
        ("num-train-steps", 100),
        ("seed", 0),
    ):
        t.add_argument(f"--{name}", type=int, default=default, help=f"default {default}")
    t.add_argument("--valid-every", type=int, default=None)
    t.add_argument("--learning-rate", type=float, default=1e-4)
    t.add_argument(
        "--encoder", action="store_true", help="an encoder, mean-pooled (default: a decoder read at its last token)"
    )
    t.add_argument("--cpu", action="store_true", help="force CPU")
    t.set_defaults(func=_cmd_reward_model_train)

    p = sub.add_parser("judge", help="score a JSONL of prompt/response pairs with a model as judge")
    _add_model_args(p)
    p.add_argument("--data", required=True, help="JSONL with 'prompt' and 'response' per line")
    p.add_argument("--out", required=True, help="output JSONL: each record plus score, judgments, parsed")
    p.add_argument(
        "--judge",
        default="model-config",
        help="'model-config' (its [judge] table, else the default), 'default', 'demo', or a TOML file with [judge]",
    )
    p.add_argument("--num-judgments", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.7)
    p.set_defaults(func=_cmd_judge)


def main(argv: list[str] | None = None) -> int:
    from self_rewarding_lm_pytorch.config_file import ConfigError
    from self_rewarding_lm_pytorch.core.run_lock import RunLockedError
    from self_rewarding_lm_pytorch.training.faults import NonFiniteLossError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (CLIError, ConfigError) as err:
        print(f"srlm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (RunLockedError, NonFiniteLossError) as err:  # the run's state, not its inputs: status 1
        print(f"srlm {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
