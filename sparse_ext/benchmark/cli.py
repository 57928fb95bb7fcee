"""``sparse-ext benchmark`` and ``sparse-ext demo`` subcommands."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List

from sparse_ext.benchmark.results import ONE_PER_PATCH
from sparse_ext.benchmark.specs import DEFAULT_FRACTIONS, TASKS

__all__ = ["add_benchmark_arguments", "register"]


def _fraction_list(text: str) -> List[int]:
    """Annotation percentages; ``1/patch`` (or ``one-per-patch``) is detection's one annotation
    per image patch (``ONE_PER_PATCH``)."""
    words = [x.strip() for x in text.split(",") if x.strip()]
    patch = {"1/patch", "one-per-patch"}
    return [ONE_PER_PATCH if w in patch else _int_list(w)[0] for w in words]


def _int_list(text: str) -> List[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _str_list(text: str) -> List[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _profile_overrides(args: argparse.Namespace) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    if getattr(args, "crop", None):
        out["crop"] = args.crop
    if getattr(args, "width", None):
        out["unet_base_channels"] = args.width
    if getattr(args, "batch_size", None):
        out["batch_size"] = args.batch_size
    if getattr(args, "scale_jitter", None):
        out["scale_jitter"] = args.scale_jitter
    return out


def add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="data", help="folder holding the fetched dataset")
    parser.add_argument("--dataset", default="hela", help="dataset name under --data")
    parser.add_argument("--task", default="seg", choices=TASKS)
    parser.add_argument(
        "--fractions",
        type=_fraction_list,
        default=list(DEFAULT_FRACTIONS),
        help="annotation percentages, e.g. 10,30,50,100; for detection also 1/patch: one "
        "annotation per 256 px image patch (Zhao, Pang et al., MICCAI 2021)",
    )
    parser.add_argument(
        "--losses", type=_str_list, default=None, help="comma-separated loss names (default: all)"
    )
    parser.add_argument("--seeds", type=_int_list, default=[0], help="e.g. 0,1,2")
    parser.add_argument("--iters", type=int, default=None, help="training iterations per run")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        dest="quick",
        action="store_true",
        default=True,
        help="small crops, narrow UNet, few iterations: minutes per run on CPU (default)",
    )
    mode.add_argument(
        "--full", dest="quick", action="store_false", help="the configs as written (GPU-sized)"
    )
    parser.add_argument("--crop", type=int, default=None, help="override the quick crop size")
    parser.add_argument("--width", type=int, default=None, help="override the UNet base width")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument(
        "--scale-jitter",
        type=float,
        default=None,
        metavar="MAX",
        help="detection: multi-scale training, each training crop resized by a factor drawn "
        "from 1, 1.25, ... and MAX (e.g. 1.5)",
    )
    parser.add_argument("--out", default=os.path.join("work_dirs", "benchmark_results"))
    parser.add_argument(
        "--work-dirs",
        default=os.path.join("work_dirs", "benchmark"),
        help="training logs of each run",
    )
    parser.add_argument("--verbose", action="store_true", help="show the frameworks' logs")


def _benchmark(args: argparse.Namespace) -> int:
    import torch

    from sparse_ext.benchmark.context import SetupError
    from sparse_ext.benchmark.driver import run_benchmark

    if args.scale_jitter and args.task != "det":
        print("sparse-ext benchmark: error: --scale-jitter is for --task det", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        run_benchmark(
            args.data,
            args.task,
            dataset=args.dataset,
            fractions=args.fractions,
            losses=args.losses,
            seeds=args.seeds,
            iters=args.iters,
            quick=args.quick,
            out=args.out,
            work_dirs=args.work_dirs,
            profile_overrides=_profile_overrides(args),
            verbose=args.verbose,
        )
    except SetupError as exc:
        print(f"sparse-ext benchmark: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _demo(args: argparse.Namespace) -> int:
    import torch

    from sparse_ext.benchmark.demo import run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    run_demo(
        args.data,
        args.out,
        fraction=args.fraction,
        iters=args.iters,
        seed=args.seed,
        profile_overrides=_profile_overrides(args),
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``benchmark`` and ``demo`` to the ``sparse-ext`` console script."""
    bench = subparsers.add_parser(
        "benchmark",
        help="train each (loss, annotation %%, seed) and score it on held-out frames",
        description="Benchmark sparse_ext's losses against the frameworks' baselines.",
    )
    add_benchmark_arguments(bench)
    bench.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    bench.set_defaults(func=_benchmark)

    demo = subparsers.add_parser(
        "demo",
        help="CE vs the partial-annotation recipes on CTC HeLa with 30 %% of the nuclei "
        "annotated (CPU, minutes)",
        description="Fetch HeLa if needed, train the MMSeg UNet with CE, ECE as published and the "
        "recommended recipe (SampledCrossEntropyLoss) on the 30 %% variant, score them on "
        "held-out frames, write a plot and an overlay.",
    )
    demo.add_argument("--data", default="data", help="dataset folder (fetched when missing)")
    demo.add_argument("--out", default=os.path.join("work_dirs", "demo"))
    demo.add_argument("--fraction", type=int, default=30)
    demo.add_argument("--iters", type=int, default=None, help="training iterations per loss")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--crop", type=int, default=None)
    demo.add_argument("--width", type=int, default=None)
    demo.add_argument("--batch-size", type=int, default=None)
    demo.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    demo.set_defaults(func=_demo)
