"""``sparse-ext loss-demo``: cross-entropy vs exclusive cross-entropy on a toy sparse batch.

A toy "model" segments discs (cells) well; only 30 % of the discs are annotated, the rest are
labelled 0 like the background. Cross-entropy with the sparse labels punishes the model for
every unannotated cell it finds; exclusive cross-entropy (Panteli et al., ICCV 2021, Eq. 7)
leaves out the unannotated pixels the model is confident about, so the cells it finds but nobody
annotated do not push it back towards background.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from sparse_ext.losses.exclusive_cross_entropy import exclusive_cross_entropy
from sparse_ext.losses.schedules import NAMED_SCHEDULES


def _toy_batch(seed: int, size: int = 64, cells: int = 12, annotated_fraction: float = 0.3):
    """Logits (2, 2, size, size), exhaustive and sparse label maps (2, size, size)."""
    g = torch.Generator().manual_seed(seed)
    n = 2
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    full = torch.zeros(n, size, size, dtype=torch.long)
    sparse = torch.zeros(n, size, size, dtype=torch.long)
    centres = torch.randint(6, size - 6, (n, cells, 2), generator=g)
    annotated = torch.rand(n, cells, generator=g) < annotated_fraction
    annotated[:, 0] = True  # at least one annotation per image
    # (n, cells, size, size) discs of radius 4, vectorised over images and cells
    discs = (yy - centres[..., 0, None, None]) ** 2 + (xx - centres[..., 1, None, None]) ** 2 <= 16
    full[discs.any(dim=1)] = 1
    sparse[(discs & annotated[..., None, None]).any(dim=1)] = 1
    # a decent model: confident on most cells, with noise
    fg = 4.0 * full.float() - 2.0 + 1.5 * torch.randn(n, size, size, generator=g)
    logits = torch.stack([torch.zeros_like(fg), fg], dim=1)
    return logits, full, sparse


def run_loss_demo(seed: int = 0) -> Dict[str, float]:
    """Print CE vs ECE on a toy sparsely annotated batch; return the printed values."""
    logits, full, sparse = _toy_batch(seed)
    missed = (full == 1) & (sparse == 0)
    values: Dict[str, float] = {
        "CE, exhaustive labels": F.cross_entropy(logits, full).item(),
        "CE, sparse labels (unannotated = background)": F.cross_entropy(logits, sparse).item(),
    }
    for rho in (0.25, 0.5, 0.68, 0.9, 1.0):
        values[f"ECE, rho = {rho:g}"] = exclusive_cross_entropy(logits, sparse, rho=rho).item()
    values["ECE + focal (rho 0.5, alpha 0.25, gamma 2)"] = exclusive_cross_entropy(
        logits, sparse, rho=0.5, focal_alpha=0.25, focal_gamma=2.0
    ).item()
    values["ECE logit_margin (rho 0.5, reference code)"] = exclusive_cross_entropy(
        logits, sparse, rho=0.5, confidence="logit_margin"
    ).item()

    # share of the unannotated cells' pixels that rho 0.5 leaves out of the loss
    per_pixel = exclusive_cross_entropy(logits, sparse, rho=0.5, reduction="none")
    excluded = ((per_pixel == 0) & missed).sum().item() / max(int(missed.sum()), 1)

    print(
        f"toy batch (seed {seed}): {tuple(logits.shape)} logits, "
        f"{int((full == 1).sum())} object pixels, {int((sparse == 1).sum())} annotated "
        f"({int(missed.sum())} unannotated object pixels labelled 0)"
    )
    width = max(len(k) for k in values)
    for name, value in values.items():
        print(f"  {name:<{width}}  {value:.4f}")
    print(f"  ECE rho 0.5 leaves out {100 * excluded:.0f} % of the unannotated object pixels")
    schedule = NAMED_SCHEDULES["paper_table2"]
    print(
        "  rho over training, paper_table2 schedule: "
        + ", ".join(
            f"p={name}: {schedule(p):.3f}"
            for name, p in (("0", 0.0), ("1/12", 1 / 12), ("1/6", 1 / 6), ("1", 1.0))
        )
    )
    values["excluded unannotated object pixels (rho 0.5)"] = excluded
    return values
