"""Forward + backward time of each sparse_ext loss relative to F.cross_entropy.

All losses run on the same (16, 2, 256, 256) logits and sparse label map (10 % of pixels
annotated foreground, a few ignored), interleaved in one run: each round times every loss once,
in a shuffled order, and the reported ratio is the median over rounds of loss time / CE time of
the same round (robust to the machine speeding up or slowing down during the run).

    .venv/bin/python tools/bench_losses.py [--rounds 15] [--threads 2] [--shape 16 2 256 256]

Not a test: it prints numbers. nnPU and LSR are timed when ``sparse_ext.losses`` provides them;
the reference ``ece-loss`` package when it is installed.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from sparse_ext.losses import exclusive_cross_entropy


def build_losses(logits: torch.Tensor, target: torch.Tensor) -> Dict[str, Callable]:
    """name -> function(logits) returning a scalar loss; CE first."""
    losses: Dict[str, Callable] = {
        "cross_entropy": lambda x: F.cross_entropy(x, target, ignore_index=255),
        "ece (paper: foreground, rho 0.5)": lambda x: exclusive_cross_entropy(x, target, rho=0.5),
        "ece logit_margin (rho 0.5)": lambda x: exclusive_cross_entropy(
            x, target, rho=0.5, confidence="logit_margin"
        ),
        "ece + focal (alpha 0.25, gamma 2)": lambda x: exclusive_cross_entropy(
            x, target, rho=0.5, focal_alpha=0.25, focal_gamma=2.0
        ),
        "ece + sampling 0.5": lambda x: exclusive_cross_entropy(
            x, target, rho=0.5, sample_prob=0.5
        ),
    }
    try:
        from ece_loss import ExclusiveCrossEntropyLoss

        reference = ExclusiveCrossEntropyLoss(ignore_index=255)  # its defaults, epoch 0
        losses["reference ece-loss 1.0.0 (defaults)"] = lambda x: reference(x, target).mean()
    except ImportError:
        print("ece-loss not installed: reference ECE skipped")
    try:
        from sparse_ext.losses import nnpu_loss

        # pixels as samples: softmax over (background, object), background = column 0
        flat_target = target.reshape(-1)
        valid = flat_target != 255
        pixel_labels = flat_target[valid]

        def _nnpu(x: torch.Tensor) -> torch.Tensor:
            flat = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])[valid]
            return nnpu_loss(flat, pixel_labels, 0.1, background_index=0)

        losses["nnpu (pixels, prior 0.1)"] = _nnpu
    except ImportError:
        print("sparse_ext.losses.nnpu_loss not available: nnPU skipped")
    try:
        from sparse_ext.losses import lsr_loss

        n, c = logits.shape[:2]
        z = 10
        g = torch.Generator().manual_seed(1)
        block_labels = torch.randint(0, z, (n,), generator=g)
        eta = torch.rand(c, z, generator=g)
        rho = 0.05 + 0.1 * torch.rand(c, z, generator=g)
        losses["lsr intra_inter (image = block)"] = lambda x: lsr_loss(x, block_labels, eta, rho)
    except ImportError:
        print("sparse_ext.losses.lsr_loss not available: LSR skipped")
    return losses


def time_once(fn: Callable, logits: torch.Tensor) -> float:
    start = time.perf_counter()
    loss = fn(logits)
    (grad,) = torch.autograd.grad(loss, logits)
    elapsed = time.perf_counter() - start
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=4, default=(16, 2, 256, 256))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    n, c, h, w = args.shape
    logits = (2.0 * torch.randn(n, c, h, w, generator=g)).requires_grad_()
    target = torch.zeros(n, h, w, dtype=torch.long)
    target[torch.rand(n, h, w, generator=g) < 0.1] = 1  # annotated foreground
    target[torch.rand(n, h, w, generator=g) < 0.01] = 255  # ignored
    losses = build_losses(logits, target)

    times: Dict[str, List[float]] = {name: [] for name in losses}
    ratios: Dict[str, List[float]] = {name: [] for name in losses}
    order = list(losses)
    rng = random.Random(args.seed)
    for r in range(args.warmup + args.rounds):
        rng.shuffle(order)
        this_round = {name: time_once(losses[name], logits) for name in order}
        if r < args.warmup:
            continue
        for name, t in this_round.items():
            times[name].append(t)
            ratios[name].append(t / this_round["cross_entropy"])

    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, logits {tuple(args.shape)}, "
        f"{args.rounds} rounds (median)"
    )
    print(f"{'loss':40s} {'fwd+bwd ms':>10s} {'x CE':>6s}")
    for name in losses:
        print(
            f"{name:40s} {1e3 * statistics.median(times[name]):10.1f} "
            f"{statistics.median(ratios[name]):6.2f}"
        )


if __name__ == "__main__":
    main()
