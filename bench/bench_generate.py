"""Tokens/s of the torch engine's KV-cache decoding vs recomputing the whole prefix each step, and vs
Hugging Face `generate` with its dynamic and static caches, at batch 1 and 64 (and the legacy shape
`--prompts x --n`).

Same process, same model, same prompts, greedy, EOS ignored so every variant produces exactly
batch x max_new_tokens tokens. Variants are interleaved (A B C D, rotated each round) and the median
rate is kept; ratios are against the torch engine with its KV cache.

    python bench/bench_generate.py                      # the embedded model shape, random weights
    python bench/bench_generate.py --model PATH         # any HF model directory
    python bench/bench_generate.py --batches 1,64 --new-tokens 64   # the default
    python bench/bench_generate.py --quick                          # batch 1 and 16, 32 new tokens
    python bench/bench_generate.py --device cuda --hidden-size 1024 --layers 16 --dtype bfloat16
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from benchlib import emit, interleaved, median, print_machine, quick_default, resolve_device

from asympo.engines.base import SamplingParams
from asympo.engines.torch import TorchEngine
from asympo.models.tiny import TinyModelConfig, build_tiny_model, count_parameters
from asympo.models.tokenizer import build_char_tokenizer


def engine_runner(engine: TorchEngine, prompts: list[str], sampling: SamplingParams):
    return lambda: engine.generate(prompts, sampling, n=1)


def hf_runner(model, tok, prompts: list[str], new_tokens: int, cache: str, device: str):
    """HF `generate`, greedy, left-padded batch, exactly `new_tokens` tokens per sequence."""
    ids = [list(tok(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    width = max(map(len, ids))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)

    def go():
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,  # EOS suppressed: the same token count as the engine
                do_sample=False,
                cache_implementation=cache,
                pad_token_id=pad,
            )
        if out.shape[1] - width != new_tokens:
            raise RuntimeError(f"HF generate ({cache}) made {out.shape[1] - width} tokens, not {new_tokens}")

    return go


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", help="HF model directory (default: the embedded tiny model, random weights)"
    )
    parser.add_argument("--quick", action="store_true", default=quick_default(), help="smoke-test sizes")
    parser.add_argument(
        "--batches", default=None, help="comma-separated batch sizes (default 1,64; quick 1,16)"
    )
    parser.add_argument(
        "--prompts", type=int, default=None, help="legacy: with --n, one batch of prompts x n"
    )
    parser.add_argument("--n", type=int, default=1, help="legacy: samples per prompt (see --prompts)")
    parser.add_argument(
        "--new-tokens", type=int, default=None, help="tokens per sequence (default 64; quick 32)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="interleaved rounds (median kept; default 5, quick 3)"
    )
    parser.add_argument("--device", default="auto", help="auto (cuda when visible) | cpu | cuda")
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
    args.device = resolve_device(args.device)
    args.new_tokens = args.new_tokens or (32 if args.quick else 64)
    args.repeats = args.repeats or (3 if args.quick else 5)

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
    model.eval()
    info = print_machine()
    print(
        f"model: {args.model or 'embedded tiny (random init)'}, {count_parameters(model):,} parameters; "
        f"device {args.device}, {args.dtype}; {args.new_tokens} new tokens per sequence, greedy; "
        f"median of {args.repeats} interleaved rounds"
    )
    sampling = SamplingParams(temperature=0.0, max_new_tokens=args.new_tokens, ignore_eos=True)
    cached = TorchEngine(model, tok, use_kv_cache=True)
    plain = TorchEngine(model, tok, use_kv_cache=False)
    cached.generate(["1+1="], SamplingParams(max_new_tokens=4), n=1)  # warm-up
    if args.batches:
        batches = [int(b) for b in args.batches.split(",")]
    elif args.prompts:  # the older interface (bench/device_check.sh): n samples of a prompt cost as n prompts
        batches = [args.prompts * args.n]
    else:
        batches = [1, 16 if args.quick else 64]
    print(
        f"{'batch':>5} {'engine KV':>10} {'engine no-KV':>12} {'HF dynamic':>11} {'HF static':>10}"
        f" {'KV/no-KV':>9} {'KV/HF dyn':>9} {'KV/HF static':>12}   (tokens/s)"
    )
    rows = []
    for batch in batches:
        prompts = [f"{17 * i % 100}+{31 * i % 100}=" for i in range(batch)]
        variants = {
            "engine_kv": engine_runner(cached, prompts, sampling),
            "engine_no_kv": engine_runner(plain, prompts, sampling),
            "hf_dynamic": hf_runner(model, tok, prompts, args.new_tokens, "dynamic", args.device),
            "hf_static": hf_runner(model, tok, prompts, args.new_tokens, "static", args.device),
        }
        skipped = {}
        for name in ("hf_dynamic", "hf_static"):
            try:  # a transformers version without this cache for this model: say so, keep the others
                variants[name]()
            except Exception as e:
                skipped[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
                del variants[name]
        times = interleaved(variants, args.repeats, args.device)
        tokens = batch * args.new_tokens
        rate = {k: tokens / median(v) for k, v in times.items()}
        row = {"batch": batch, **{f"tok_s/{k}": v for k, v in rate.items()}, "skipped": skipped}
        for k in ("engine_no_kv", "hf_dynamic", "hf_static"):
            if k in rate:
                row[f"kv/{k}"] = rate["engine_kv"] / rate[k]

        def cell(key: str, fmt: str, row: dict = row) -> str:
            return format(row[key], fmt) if key in row else "-"

        print(
            f"{batch:>5} {cell('tok_s/engine_kv', '.0f'):>10} {cell('tok_s/engine_no_kv', '.0f'):>12}"
            f" {cell('tok_s/hf_dynamic', '.0f'):>11} {cell('tok_s/hf_static', '.0f'):>10}"
            f" {cell('kv/engine_no_kv', '.2f'):>8}x {cell('kv/hf_dynamic', '.2f'):>8}x"
            f" {cell('kv/hf_static', '.2f'):>11}x"
        )
        for k, why in skipped.items():
            print(f"      {k} skipped: {why}")
        rows.append(row)
    emit(
        "generate",
        {
            "machine": info,
            "quick": args.quick,
            "device": args.device,
            "new_tokens": args.new_tokens,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
