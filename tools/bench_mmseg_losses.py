"""Forward + backward time of the MMSeg loss modules on the quick profile's logits.

Times MMSeg's ``CrossEntropyLoss``, ``SampledCrossEntropyLoss`` and ``ExclusiveCrossEntropyLoss``
(f = 0.3) on (4, 2, 128, 128) logits with 10 % foreground labels; prints the lower quartile of
``--repeats`` calls per loss, in ms, twice in turn (docs/benchmarks/README.md, "Cost")::

    .venv/bin/python tools/bench_mmseg_losses.py
"""

from __future__ import annotations

import argparse
import time
from typing import Sequence

import torch


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from mmseg.registry import MODELS

    import sparse_ext.mmseg  # noqa: F401  (registers the losses)

    losses = {
        "CrossEntropyLoss": MODELS.build(dict(type="CrossEntropyLoss", avg_non_ignore=True)),
        "SampledCrossEntropyLoss": MODELS.build(
            dict(type="SampledCrossEntropyLoss", annotated_fraction=0.3)
        ),
        "ExclusiveCrossEntropyLoss": MODELS.build(
            dict(type="ExclusiveCrossEntropyLoss", annotated_fraction=0.3)
        ),
    }
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 2, 128, 128, generator=g)
    labels = (torch.rand(4, 128, 128, generator=g) < 0.1).long()
    for _ in range(2):
        for name, loss in losses.items():
            times = []
            for _ in range(args.repeats):
                x = logits.clone().requires_grad_()
                start = time.perf_counter()
                loss(x, labels, ignore_index=255).backward()
                times.append(time.perf_counter() - start)
            times.sort()
            print(f"{name:<26} {times[len(times) // 4] * 1e3:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
