"""Tokens/s of the torch engine's KV-cache decoding vs recomputing the whole prefix each step.

Same process, same model, same prompts, greedy, EOS ignored so both produce exactly
prompts x n x max_new_tokens tokens. Prints both rates and their ratio.

    python bench/bench_generate.py                      # the embedded model shape, random weights
    python bench/bench_generate.py --model PATH         # any HF model directory
    python bench/bench_generate.py --new-tokens 128 --prompts 16 --n 4
    python bench/bench_generate.py --device cuda --hidden-size 1024 --layers 16 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace

import torch

from asympo.engines.base import SamplingParams
from asympo.engines.torch import TorchEngine
from asympo.models.tiny import TinyModelConfig, build_tiny_model, count_parameters
from asympo.models.tokenizer import build_char_tokenizer


def rate(engine: TorchEngine, prompts: list[str], sampling: SamplingParams, n: int, repeats: int) -> float:
    """Best tokens/s over `repeats` runs (best-of filters out other processes' noise)."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        out = engine.generate(prompts, sampling, n=n)
        elapsed = time.perf_counter() - start
        tokens = sum(len(c.response_ids) for c in out)
        best = max(best, tokens / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", help="HF model directory (default: the embedded tiny model, random weights)"
    )
    parser.add_argument("--prompts", type=int, default=16, help="prompts per batch")
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per sample")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode; the best is reported")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--hidden-size", type=int, default=None, help="width of the random model (default: embedded)"
    )
    parser.add_argument(
        "--layers", type=int, default=None, help="layers of the random model (default: embedded)"
    )
    parser.add_argument("--dtype", default="float32", help="dtype of the random model (float32, bfloat16)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.model:
        cached = TorchEngine.from_pretrained(args.model, device=args.device)
        model, tok = cached.model, cached.tokenizer
    else:
        tok = build_char_tokenizer()
        shape = TinyModelConfig()
        if args.hidden_size:
            heads = max(4, args.hidden_size // 64)
            shape = replace(
                shape,
                hidden_size=args.hidden_size,
                num_heads=heads,
                num_kv_heads=max(1, heads // 4),
                intermediate_size=int(args.hidden_size * 8 / 3) // 64 * 64,
            )
        if args.layers:
            shape = replace(shape, num_layers=args.layers)
        model = build_tiny_model(shape, tok).to(args.device, getattr(torch, args.dtype))
    prompts = [f"{17 * i % 100}+{31 * i % 100}=" for i in range(args.prompts)]
    sampling = SamplingParams(temperature=0.0, max_new_tokens=args.new_tokens, ignore_eos=True)
    cached = TorchEngine(model, tok, use_kv_cache=True)
    plain = TorchEngine(model, tok, use_kv_cache=False)
    rate(cached, prompts[:2], SamplingParams(max_new_tokens=4), 1, 1)  # warm-up

    kv = rate(cached, prompts, sampling, args.n, args.repeats)
    no_kv = rate(plain, prompts, sampling, args.n, args.repeats)
    print(
        f"model: {args.model or 'embedded tiny (random init)'}, {count_parameters(model):,} parameters; "
        f"device {args.device}, torch threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}"
    )
    print(
        f"batch: {args.prompts} prompts x n={args.n}, {args.new_tokens} new tokens each, best of {args.repeats}"
    )
    print(f"KV cache : {kv:10.1f} tokens/s")
    print(f"no cache : {no_kv:10.1f} tokens/s")
    print(f"speed-up : {kv / no_kv:10.2f}x")


if __name__ == "__main__":
    main()
