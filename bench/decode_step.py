"""Where a decode step's time goes, and what torch.compile does to it (issue 13's two sampling misses).

    python bench/decode_step.py                 # cost model of the fast decoder (about a minute)
    python bench/decode_step.py --compile       # plus the whole step under torch.compile, side by side
    python bench/decode_step.py --compile --write bench/results/decode_step.md

Model and prompts as in bench/sampling.py (batch 32, prompt 32, one thread). Times are the CPU time of
this single-threaded process (`time.process_time`): a loaded machine inflates it less than wall time,
since time spent waiting for a core is not counted (memory contention still is).

1. Cost model. Prefill P, then per step a + c x (cached positions), fitted over a 256-token
   generation. With it, T(N) = P + sum over the N - 1 steps, and tokens/s at 256 >= tokens/s at 128
   exactly when 2 T(128) >= T(256), i.e. when c <= (P - a) / (S(256) - 2 S(128)), S(N) being the
   cached positions summed over N's steps: the growth of the per-step cache read must stay below
   what the one prefill costs.
2. --compile. The same step (embeddings, norms, fused qkv, SDPA over the cache view, feedforward,
   logits) as one function under `torch.compile(dynamic=True)`, cache writes through `narrow` so the
   slot and the cache length stay symbolic (one compile for every length and batch), against the
   eager fast decoder, interleaved; reports the compile time and the largest logit difference.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from report import write_report
from sampling import PROMPT_LEN, VOCAB, build_model

from self_rewarding_lm_pytorch.core.kv_decode import FastDecoder

BATCH = 32
BYTES_PER_POSITION = 4 * 2 * 8 * 64 * 4 * BATCH  # layers x (K + V) x heads x head dim x fp32 x rows


def cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def cost_model(model, prompts: list[torch.Tensor], repeats: int) -> dict[str, float]:
    """Prefill P and the fit step = a + c * cached positions, in CPU seconds (medians over repeats)."""
    new = 256
    prefill, steps = [], {}
    with torch.inference_mode():
        for _ in range(repeats):
            decoder = FastDecoder(model, prompts, [1] * BATCH, new)
            start = time.process_time()
            token = decoder.prefill().argmax(-1)
            prefill.append(time.process_time() - start)
            for t in range(new - 1):
                start = time.process_time()
                decoder.step(token)
                steps.setdefault(PROMPT_LEN + t + 1, []).append(time.process_time() - start)
    xs, ys = list(steps), [statistics.median(v) for v in steps.values()]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    c = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return {"P": statistics.median(prefill), "a": my - c * mx, "c": c}


def read_bandwidth(repeats: int = 5) -> float:
    """Bytes per CPU second of a plain read of a 256 MiB buffer: what one core streams from memory."""
    buffer = torch.ones(64 * 2**20)
    return buffer.numel() * 4 / statistics.median(cpu_seconds(buffer.sum) for _ in range(repeats))


def positions(new: int) -> int:
    """Cached positions summed over the new - 1 steps of a generation (the last token is not fed back)."""
    return sum(PROMPT_LEN + t + 1 for t in range(new - 1))


def cost_lines(fit: dict[str, float], bandwidth: float) -> list[str]:
    p, a, c = fit["P"], fit["a"], fit["c"]
    total = {n: p + (n - 1) * a + c * positions(n) for n in (128, 256)}
    growth = 2 * total[128] / total[256]
    c_max = (p - a) / (positions(256) - 2 * positions(128))
    return [
        f"- prefill P = {p * 1e3:.0f} ms; step = {a * 1e3:.2f} ms + {c * 1e6:.1f} us x cached positions",
        f"- the cache read that c pays for: {BYTES_PER_POSITION / 2**20:.2f} MiB per cached position and step,"
        f" so c stands for {BYTES_PER_POSITION / c / 1e9:.1f} GB/s",
        f"- predicted tokens/s at 256 / at 128 new tokens = {growth:.2f}",
        f"- >= 1.0 needs c <= {c_max * 1e6:.1f} us, a cache read at {BYTES_PER_POSITION / c_max / 1e9:.0f} GB/s;"
        f" one core reads {bandwidth / 1e9:.1f} GB/s (a plain sum over 256 MiB)",
    ]


def compiled_step_fn(model, qkv, tokens, pos, caches, slot: int):
    """One decode step of the benchmark model (pre-norm, absolute positions, no rotary, no padding)."""
    x = model.token_emb(tokens[:, None]) + model.pos_emb(tokens[:, None], pos=pos)
    layers, index = model.attn_layers, 0
    for kind, ((pre_norm, _, _), block, residual_fn) in zip(layers.layer_types, layers.layers, strict=True):
        residual, x = x, pre_norm(x)
        if kind == "a":
            weight, _, splits = qkv[index]
            q, k, v = (
                rearrange(t, "b n (h d) -> b h n d", h=block.heads) for t in F.linear(x, weight).split(splits, -1)
            )
            k_cache, v_cache = caches[index]
            k_cache.narrow(2, slot, 1).copy_(k)
            v_cache.narrow(2, slot, 1).copy_(v)
            keys, values = k_cache.narrow(2, 0, slot + 1), v_cache.narrow(2, 0, slot + 1)
            out = F.scaled_dot_product_attention(q, keys, values, scale=block.attend.scale)
            out = block.to_out(rearrange(out, "b h n d -> b n (h d)"))
            index += 1
        else:
            out = block(x)
        x = residual_fn(out, residual)
    return model.to_logits(layers.final_norm(x))[:, 0]


class CompiledStepDecoder(FastDecoder):
    """The fast decoder's prefill, then `compiled_step_fn`. One spare cache slot keeps the cache view
    from ever being the whole (contiguous) buffer, which would otherwise cost one more compile."""

    step_fn = staticmethod(torch.compile(compiled_step_fn, dynamic=True))

    def prefill(self) -> torch.Tensor:
        logits = super().prefill()
        self.caches = [(torch.cat((k, k[:, :, :1]), 2), torch.cat((v, v[:, :, :1]), 2)) for k, v in self.caches]
        return logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        pos = (self.row_length + self.generated)[:, None]
        logits = self.step_fn(self.model, self.qkv, tokens, pos, self.caches, self.prompt_len + self.generated)
        self.generated += 1
        return logits


def decode(decoder_type, model, prompts, new: int, feed: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        decoder = decoder_type(model, prompts, [1] * BATCH, new)
        logits = [decoder.prefill()]
        logits += [decoder.step(feed[t].clone()) for t in range(new - 1)]
    return torch.stack(logits)


def compile_lines(model, prompts, repeats: int) -> list[str]:
    feed = torch.randint(VOCAB, (256, BATCH), generator=torch.Generator().manual_seed(3))
    start = time.perf_counter()
    got = decode(CompiledStepDecoder, model, prompts, 16, feed)
    compile_seconds = time.perf_counter() - start
    gap = (got - decode(FastDecoder, model, prompts, 16, feed)).abs().max().item()
    times = {}
    for _ in range(repeats):
        for new in (128, 256):
            for name, kind in (("eager", FastDecoder), ("compiled", CompiledStepDecoder)):
                spent = cpu_seconds(lambda kind=kind, new=new: decode(kind, model, prompts, new, feed))
                times.setdefault((name, new), []).append(spent)
    med = {key: statistics.median(v) for key, v in times.items()}
    lines = [
        f"- first call (compiling) {compile_seconds:.0f} s wall; largest logit difference to eager {gap:.1e}",
    ]
    for new in (128, 256):
        lines.append(
            f"- {new} new tokens: eager {med[('eager', new)]:.2f} s, compiled {med[('compiled', new)]:.2f} s"
            f" CPU: compiled / eager = {med[('compiled', new)] / med[('eager', new)]:.3f}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compile", action="store_true", help="also measure the torch.compile'd step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", type=Path, help="also write the markdown report here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build_model()
    prompts = list(torch.randint(VOCAB, (BATCH, PROMPT_LEN), generator=torch.Generator().manual_seed(2)))
    lines = [
        "Cost model of the eager fast decoder (CPU time):",
        "",
        *cost_lines(cost_model(model, prompts, 3), read_bandwidth()),
    ]
    print("\n".join(lines), flush=True)
    if args.compile:
        compiled = ["", "Whole step under torch.compile vs eager (CPU time, interleaved):", ""]
        compiled += compile_lines(model, prompts, args.repeats)
        print("\n".join(compiled[1:]))
        lines += compiled
    if args.write:
        setup = (
            f"Model as bench/sampling.py (dim 256, depth 4, heads 8, vocab 256), batch {BATCH}, prompt {PROMPT_LEN},"
            f" CPU, 1 thread, torch {torch.__version__}."
        )
        write_report(args.write, "Decode step: cost model and torch.compile", setup, "\n".join(lines))


if __name__ == "__main__":
    main()
