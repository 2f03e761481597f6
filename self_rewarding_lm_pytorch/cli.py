"""The `srlm` command (also `python -m self_rewarding_lm_pytorch`): thin front ends over the library.

    srlm demo [--quick] [--out DIR] [--seed N] [--overwrite] [--workers N] [--sft-threads N]
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

from self_rewarding_lm_pytorch.cli_tools import CLIError, add_tool_parsers, load_weights

__all__ = ["CLIError", "build_parser", "main"]


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
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
            sft_threads=args.sft_threads,
        )
    except RunFolderExistsError as err:
        raise CLIError(str(err)) from None
    return 0


def _check_run(config: str, overrides: tuple[str, ...]) -> int:
    """`srlm run --check`: list the file's imports, then validate everything that needs no import.

    Nothing is imported: an `{ import = ... }` entry runs that module's code, so a file from
    someone else is read here before any of its code can run.
    """
    from self_rewarding_lm_pytorch.config_file import (
        build_stage_configs,
        find_imports,
        parse_pipeline,
        read_pipeline_toml,
    )
    from self_rewarding_lm_pytorch.config_models import build_model, build_reward_config, build_tokenizer
    from self_rewarding_lm_pytorch.config_values import DeferredImport

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
    from self_rewarding_lm_pytorch.config_file import build_stage_configs, load_pipeline_file
    from self_rewarding_lm_pytorch.config_models import build_model, build_reward_config, build_tokenizer
    from self_rewarding_lm_pytorch.pipeline import SelfRewardingTrainer
    from self_rewarding_lm_pytorch.training.accelerators import make_accelerator

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
        load_weights(model, pipeline.init_checkpoint, "init_checkpoint")
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
    p.add_argument(
        "--sft-threads",
        type=_positive_int,
        default=None,
        help="torch threads for SFT and the prompt writing, before the lines share the cores (default: 2 on 2+ cores)",
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

    add_tool_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from self_rewarding_lm_pytorch.config_values import ConfigError
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
