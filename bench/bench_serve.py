"""The OpenAI engine against `asympo serve` vs the same torch engine in-process: the HTTP overhead per token.

Same model (the embedded shape, random weights, so every response runs to `max_new_tokens`), same prompts,
same sampling; the server runs on a free loopback port with one torch thread, the in-process engine with one
thread too. Variants are interleaved (rotated each round) and the median kept.

    python bench/bench_serve.py                 # 16 prompts x 8 samples, 32 new tokens
    python bench/bench_serve.py --quick         # 4 prompts x 4, 16 new tokens
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from benchlib import emit, interleaved, median, print_machine, quick_default

from asympo.engines.base import SamplingParams
from asympo.engines.openai import OpenAIEngine
from asympo.engines.torch import TorchEngine
from asympo.models.tiny import TinyModelConfig, build_tiny_model, save_pretrained
from asympo.models.tokenizer import build_char_tokenizer
from asympo.serve import ServerProcess


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", default=quick_default())
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.n, args.new_tokens, args.repeats = 4, 4, 16, 3
    torch.set_num_threads(1)
    info = print_machine()
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_char_tokenizer()
        torch.manual_seed(0)
        path = save_pretrained(build_tiny_model(TinyModelConfig(), tok), tok, Path(tmp) / "model")
        local = TorchEngine.from_pretrained(path)
        server = ServerProcess(str(path), threads=1, log_path=Path(tmp) / "serve.log")
        url = server.start()
        try:
            remote = OpenAIEngine(url, tokenizer=tok, weight_sync="none")  # as training uses it
            prompts = [f"{i}+{2 * i}=" for i in range(args.prompts)]
            sampling = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens, seed=0)
            counts: dict[str, int] = {}

            def run(engine, name):
                def go():
                    out = engine.generate(prompts, sampling, n=args.n)
                    counts[name] = sum(len(c.response_ids) for c in out)

                return go

            times = interleaved(
                {"in-process": run(local, "in-process"), "asympo serve": run(remote, "asympo serve")},
                args.repeats,
            )
        finally:
            server.close()
    rows = []
    base = median(times["in-process"])
    print(
        f"{args.prompts} prompts x {args.n} samples x {args.new_tokens} new tokens, median of {args.repeats}"
    )
    print(
        f"{'engine':<14} {'s/call':>8} {'tokens':>7} {'tokens/s':>9} {'vs in-process':>14} {'overhead/token':>15}"
    )
    for name, ts in times.items():
        t, n_tok = median(ts), counts[name]
        overhead_ms = (t - base) / max(1, n_tok) * 1e3
        rows.append(
            {
                "engine": name,
                "s_per_call": t,
                "tokens": n_tok,
                "tokens_per_s": n_tok / t,
                "time_vs_in_process": t / base,
                "overhead_ms_per_token": overhead_ms,
            }
        )
        print(f"{name:<14} {t:8.3f} {n_tok:7d} {n_tok / t:9.0f} {t / base:13.2f}x {overhead_ms:13.3f} ms")
    emit(
        "serve",
        {
            "machine": info,
            "quick": args.quick,
            "prompts": args.prompts,
            "n": args.n,
            "new_tokens": args.new_tokens,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
