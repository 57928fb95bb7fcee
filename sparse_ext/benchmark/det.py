"""Detection runs: Detectron2 Faster R-CNN through ``tools/train_net.py``, in a subprocess.

Detectron2 is not on PyPI and often lives in its own environment, so a run calls the repository's
``tools/train_net.py`` with the Python that has detectron2 (``SPARSE_EXT_D2_PYTHON``, default
this interpreter) and reads the results that Detectron2's trainer writes: ``metrics.json``
(COCOEvaluator AP and SparseDetectionEvaluator F1/precision/recall, evaluated on the test split
after the last iteration) and per-iteration times. The training set is the COCO file of the
annotation fraction from ``sparse-ext data fetch`` (``annotations/*frac{NNN}*.json``, or the
exhaustive train file at 100 %); the test set is the exhaustive test file.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

from sparse_ext.benchmark.specs import REPO_ROOT, LossSpec

__all__ = ["detectron2_python", "find_coco", "train_and_evaluate_det"]

_LOSS_KEYS = ("SPARSE.ROI_LOSS", "SPARSE.RPN_LOSS")


def detectron2_python() -> Optional[str]:
    """The Python interpreter that can import detectron2 (``SPARSE_EXT_D2_PYTHON`` or this one),
    or None."""
    python = os.environ.get("SPARSE_EXT_D2_PYTHON") or sys.executable
    probe = subprocess.run(
        [python, "-c", "import detectron2"], capture_output=True, text=True, env=_env()
    )
    return python if probe.returncode == 0 else None


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    paths = [REPO_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def find_coco(data_root: str, split: str, fraction: int = 100) -> str:
    """The COCO file of a split (and annotation fraction) in ``data_root/annotations``."""
    folder = os.path.join(data_root, "annotations")
    patterns = [f"*{split}*frac{fraction:03d}*.json", f"*frac{fraction:03d}*{split}*.json"]
    if fraction == 100:
        patterns += [f"*{split}*full*.json", f"*full*{split}*.json", f"{split}.json"]
    for pattern in patterns:
        hits = sorted(glob.glob(os.path.join(folder, pattern)))
        if hits:
            return hits[0]
    raise FileNotFoundError(
        f"no COCO file for split {split!r} at {fraction} % in {folder} (tried {patterns})"
    )


def _last_eval(metrics_json: str) -> Dict[str, float]:
    out: Dict[str, float] = {}
    times: List[float] = []
    with open(metrics_json) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            if "time" in rec:
                times.append(float(rec["time"]))
            if any(k.startswith(("bbox/", "sparse/")) for k in rec):
                out = {k: float(v) for k, v in rec.items() if isinstance(v, (int, float))}
    if times:
        out["_time"] = sum(times) / len(times)
    return out


def _pick(metrics: Dict[str, float], *names: str) -> float:
    for name in names:
        if name in metrics:
            return metrics[name]
    return float("nan")


def train_and_evaluate_det(
    spec: LossSpec,
    data_root: str,
    fraction: int,
    seed: int,
    iters: int,
    work_dir: str,
    *,
    profile: Optional[Dict[str, Any]] = None,
    verbose: bool = False,
) -> Dict[str, Any]:
    """Train and evaluate one Faster R-CNN run; returns seconds, sec/iter and the metrics."""
    python = detectron2_python()
    if python is None:
        raise ImportError("detectron2 is not importable (set SPARSE_EXT_D2_PYTHON)")
    os.makedirs(work_dir, exist_ok=True)
    train_json = find_coco(data_root, "train", fraction)
    test_json = find_coco(data_root, "test", 100)
    opts = [
        "DATASETS.TRAIN", "('bench_train',)",
        "DATASETS.TEST", "('bench_test',)",
        "SOLVER.MAX_ITER", str(iters),
        "SEED", str(seed),
        "OUTPUT_DIR", work_dir,
    ]  # fmt: skip
    config, overrides = spec.config_path, spec.overrides
    if (profile or {}).get("recipe_configs"):
        # the loss's R50-FPN recipe (its RPN loss included), with the spec's other options
        roi_loss = overrides.get("MODEL.SPARSE.ROI_LOSS", spec.name)
        config = os.path.join(
            REPO_ROOT, "configs", "detectron2", f"faster_rcnn_R_50_FPN_{roi_loss}.yaml"
        )
        overrides = {k: v for k, v in overrides.items() if not k.endswith(_LOSS_KEYS)}
    for key, value in {**(profile or {}).get("opts", {}), **overrides}.items():
        opts += [key, str(value)]
    cmd = [
        python,
        os.path.join(REPO_ROOT, "tools", "train_net.py"),
        "--config-file", config,
        "--register-coco", "bench_train", train_json, os.path.join(data_root, "images", "train"),
        "--register-coco", "bench_test", test_json, os.path.join(data_root, "images", "test"),
        *opts,
    ]  # fmt: skip
    metrics_json = os.path.join(work_dir, "metrics.json")
    if os.path.exists(metrics_json):  # Detectron2 appends: a retried run must not read old records
        os.remove(metrics_json)
    start = time.perf_counter()
    with open(os.path.join(work_dir, "stdout.log"), "w") as log:
        proc = subprocess.run(
            cmd, stdout=None if verbose else log, stderr=subprocess.STDOUT, env=_env()
        )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"train_net.py exited with {proc.returncode}; see {work_dir}/stdout.log")
    metrics = _last_eval(metrics_json)
    return dict(
        seconds=seconds,
        sec_per_iter=metrics.get("_time", seconds / max(iters, 1)),
        f1=_pick(metrics, "sparse/f1", "sparse/F1"),
        precision=_pick(metrics, "sparse/precision"),
        recall=_pick(metrics, "sparse/recall"),
        ap=_pick(metrics, "bbox/AP") / 100.0,
        ap50=_pick(metrics, "bbox/AP50") / 100.0,
    )
