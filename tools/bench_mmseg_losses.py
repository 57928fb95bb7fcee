"""Time of the MMSeg recipes' losses and of whole training steps, side by side.

Default: forward + backward of MMSeg's ``CrossEntropyLoss``, ``SampledCrossEntropyLoss`` and
``ExclusiveCrossEntropyLoss`` (f = 0.3) on (4, 2, 128, 128) logits with 10 % foreground labels;
the lower quartile of ``--repeats`` calls per loss, in ms, twice in turn.

``--train-step``: one training step (UNet forward, both heads' losses, backward, AdamW step) of
the shipped UNet configs at the quick benchmark's size (width 16, batch 4, 128 px crops; CE, the
sampled-CE and ECE recipes with f = 0.3 after the warm-up, the sampled-CE recipe while it
estimates f, pixel nnPU), each round timing every recipe once in a fresh random order, on one
fixed batch; prints each recipe's lower quartile over the rounds and its ratio to CE's
(docs/benchmarks/README.md, "Cost")::

    .venv/bin/python tools/bench_mmseg_losses.py
    .venv/bin/python tools/bench_mmseg_losses.py --train-step --rounds 40 --threads 1
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from typing import Callable, Dict, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# recipe -> (config, training progress at which it is timed)
RECIPES = {
    "ce": ("unet_s5-d16_ce_partial-nuclei.py", 0.5),
    "ce_sampled": ("unet_s5-d16_sampled-ce_partial-nuclei.py", 0.5),
    "ce_sampled (estimating f)": ("unet_s5-d16_sampled-ce_partial-nuclei.py", 0.15),
    "ece": ("unet_s5-d16_ece_partial-nuclei.py", 0.5),
    "nnpu": ("unet_s5-d16_nnpu_partial-nuclei.py", 0.5),
}


def _lower_quartile(values: Sequence[float]) -> float:
    return sorted(values)[len(values) // 4]


def loss_calls(repeats: int) -> None:
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
            for _ in range(repeats):
                x = logits.clone().requires_grad_()
                start = time.perf_counter()
                loss(x, labels, ignore_index=255).backward()
                times.append(time.perf_counter() - start)
            print(f"{name:<26} {_lower_quartile(times) * 1e3:.3f} ms")


def _train_step(config: str, progress: float, inputs, samples) -> Callable[[], None]:
    """One AdamW training step of ``config``'s segmentor at the quick profile's size."""
    from mmseg.registry import MODELS

    from sparse_ext.benchmark.mmengine_runs import apply_profile
    from sparse_ext.benchmark.specs import profile_for
    from sparse_ext.mmseg.config import load_config
    from sparse_ext.mmseg.hooks import set_annotated_fraction, set_training_progress

    cfg = load_config(os.path.join(CONFIGS, "mmseg", config))
    apply_profile(cfg, profile_for("seg", quick=True))
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    set_annotated_fraction(model, 0.3)
    set_training_progress(model, progress)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)

    def step() -> None:
        loss, _ = model.parse_losses(model.loss(inputs, samples))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def train_steps(rounds: int) -> None:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(4, 3, 128, 128, generator=g)
    samples = []
    for _ in range(4):
        sample = SegDataSample(metainfo=dict(img_shape=(128, 128), pad_shape=(128, 128)))
        label = (torch.rand(1, 128, 128, generator=g) < 0.1).long()
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    steps = {name: _train_step(c, p, inputs, samples) for name, (c, p) in RECIPES.items()}
    for step in steps.values():  # warm-up
        step()
    times: Dict[str, list] = {name: [] for name in steps}
    order = list(steps)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    ce = _lower_quartile(times["ce"])
    print(f"{'recipe':<28} {'s/step (lower quartile)':>24} {'x CE':>6}")
    for name, values in times.items():
        lq = _lower_quartile(values)
        print(f"{name:<28} {lq:>24.4f} {lq / ce:>6.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="loss calls per loss")
    parser.add_argument("--train-step", action="store_true", help="time whole training steps")
    parser.add_argument("--rounds", type=int, default=40, help="rounds of training steps")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.train_step:
        train_steps(args.rounds)
    else:
        loss_calls(args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
