"""Forward + backward time of sparse_ext's losses relative to ``F.cross_entropy``, side by side.

Two groups, each with its own cross-entropy baseline on the same input:

- dense: (16, 2, 256, 256) logits and a sparse label map (10 % of pixels annotated foreground,
  1 % ignored), as a segmentation head sees them: ECE (Panteli et al., ICCV 2021, Eq. 7), its
  focal variant (Eq. 8), the reference code's logit-margin mode, background sampling, the
  reference ``ece-loss`` package when installed, and LSR (each image one block);
- roi: (4096, 3) classification logits of 4096 proposals (Detectron2's 8 images x 512 ROIs, two
  classes + background in the last column, 25 % positives): nnPU (Zhao et al., MICCAI 2021)
  and ECE on the same proposals.

Every round times every loss once, in a freshly shuffled order (interleaved: a machine that
speeds up or slows down during the run affects all losses alike). Two ratios are printed, both
lower quartiles over the rounds (the least disturbed rounds, still a robust statistic): "x CE"
is the lower quartile of the loss's times over that of its group's cross-entropy, "per round"
the lower quartile of the per-round ratios loss time / cross-entropy time. A target counts as
met when both are within it. ROI-sized calls are repeated ``--roi-repeats`` times per timing.

    .venv/bin/python tools/bench_losses.py            # 40 rounds, 1 thread
    .venv/bin/python tools/bench_losses.py --rounds 40 --threads 2

Times are the process's CPU time by default (``--clock cpu``): on a small machine shared with
other jobs, elapsed time mostly measures the other jobs (``--clock wall`` gives it). One thread
by default: with two, OpenMP's workers wait on each other whenever another job holds a core,
and timings scatter by several times (see docs/benchmarks/loss_speed.md).

Not a test: it prints numbers, and the speed targets of issue 14 beside them (CPU).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Callable, Dict, List, NamedTuple, Optional

import torch
import torch.nn.functional as F

from sparse_ext.losses import exclusive_cross_entropy, lsr_loss, nnpu_loss


class Case(NamedTuple):
    group: str  # "dense" or "roi": which input and which cross-entropy baseline
    fn: Callable[[torch.Tensor], torch.Tensor]
    target: Optional[float]  # the speed target, x cross-entropy (None: none set)


def dense_inputs(shape: tuple, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    logits = (2.0 * torch.randn(n, c, h, w, generator=g)).requires_grad_()
    target = torch.zeros(n, h, w, dtype=torch.long)
    target[torch.rand(n, h, w, generator=g) < 0.1] = 1  # annotated foreground
    target[torch.rand(n, h, w, generator=g) < 0.01] = 255  # ignored
    return logits, target


def roi_inputs(rois: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    logits = (2.0 * torch.randn(rois, classes, generator=g)).requires_grad_()
    labels = torch.full((rois,), classes - 1, dtype=torch.long)  # background: the last column
    positive = torch.rand(rois, generator=g) < 0.25
    labels[positive] = torch.randint(0, classes - 1, (int(positive.sum()),), generator=g)
    return logits, labels


def build_cases(target: torch.Tensor, n_blocks: int, n_classes: int, labels: torch.Tensor):
    """name -> Case; the cross-entropy baselines are named "cross_entropy" and "roi_cross_entropy"."""

    def ece(**kw) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: exclusive_cross_entropy(x, target, **kw)

    cases: Dict[str, Case] = {
        "cross_entropy": Case("dense", lambda x: F.cross_entropy(x, target, ignore_index=255), 1),
        "ece (paper: foreground, rho 0.5)": Case("dense", ece(rho=0.5), 1.10),
        "ece + focal (alpha 0.25, gamma 2)": Case(
            "dense", ece(rho=0.5, focal_alpha=0.25, focal_gamma=2.0), 1.5
        ),
        "ece logit_margin (rho 0.5)": Case("dense", ece(rho=0.5, confidence="logit_margin"), None),
        "ece + sampling 0.5": Case("dense", ece(rho=0.5, sample_prob=0.5), None),
    }
    try:
        from ece_loss import ExclusiveCrossEntropyLoss

        reference = ExclusiveCrossEntropyLoss(ignore_index=255)  # its defaults, epoch 0
        cases["reference ece-loss 1.0.0 (defaults)"] = Case(
            "dense", lambda x: reference(x, target).mean(), None
        )
    except ImportError:
        print("ece-loss not installed: reference ECE skipped")

    g = torch.Generator().manual_seed(1)
    z = 10
    block_labels = torch.randint(0, z, (n_blocks,), generator=g)
    eta = torch.rand(n_classes, z, generator=g)
    rho = 0.05 + 0.1 * torch.rand(n_classes, z, generator=g)
    cases["lsr intra_inter (image = block)"] = Case(
        "dense", lambda x: lsr_loss(x, block_labels, eta, rho), None
    )

    cases["roi_cross_entropy"] = Case("roi", lambda x: F.cross_entropy(x, labels), 1)
    cases["nnpu (detection, clamp, prior 0.1)"] = Case(
        "roi", lambda x: nnpu_loss(x, labels, 0.1), 1.5
    )
    cases["nnpu (detection, kiryo, prior 0.1)"] = Case(
        "roi", lambda x: nnpu_loss(x, labels, 0.1, nonnegative="kiryo"), None
    )
    # ECE on the same proposals (its background is class 0: the last column moved first)
    background = labels.max()
    ece_labels = torch.where(labels == background, 0, labels + 1)
    cases["ece (proposals, rho 0.5)"] = Case(
        "roi", lambda x: exclusive_cross_entropy(x.roll(1, dims=1), ece_labels, rho=0.5), None
    )
    return cases


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def time_once(fn: Callable, logits: torch.Tensor, repeats: int = 1, clock: str = "cpu") -> float:
    now = CLOCKS[clock]
    start = now()
    for _ in range(repeats):
        loss = fn(logits)
        (grad,) = torch.autograd.grad(loss, logits)
    elapsed = (now() - start) / repeats
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    return elapsed


def lower_quartile(values: List[float]) -> float:
    return statistics.quantiles(values, n=4, method="inclusive")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shape", type=int, nargs=4, default=(16, 2, 256, 256))
    parser.add_argument("--rois", type=int, nargs=2, default=(4096, 3), metavar=("N", "K+1"))
    parser.add_argument("--roi-repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="cpu",
        help="cpu: the process's CPU time (what the losses cost, whatever else runs); "
        "wall: elapsed time",
    )
    parser.add_argument("--only", nargs="*", help="substrings of the loss names to time")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    logits, target = dense_inputs(tuple(args.shape), args.seed)
    roi_logits, roi_labels = roi_inputs(args.rois[0], args.rois[1], args.seed)
    cases = build_cases(target, args.shape[0], args.shape[1], roi_labels)
    if args.only:
        cases = {
            k: v
            for k, v in cases.items()
            if k in ("cross_entropy", "roi_cross_entropy") or any(s in k for s in args.only)
        }
    baseline = {"dense": "cross_entropy", "roi": "roi_cross_entropy"}
    inputs = {"dense": logits, "roi": roi_logits}
    repeats = {"dense": 1, "roi": args.roi_repeats}

    times: Dict[str, List[float]] = {name: [] for name in cases}
    ratios: Dict[str, List[float]] = {name: [] for name in cases}
    order = list(cases)
    rng = random.Random(args.seed)
    for r in range(args.warmup + args.rounds):
        rng.shuffle(order)
        this_round = {}
        for name in order:
            group = cases[name].group
            this_round[name] = time_once(cases[name].fn, inputs[group], repeats[group], args.clock)
        if r < args.warmup:
            continue
        for name, t in this_round.items():
            times[name].append(t)
            ratios[name].append(t / this_round[baseline[cases[name].group]])

    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, dense logits "
        f"{tuple(args.shape)}, roi logits {tuple(args.rois)} (x{args.roi_repeats} per timing), "
        f"{args.rounds} interleaved rounds, {args.clock} clock; lower quartile over rounds"
    )
    print(
        f"{'loss':40s} {'group':>5s} {'fwd+bwd ms':>10s} {'x CE':>6s} {'per round':>9s} "
        f"{'target':>7s}"
    )
    for name, case in cases.items():
        base = baseline[case.group]
        ratio = lower_quartile(times[name]) / lower_quartile(times[base])
        per_round = lower_quartile(ratios[name])
        goal = ""
        if case.target is not None and name not in baseline.values():
            met = max(ratio, per_round) <= case.target
            goal = f"<={case.target:.2f}" + (" ok" if met else " MISSED")
        print(
            f"{name:40s} {case.group:>5s} {1e3 * lower_quartile(times[name]):10.3f} "
            f"{ratio:6.2f} {per_round:9.2f} {goal:>7s}"
        )


if __name__ == "__main__":
    main()
