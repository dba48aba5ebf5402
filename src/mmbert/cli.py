"""`mmbert <command>`: each command is a thin call into one typed function.

Bad input raises :class:`mmbert.errors.MmbertError`; we print one ``error: ...`` line and exit 2.
Heavy modules are imported inside the handlers so that ``mmbert --help`` stays fast.

Each area owns its section below (marked ``# === <area> ===``); keep handlers thin.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from mmbert.errors import MmbertError

Handler = Callable[[argparse.Namespace], int | None]


# === foundation (model, hf) ===================================================================

def _cmd_info(a: argparse.Namespace) -> None:
    from mmbert.config import ModelConfig, preset

    cfg = ModelConfig.load_json(f"{a.model}/config.json") if a.model else preset(a.preset)
    n = cfg.num_parameters()
    name = a.model or a.preset
    print(f"{name}: {n['total'] / 1e6:.1f}M parameters total, "
          f"{n['non_embedding'] / 1e6:.1f}M without embeddings "
          f"({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
          f"intermediate {cfg.intermediate_size}, {cfg.num_attention_heads} heads, "
          f"vocab {cfg.vocab_size}); the masked-LM head adds {n['mlm_head'] / 1e6:.2f}M")


def _add_foundation(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print parameter counts of a preset or a model directory")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", default="mmbert-base", help="mmbert-base, mmbert-small or tiny")
    g.add_argument("--model", default=None, help="a transformers ModernBERT directory")
    p.set_defaults(func=_cmd_info)


# === data & tokenizer =========================================================================

def _add_data(sub: argparse._SubParsersAction) -> None:
    pass


# === training =================================================================================

def _add_training(sub: argparse._SubParsersAction) -> None:
    pass


# === merging ==================================================================================

def _add_merging(sub: argparse._SubParsersAction) -> None:
    pass


# === fine-tuning & evaluation =================================================================

def _add_tasks(sub: argparse._SubParsersAction) -> None:
    pass


# === inference & benchmarks ===================================================================

def _add_inference(sub: argparse._SubParsersAction) -> None:
    pass


# ==============================================================================================

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmbert",
        description="Train, convert, merge, fine-tune, evaluate and serve mmBERT encoders.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_foundation, _add_data, _add_training, _add_merging, _add_tasks,
                _add_inference):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except MmbertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
