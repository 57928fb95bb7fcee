"""The ``sparse-ext`` console script."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from sparse_ext import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparse-ext", description="Training from partial annotations in Detectron2 and MMSeg."
    )
    parser.add_argument("--version", action="version", version=f"sparse_ext {__version__}")
    sub = parser.add_subparsers(dest="command")
    loss_demo = sub.add_parser(
        "loss-demo", help="print CE vs ECE on a sparsely annotated toy batch"
    )
    loss_demo.add_argument("--seed", type=int, default=0)
    loss_demo.set_defaults(func=_loss_demo)
    from sparse_ext.benchmark.cli import register as register_benchmark

    register_benchmark(sub)
    from sparse_ext.data.cli import register as register_data

    register_data(sub)
    return parser


def _loss_demo(args: argparse.Namespace) -> int:
    from sparse_ext.losses.demo import run_loss_demo

    run_loss_demo(seed=args.seed)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
