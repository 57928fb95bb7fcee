"""Scale benchmarks of ``sparse_ext.data`` (issue 14). Not a test: it prints measured figures next to
their targets (docs/benchmarks/scale.md records them) and exits 1 when a target is missed.

``tile``: writes a synthetic tiled BigTIFF of SIZE x SIZE pixels (default 40,000 x 40,000 RGB, 4.8 GB
of pixels) tile by tile with tifffile, so the writer never holds the slide either, then runs
``sparse-ext convert tile`` on it in a subprocess and reports that process's peak resident memory
(``os.wait4`` rusage, ``ru_maxrss``). Target: below 500 MB whatever the slide size. The same command
on a 2,048 x 2,048 slide gives the baseline (interpreter, numpy, scikit-image, ...). Some output
tiles are checked against the slide's pixels, recomputed from the pattern that wrote them.

``subsample``: writes a COCO file of N annotations (default 1,000,000 on 2,000 images, the form
docs/data.md used: ``id, image_id, category_id, bbox``) and times
``sparse_ext.data.subsample.subsample_coco`` on it (default fractions 10..90: nine files, 4.5 N
annotations written) in a fresh interpreter per repeat: wall and CPU seconds of the call, and the
wall time of the whole CLI command. Target: below 5 s.

    .venv/bin/python tools/bench_scale.py tile [--size 40000] [--channels 3] [--tile 1024]
    .venv/bin/python tools/bench_scale.py subsample [--annotations 1000000] [--repeat 3]

Files go to a temporary folder (``--workdir`` to choose it; ``--keep`` keeps them). The machine's
load average is printed with the figures: on a shared machine wall times vary with it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

RSS_TARGET_MB = 500.0
SUBSAMPLE_TARGET_S = 5.0
SEGMENT = 256  # TIFF tile of the synthetic slide


def pattern(y0: int, x0: int, h: int, w: int, channels: int) -> np.ndarray:
    """Pixels ``[y0, y0 + h) x [x0, x0 + w)`` of the synthetic slide: blocks of varying grey with
    disc-shaped "nuclei" on a lattice (cheap to compute anywhere, not trivial to compress)."""
    yy = np.arange(y0, y0 + h, dtype=np.int64)[:, None]
    xx = np.arange(x0, x0 + w, dtype=np.int64)[None, :]
    base = ((xx // 97) * 13 + (yy // 89) * 29) % 160 + 40
    nuclei = ((xx % 61) - 30) ** 2 + ((yy % 53) - 26) ** 2 < 15**2
    grey = np.where(nuclei, 255 - base // 2, base).astype(np.uint8)
    if channels == 1:
        return grey
    planes = [grey, (grey.astype(np.uint16) * 3 // 4).astype(np.uint8), 255 - grey]
    return np.stack(planes[:channels], axis=-1)


def write_slide(path: Path, size: int, channels: int) -> None:
    """A ``size`` x ``size`` tiled (256 px), zlib-compressed BigTIFF written one TIFF tile at a
    time (tifffile consumes the iterator), so memory stays at one tile."""
    import tifffile

    def tiles():
        for y in range(0, size, SEGMENT):
            for x in range(0, size, SEGMENT):
                t = pattern(y, x, min(SEGMENT, size - y), min(SEGMENT, size - x), channels)
                if t.shape[:2] != (SEGMENT, SEGMENT):  # edge tiles are padded to full size
                    pad = [(0, SEGMENT - t.shape[0]), (0, SEGMENT - t.shape[1])]
                    t = np.pad(t, pad + [(0, 0)] * (t.ndim - 2))
                yield t

    shape = (size, size) if channels == 1 else (size, size, channels)
    tifffile.imwrite(
        path,
        tiles(),
        shape=shape,
        dtype=np.uint8,
        tile=(SEGMENT, SEGMENT),
        compression="zlib",
        bigtiff=True,
        photometric="minisblack" if channels == 1 else "rgb",
    )


def run_measured(cmd: List[str]) -> Dict[str, Any]:
    """Run ``cmd``; its wall seconds and peak RSS (MB) from its own rusage (os.wait4)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux: kilobytes
        "stdout": out.strip(),
    }


def cli(*args: str) -> List[str]:
    return [sys.executable, "-m", "sparse_ext.cli", *args]


def bench_tile(a: argparse.Namespace, work: Path) -> bool:
    results = {}
    for name, size in (("baseline", 2048), ("slide", a.size)):
        slide = work / f"{name}.tif"
        t = time.perf_counter()
        write_slide(slide, size, a.channels)
        written = time.perf_counter() - t
        out = work / f"{name}_tiles"
        cmd = cli("convert", "tile", str(slide), str(out), "--tile", str(a.tile),
                  "--overlap", str(a.overlap))  # fmt: skip
        r = run_measured(cmd)
        tiles = json.loads((out / "tiles.json").read_text())["images"]
        rng = np.random.default_rng(0)
        from skimage import io as skio

        for k in rng.choice(len(tiles), size=min(8, len(tiles)), replace=False):
            t = tiles[k]
            got = skio.imread(out / "images" / t["file_name"])
            want = pattern(t["y0"], t["x0"], t["height"], t["width"], a.channels)
            if not np.array_equal(got, want):
                raise SystemExit(f"tile {t['file_name']} differs from the slide's pixels")
        results[name] = dict(
            r,
            size=size,
            tiles=len(tiles),
            slide_file_mb=slide.stat().st_size / 2**20,
            pixels_gb=size * size * a.channels / 1e9,
            write_s=written,
            command=" ".join(["sparse-ext", *cmd[3:]]),
        )
        if not a.keep:
            shutil.rmtree(out)
            slide.unlink()
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    s, b = results["slide"], results["baseline"]
    ok = s["peak_rss_mb"] < RSS_TARGET_MB
    print(
        f"tile: {s['size']} x {s['size']} x {a.channels} uint8 ({s['pixels_gb']:.1f} GB of pixels, "
        f"BigTIFF {s['slide_file_mb']:.0f} MiB, written in {s['write_s']:.0f} s by a process that "
        f"peaked at {own_peak:.0f} MB)"
    )
    print(f"  command: {s['command']}")
    print(
        f"  {s['tiles']} tiles in {s['wall_s']:.0f} s (CPU {s['cpu_s']:.0f} s): peak RSS "
        f"{s['peak_rss_mb']:.0f} MB [target < {RSS_TARGET_MB:.0f} MB: {'met' if ok else 'MISSED'}]"
    )
    print(
        f"  baseline {b['size']} x {b['size']} ({b['tiles']} tiles): peak RSS "
        f"{b['peak_rss_mb']:.0f} MB; load average {os.getloadavg()[0]:.1f}"
    )
    if a.json:
        print(json.dumps({"tile": results, "writer_peak_rss_mb": own_peak}))
    return ok


def write_coco(path: Path, n: int, n_images: int) -> None:
    rng = np.random.default_rng(0)
    image_ids = rng.integers(1, n_images + 1, n)
    coco = {
        "images": [
            {"id": i, "file_name": f"{i}.png", "width": 512, "height": 512}
            for i in range(1, n_images + 1)
        ],
        "categories": [{"id": 1, "name": "nucleus"}],
        "annotations": [
            {"id": k + 1, "image_id": int(i), "category_id": 1, "bbox": [10.0, 10.0, 20.0, 20.0]}
            for k, i in enumerate(image_ids)
        ],
    }
    path.write_text(json.dumps(coco, separators=(",", ":")))


ONCE = """
import json, resource, sys, time
from sparse_ext.data.subsample import subsample_coco
w, c = time.perf_counter(), time.process_time()
s = subsample_coco(sys.argv[1], sys.argv[2], seed=0, verbose=False)
print(json.dumps({"wall_s": time.perf_counter() - w, "cpu_s": time.process_time() - c,
                  "written": len(s.outputs)}))
"""


def bench_subsample(a: argparse.Namespace, work: Path) -> bool:
    src = work / "train.json"
    write_coco(src, a.annotations, a.images)
    runs, cli_runs = [], []
    for i in range(a.repeat):
        out = work / f"out{i}"
        r = run_measured([sys.executable, "-c", ONCE, str(src), str(out)])
        runs.append(dict(json.loads(r["stdout"]), peak_rss_mb=r["peak_rss_mb"]))
        shutil.rmtree(out)
        cli_runs.append(run_measured(cli("convert", "subsample", str(src), str(out))))
        if i == 0:
            written = sum(len(json.loads(p.read_text())["annotations"]) for p in out.glob("*.json"))
        shutil.rmtree(out)
    med = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
    best = min(r["wall_s"] for r in runs)
    cli_med = sorted(c["wall_s"] for c in cli_runs)[len(cli_runs) // 2]
    ok = med["wall_s"] < SUBSAMPLE_TARGET_S
    print(
        f"subsample: {a.annotations} annotations on {a.images} images "
        f"({src.stat().st_size / 2**20:.0f} MiB), 9 fractions, {written} annotations written"
    )
    print(
        f"  subsample_coco wall {med['wall_s']:.2f} s median of {a.repeat} (best {best:.2f} s), "
        f"CPU {med['cpu_s']:.2f} s, peak RSS {med['peak_rss_mb']:.0f} MB "
        f"[target < {SUBSAMPLE_TARGET_S:.0f} s: {'met' if ok else 'MISSED'}]"
    )
    print(
        f"  `sparse-ext convert subsample train.json out` (with interpreter start and imports): "
        f"{cli_med:.2f} s median; load average {os.getloadavg()[0]:.1f}"
    )
    if a.json:
        print(json.dumps({"subsample": runs, "cli_wall_s": [c["wall_s"] for c in cli_runs]}))
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="bench", required=True)
    t = sub.add_parser("tile", help="peak RSS of `sparse-ext convert tile` on a large slide")
    t.add_argument("--size", type=int, default=40_000, help="slide side in pixels")
    t.add_argument("--channels", type=int, default=3, choices=(1, 3))
    t.add_argument("--tile", type=int, default=1024)
    t.add_argument("--overlap", type=int, default=128)
    s = sub.add_parser("subsample", help="time of subsample on a million annotations")
    s.add_argument("--annotations", type=int, default=1_000_000)
    s.add_argument("--images", type=int, default=2000)
    s.add_argument("--repeat", type=int, default=3)
    for q in (t, s):
        q.add_argument("--workdir", default=None, help="folder for the files (default: a temp)")
        q.add_argument("--keep", action="store_true", help="keep the files")
        q.add_argument("--json", action="store_true", help="also print the figures as JSON")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_scale_", dir=a.workdir))
    try:
        ok = bench_tile(a, work) if a.bench == "tile" else bench_subsample(a, work)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
