"""Small COCO files and run contexts for the detection benchmark's command-building tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

from sparse_ext.benchmark.context import RunContext
from sparse_ext.benchmark.specs import LOSSES, profile_for


def write_coco(
    folder: Path,
    names: Iterable[str],
    xs: Sequence[float] = (),
    width: int = 512,
    height: int = 256,
) -> None:
    """``folder/<name>`` for each name: one ``width`` x ``height`` image with a 10 px nucleus at
    each x of ``xs`` (y = 100)."""
    anns = [
        dict(id=i + 1, image_id=1, category_id=1, bbox=[x, 100, 10, 10], area=100, iscrowd=0)
        for i, x in enumerate(xs)
    ]
    coco = dict(
        images=[dict(id=1, file_name="a.png", width=width, height=height)],
        annotations=anns,
        categories=[dict(id=1, name="nucleus")],
    )
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text(json.dumps(coco))


def det_context(root: Path, work_dir: Path, loss: str, fraction: int, **kw) -> RunContext:
    """A quick-profile detection run of ``loss`` on the data under ``root``."""
    return RunContext(
        task="det",
        spec=LOSSES["det"][loss],
        fraction=fraction,
        seed=kw.pop("seed", 0),
        iters=kw.pop("iters", 2),
        mode="quick",
        profile=profile_for("det", True),
        data_root=str(root),
        work_dir=str(work_dir),
        **kw,
    )
