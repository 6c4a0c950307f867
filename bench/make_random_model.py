"""Write a randomly initialised model of the embedded architecture, at any size, with the char tokenizer.

For scale checks without downloading weights (e.g. the GSM8K pipeline on a GPU machine with no network):

    python bench/make_random_model.py OUT_DIR --hidden-size 768 --layers 12 --max-positions 1024
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from asympo.models.tiny import TinyModelConfig, build_tiny_model, count_parameters, save_pretrained
from asympo.models.tokenizer import build_char_tokenizer


def scaled_config(hidden_size: int, layers: int, max_positions: int, seed: int = 0) -> TinyModelConfig:
    """The embedded architecture at another size: heads of 64 dims (at least 4), a quarter as many KV heads,
    an MLP of 8/3 x hidden rounded to 64."""
    heads = max(4, hidden_size // 64)
    return replace(
        TinyModelConfig(),
        hidden_size=hidden_size,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=max(1, heads // 4),
        intermediate_size=int(hidden_size * 8 / 3) // 64 * 64,
        max_position_embeddings=max_positions,
        init_seed=seed,
    )


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
    cfg = scaled_config(args.hidden_size, args.layers, args.max_positions, args.seed)
    tok = build_char_tokenizer()
    model = build_tiny_model(cfg, tok)
    save_pretrained(model, tok, args.out)
    print(f"{args.out}: {count_parameters(model):,} parameters")


if __name__ == "__main__":
    main()
