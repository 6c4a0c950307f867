"""Write a randomly initialised model of the embedded architecture, at any size, with the char tokenizer.

For scale checks without downloading weights (e.g. the GSM8K pipeline on a GPU machine with no network):

    python bench/make_random_model.py OUT_DIR --hidden-size 768 --layers 12 --max-positions 1024
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from asympo.models.tiny import TinyModelConfig, build_tiny_model, count_parameters, save_pretrained
from asympo.models.tokenizer import build_char_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", help="directory to write (HF format)")
    parser.add_argument("--hidden-size", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument(
        "--max-positions", type=int, default=1024, help="longest prompt + response, in characters"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    heads = max(4, args.hidden_size // 64)
    cfg = replace(
        TinyModelConfig(),
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        num_heads=heads,
        num_kv_heads=max(1, heads // 4),
        intermediate_size=int(args.hidden_size * 8 / 3) // 64 * 64,
        max_position_embeddings=args.max_positions,
        init_seed=args.seed,
    )
    tok = build_char_tokenizer()
    model = build_tiny_model(cfg, tok)
    save_pretrained(model, tok, args.out)
    print(f"{args.out}: {count_parameters(model):,} parameters")


if __name__ == "__main__":
    main()
