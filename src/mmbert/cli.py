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


def _cmd_check(a: argparse.Namespace) -> None:
    from mmbert.hf import check_model

    s = check_model(a.model)
    print(f"{a.model}: ok — {s['class']}, {s['parameters'] / 1e6:.2f}M parameters, {s['dtype']}, "
          f"{s['layers']} layers, hidden {s['hidden']}, vocab {s['vocab']}")


def _cmd_convert(a: argparse.Namespace) -> None:
    from mmbert.hf import convert

    out = convert(a.model, a.out, dtype=a.dtype)
    print(f"wrote {out}/config.json and {out}/model.safetensors")


def _add_foundation(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print parameter counts of a preset or a model directory")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", default="mmbert-base", help="mmbert-base, mmbert-small or tiny")
    g.add_argument("--model", default=None, help="a transformers ModernBERT directory")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("check", help="load a ModernBERT directory fully and run one forward")
    p.add_argument("model", help="a transformers ModernBERT directory")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("convert", help="re-save a ModernBERT directory in the canonical layout")
    p.add_argument("model", help="a transformers ModernBERT directory (sharded/compiled names ok)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--dtype", default="auto", help="auto (as stored), float32, bfloat16, float16")
    p.set_defaults(func=_cmd_convert)


# === data & tokenizer =========================================================================

def _add_data(sub: argparse._SubParsersAction) -> None:
    pass


# === training =================================================================================

def _add_training(sub: argparse._SubParsersAction) -> None:
    pass


# === merging ==================================================================================

def _cmd_merge(a: argparse.Namespace) -> None:
    from mmbert.merge import merge

    out = merge(a.models, a.out, method=a.method, base=a.base, density=a.density,
                weights=a.weights, lam=a.lam)
    print(f"merged {len(a.models)} models ({a.method}) -> {out}")


def _cmd_init_small(a: argparse.Namespace) -> None:
    from mmbert.config import preset
    from mmbert.merge import init_small

    sizes = {k: v for k, v in (("hidden_size", a.hidden_size), ("num_attention_heads", a.num_heads),
                               ("intermediate_size", a.intermediate_size),
                               ("num_hidden_layers", a.num_layers)) if v is not None}
    target = preset(a.preset)
    if sizes:
        target = target.replace(**sizes)
    out = init_small(a.base, a.out, target, residual_offset=a.residual_offset,
                     head_offset=a.head_offset, heads=a.heads,
                     intermediate_offset=a.intermediate_offset, layers=a.layers)
    print(f"initialised {out} from {a.base} (hidden {target.hidden_size}, "
          f"{target.num_attention_heads} heads, intermediate {target.intermediate_size}, "
          f"{target.num_hidden_layers} layers)")


def _add_merging(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="TIES or linear merge of transformers-layout model directories")
    p.add_argument("--method", choices=("ties", "linear"), default="ties")
    p.add_argument("--base", default=None, help="common base model (required for ties)")
    p.add_argument("--models", nargs="+", required=True, help="model directories to merge")
    p.add_argument("--density", type=float, default=None,
                   help="ties: fraction of each task vector kept per tensor (default 0.2)")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one positive weight per model (default: equal)")
    p.add_argument("--lambda", dest="lam", type=float, default=None,
                   help="scale of the merged task vector (default 1)")
    p.add_argument("--out", required=True, help="output directory (must not exist)")
    p.set_defaults(func=_cmd_merge)

    p = sub.add_parser("init-small", help="initialise a smaller model from a base model by "
                                          "strided weight selection")
    p.add_argument("--from", dest="base", required=True, help="base model directory")
    p.add_argument("--out", required=True, help="output directory (must not exist)")
    p.add_argument("--preset", default="mmbert-small", help="target sizes (default mmbert-small)")
    p.add_argument("--hidden-size", type=int, default=None)
    p.add_argument("--num-heads", type=int, default=None)
    p.add_argument("--intermediate-size", type=int, default=None)
    p.add_argument("--num-layers", type=int, default=None)
    p.add_argument("--residual-offset", type=int, default=0,
                   help="first kept hidden coordinate (0 <= offset < stride)")
    p.add_argument("--head-offset", type=int, default=0, help="first kept head (strided heads)")
    p.add_argument("--heads", type=int, nargs="+", default=None, help="explicit heads to keep")
    p.add_argument("--intermediate-offset", type=int, default=0)
    p.add_argument("--layers", type=int, nargs="+", default=None,
                   help="base layers to keep (default: the first N)")
    p.set_defaults(func=_cmd_init_small)


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
