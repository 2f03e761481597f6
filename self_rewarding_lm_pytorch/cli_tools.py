"""The `srlm` tool commands: `generate` (best-of-N synthetic data), `reward-model train` and `judge`, and
the model loading they share with `srlm run` (`[model]` tables, checkpoints, Hugging Face folders).

`srlm demo` and `srlm run` and the entry point live in `cli.py`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CLIError", "add_tool_parsers", "load_model_from_config", "load_weights"]


class CLIError(Exception):
    """A problem with the command line or its inputs, reported without a traceback."""


def load_weights(model, path, what: str):
    from self_rewarding_lm_pytorch.training.checkpoint import load_model

    try:
        load_model(model, path)
    except (RuntimeError, KeyError, ValueError) as err:  # missing/unexpected keys, shape mismatches
        raise CLIError(f"{what} {path} does not fit the [model] kwargs: {str(err).splitlines()[0][:300]}") from None


def load_model_from_config(model_config: str, checkpoint: str | None):
    """(model, tokenizer, [judge] table or None) from a TOML file's [model]/tokenizer and a checkpoint,
    or from its `[model] hf = "folder"` (a Hugging Face model with its tokenizer)."""
    from self_rewarding_lm_pytorch.config_file import load_model_section
    from self_rewarding_lm_pytorch.config_models import build_model, build_tokenizer

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
        load_weights(model, checkpoint, "--checkpoint")
    return model, tokenizer, section["judge"]


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
    from self_rewarding_lm_pytorch.config_values import import_object

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
    model, tokenizer, _ = load_model_from_config(args.model_config, args.checkpoint)
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
    from self_rewarding_lm_pytorch.config_file import load_model_section
    from self_rewarding_lm_pytorch.config_models import build_reward_config
    from self_rewarding_lm_pytorch.self_reward.reward_config import DEFAULT_REWARD_CONFIG

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

    model, tokenizer, table = load_model_from_config(args.model_config, args.checkpoint)
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


def add_tool_parsers(sub):
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
