"""Detection runs: Detectron2 Faster R-CNN through ``tools/train_net.py``, in a subprocess.

A run calls the repository's ``tools/train_net.py`` with this interpreter (the project's
environment holds Detectron2) or, when ``SPARSE_EXT_D2_PYTHON`` is set, with that Python (for a
Detectron2 kept in an environment of its own), and reads the results that Detectron2's trainer
writes: ``metrics.json`` (COCOEvaluator AP and SparseDetectionEvaluator F1/precision/recall,
evaluated on the test split after the last iteration) and per-iteration times. The training set
is the COCO file of the annotation fraction from ``sparse-ext data fetch``
(``annotations/*frac{NNN}*.json``, or the exhaustive train file at 100 %); the test set is the
exhaustive test file. When the dataset has a validation split (``annotations/val.json`` and
``images/val``) it is evaluated too: the score threshold with the best validation F1
(``sparse/best_f1_threshold``) picks the test F1 reported as ``f1_valthr`` (F1 at the
validation-chosen threshold) and the validation recall, F1 and average recall are reported for
the selection of the nnPU prior (the paper's: by mean validation recall); every metric of a run is
also written to ``run_summary.json`` in its work folder.
"""

from __future__ import annotations

import ast
import glob
import importlib
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from sparse_ext.benchmark.context import RunContext, SetupError
from sparse_ext.benchmark.results import ONE_PER_PATCH
from sparse_ext.benchmark.specs import REPO_ROOT
from sparse_ext.data.patches import one_per_patch

__all__ = [
    "D2_PYTHON_ENV",
    "build_command",
    "check_environment",
    "detectron2_python",
    "find_coco",
    "find_val_split",
    "run",
]

D2_PYTHON_ENV = "SPARSE_EXT_D2_PYTHON"
_LOSS_KEYS = ("SPARSE.ROI_LOSS", "SPARSE.RPN_LOSS")


def _env() -> Dict[str, str]:
    """The training subprocess's environment: this one, the repository on the path, and this
    process's torch thread count (``--threads``) unless OMP_NUM_THREADS is set: a subprocess
    with torch's default (every core) beside another job on a 2-core machine ran 6x slower."""
    import torch

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    paths = [REPO_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def detectron2_python() -> str:
    """The Python that runs ``tools/train_net.py``: this interpreter, or ``SPARSE_EXT_D2_PYTHON``
    when set. Raises :class:`SetupError` (one message saying what to do) when it cannot import
    detectron2."""
    override = os.environ.get(D2_PYTHON_ENV)
    if not override:
        try:
            importlib.import_module("detectron2")
        except ImportError as exc:
            raise SetupError(
                f"the det benchmark needs Detectron2, which this Python ({sys.executable}) cannot "
                f"import ({exc}); install the project's environment (bash tools/setup_env.sh), or "
                f"set {D2_PYTHON_ENV} to a Python that has detectron2"
            ) from None
        return sys.executable
    try:
        probe = subprocess.run(
            [override, "-c", "import detectron2"], capture_output=True, text=True, env=_env()
        )
        problem = (probe.stderr.strip().splitlines() or [f"exit code {probe.returncode}"])[-1]
        ok = probe.returncode == 0
    except OSError as exc:
        problem, ok = repr(exc), False
    if not ok:
        raise SetupError(
            f"{D2_PYTHON_ENV}={override} cannot import detectron2 ({problem}); point it at a "
            "Python that has detectron2, or unset it to use this Python"
        )
    return override


def check_environment() -> None:
    """Called by the driver before the grid: fail at once, not once per run."""
    detectron2_python()


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


#: Patch side and overlap of the one-annotation-per-patch protocol (:data:`ONE_PER_PATCH`): the
#: quick profile's 256 px training crops; the annotations kept are drawn once (seed 0), as the
#: nested fractions are, so that every run and seed trains on the same labels.
PATCH, PATCH_OVERLAP, PATCH_SEED = 256, 0, 0


def training_coco(ctx: RunContext) -> str:
    """The training COCO file of a run: the dataset's file at the run's annotation fraction, or
    for :data:`ONE_PER_PATCH` one annotation per 256 px patch of the exhaustive training file
    (Zhao, Pang et al., MICCAI 2021, Sect. 3.1; ``sparse-ext convert one-per-patch``), written
    into the run's work dir with ``info.sparse_fraction`` = the share kept."""
    if ctx.fraction != ONE_PER_PATCH:
        return find_coco(ctx.data_root, "train", ctx.fraction)
    out = os.path.join(ctx.work_dir, f"train_one_per_patch{PATCH}.json")
    os.makedirs(ctx.work_dir, exist_ok=True)
    one_per_patch(
        find_coco(ctx.data_root, "train", 100),
        out,
        patch=PATCH,
        overlap=PATCH_OVERLAP,
        seed=PATCH_SEED,
        verbose=False,
    )
    return out


def find_val_split(data_root: str) -> Optional[Tuple[str, str]]:
    """``(COCO file, image folder)`` of the dataset's validation split, or None without one."""
    try:
        val_json = find_coco(data_root, "val", 100)
    except FileNotFoundError:
        return None
    images = os.path.join(data_root, "images", "val")
    return (val_json, images) if os.path.isdir(images) else None


def _is_eval_key(key: str) -> bool:
    # "bbox/AP" with one test dataset, "bench_test/bbox/AP" with several (Detectron2 prefixes
    # each dataset's results with its name)
    return key.startswith(("bbox/", "sparse/")) or "/bbox/" in key or "/sparse/" in key


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
            if any(_is_eval_key(k) for k in rec):
                out = {k: float(v) for k, v in rec.items() if isinstance(v, (int, float))}
    if times:
        out["_time"] = sum(times) / len(times)
    return out


def _dataset_metrics(metrics: Dict[str, float], name: str) -> Dict[str, float]:
    """The metrics of one evaluated dataset, without its ``name/`` prefix (unprefixed ones when
    only one dataset was evaluated)."""
    prefix = f"{name}/"
    mine = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}
    return mine or {k: v for k, v in metrics.items() if k.startswith(("bbox/", "sparse/"))}


def _f1_at_val_threshold(test: Dict[str, float], val: Dict[str, float]) -> Tuple[float, float]:
    """(validation's best threshold, the test F1 there); NaNs without a validation result."""
    threshold = val.get("sparse/best_f1_threshold", float("nan"))
    if math.isnan(threshold):
        return threshold, float("nan")
    return threshold, test.get(f"sparse/f1@{threshold:g}", float("nan"))


def _pick(metrics: Dict[str, float], *names: str) -> float:
    for name in names:
        if name in metrics:
            return metrics[name]
    return float("nan")


def objects_per_crop(ctx: RunContext) -> float:
    """Mean number of objects in a training crop of the profile's size (``INPUT.CROP.SIZE``, else
    the :data:`PATCH` side), from the exhaustive training file (the data's density, whatever
    share of it is annotated), else from the run's own training file."""
    try:
        path = find_coco(ctx.data_root, "train", 100)
    except FileNotFoundError:
        path = find_coco(ctx.data_root, "train", ctx.fraction)
    with open(path) as f:
        coco = json.load(f)
    area = sum(float(im["width"]) * float(im["height"]) for im in coco["images"])
    crop = ctx.profile.get("opts", {}).get("INPUT.CROP.SIZE")
    height, width = ast.literal_eval(crop) if crop else (PATCH, PATCH)
    return len(coco["annotations"]) * height * width / area if area else 0.0


def scale_jitter_opts(opts: Dict[str, Any], max_scale: float) -> Dict[str, Any]:
    """Multi-scale training (Detectron2's ``MIN_SIZE_TRAIN`` choice, as its COCO recipes do): the
    training crop resized to a short side drawn from 1, 1.25, ... and ``max_scale`` x the
    profile's."""
    if not max_scale >= 1.0:
        raise ValueError(
            f"scale jitter must be at least 1 (a factor up from the crop), got {max_scale}"
        )
    if "INPUT.MIN_SIZE_TRAIN" not in opts:
        raise ValueError(
            "scale jitter is for the quick profile (its training crops); the full profile's "
            "recipe configs set their own INPUT.MIN_SIZE_TRAIN"
        )
    (side,) = ast.literal_eval(str(opts["INPUT.MIN_SIZE_TRAIN"]))[:1]
    factors = [1.0 + 0.25 * i for i in range(int((max_scale - 1.0) / 0.25 + 1e-9) + 1)]
    if factors[-1] < max_scale - 1e-9:  # MAX off the 0.25 grid is drawn too
        factors.append(max_scale)
    sizes = [round(side * f) for f in factors]
    return {
        "INPUT.MIN_SIZE_TRAIN": str(tuple(sizes)),
        "INPUT.MAX_SIZE_TRAIN": sizes[-1],
    }


def build_command(ctx: RunContext, python: str) -> List[str]:
    """The ``tools/train_net.py`` command line of a run: the loss's config (or, with the full
    profile's ``recipe_configs``, its R50-FPN recipe), the datasets, the budget, the profile's
    and the loss's options."""
    train_json = training_coco(ctx)
    test_json = find_coco(ctx.data_root, "test", 100)
    val = find_val_split(ctx.data_root)
    opts = [
        "DATASETS.TRAIN", "('bench_train',)",
        "DATASETS.TEST", "('bench_val', 'bench_test')" if val else "('bench_test',)",
        "SOLVER.MAX_ITER", str(ctx.iters),
        "SEED", str(ctx.seed),
        "OUTPUT_DIR", ctx.work_dir,
    ]  # fmt: skip
    spec = ctx.spec
    config, overrides = spec.config_path, ctx.overrides
    if ctx.profile.get("recipe_configs"):
        # the loss's R50-FPN recipe (its RPN loss included), with the spec's other options
        roi_loss = overrides.get("MODEL.SPARSE.ROI_LOSS", spec.name)
        config = os.path.join(
            REPO_ROOT, "configs", "detectron2", f"faster_rcnn_R_50_FPN_{roi_loss}.yaml"
        )
        overrides = {k: v for k, v in overrides.items() if not k.endswith(_LOSS_KEYS)}
    profile_opts = dict(ctx.profile.get("opts", {}))
    if ctx.profile.get("scale_jitter"):
        profile_opts.update(scale_jitter_opts(profile_opts, ctx.profile["scale_jitter"]))
    dense = ctx.profile.get("dense")
    if dense and objects_per_crop(ctx) > dense["objects_per_crop"]:
        profile_opts.update(dense["opts"])
    for key, value in {**profile_opts, **overrides}.items():
        opts += [key, str(value)]
    images = os.path.join(ctx.data_root, "images")
    register_val = ["--register-coco", "bench_val", *val] if val else []
    return [
        python,
        os.path.join(REPO_ROOT, "tools", "train_net.py"),
        "--config-file", config,
        "--register-coco", "bench_train", train_json, os.path.join(images, "train"),
        "--register-coco", "bench_test", test_json, os.path.join(images, "test"),
        *register_val,
        *opts,
    ]  # fmt: skip


def run(ctx: RunContext) -> Dict[str, Any]:
    """Train and evaluate one Faster R-CNN run; returns seconds, sec/iter and the metrics."""
    cmd = build_command(ctx, detectron2_python())
    work_dir = ctx.work_dir
    os.makedirs(work_dir, exist_ok=True)
    metrics_json = os.path.join(work_dir, "metrics.json")
    if os.path.exists(metrics_json):  # Detectron2 appends: a retried run must not read old records
        os.remove(metrics_json)
    start = time.perf_counter()
    with open(os.path.join(work_dir, "stdout.log"), "w") as log:
        proc = subprocess.run(
            cmd, stdout=None if ctx.verbose else log, stderr=subprocess.STDOUT, env=_env()
        )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"train_net.py exited with {proc.returncode}; see {work_dir}/stdout.log")
    metrics = _last_eval(metrics_json)
    test = _dataset_metrics(metrics, "bench_test")
    val = _dataset_metrics(metrics, "bench_val") if find_val_split(ctx.data_root) else {}
    threshold, f1_valthr = _f1_at_val_threshold(test, val)
    result = dict(
        seconds=seconds,
        sec_per_iter=metrics.get("_time", seconds / max(ctx.iters, 1)),
        f1=_pick(test, "sparse/f1", "sparse/F1"),
        precision=_pick(test, "sparse/precision"),
        recall=_pick(test, "sparse/recall"),
        ap=_pick(test, "bbox/AP") / 100.0,
        ap50=_pick(test, "bbox/AP50") / 100.0,
        f1_valthr=f1_valthr,
        val_threshold=threshold,
        average_recall=_pick(test, "sparse/average_recall"),
        average_precision=_pick(test, "sparse/average_precision"),
        best_f1=_pick(test, "sparse/best_f1"),
        # validation metrics: the paper selects pi by mean recall on validation
        val_recall=_pick(val, "sparse/recall"),
        val_average_recall=_pick(val, "sparse/average_recall"),
        val_f1=_pick(val, "sparse/f1"),
    )
    with open(os.path.join(work_dir, "run_summary.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result
