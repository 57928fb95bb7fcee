"""``sparse-ext benchmark``: every (loss, fraction, seed) of a task through the framework's own
training loop, one CSV row per run (resumable), a progress line per run, a summary table with
the cost relative to the task's baseline (CE for seg and det), and a plot of the metrics vs
annotation % (per loss for lsr and maxmin, whose labels cover every block / image)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from sparse_ext.benchmark.results import (
    METRIC_COLUMNS,
    PRIMARY_METRIC,
    ResultsTable,
    format_summary,
    markdown_table,
    plot_task,
)
from sparse_ext.benchmark.specs import NO_FRACTIONS, LossSpec, parse_losses, profile_for

__all__ = ["run_benchmark", "run_one"]


def _dataset_root(data: str, dataset: str) -> str:
    root = os.path.join(data, dataset)
    if not os.path.isdir(os.path.join(root, "images")):
        raise FileNotFoundError(
            f"no prepared dataset at {root} (expected {root}/images/...); run "
            f"`sparse-ext data fetch {dataset} --dest {data}` first"
        )
    return root


def _detectron2_available() -> bool:
    from sparse_ext.benchmark.det import detectron2_python

    return detectron2_python() is not None


def run_one(
    task: str,
    spec: LossSpec,
    data_root: str,
    fraction: int,
    seed: int,
    iters: int,
    work_dir: str,
    profile: Dict[str, Any],
    *,
    verbose: bool = False,
    keep_predictions: bool = False,
) -> Dict[str, Any]:
    """Train and evaluate one run; returns the CSV row (``predictions`` added on request)."""
    import torch

    torch.manual_seed(seed)
    if task == "seg":
        from sparse_ext.benchmark.seg import build_seg_config, train_and_evaluate

        name = os.path.basename(work_dir)
        cfg = build_seg_config(
            spec.config_path,
            data_root,
            fraction,
            seed,
            iters,
            work_dir,
            profile=profile,
            overrides=spec.overrides_for(fraction),
            name=name,
        )
        result = train_and_evaluate(cfg, data_root, verbose=verbose)
        row: Dict[str, Any] = dict(
            seconds=result.seconds, sec_per_iter=result.sec_per_iter, **result.metrics
        )
        if keep_predictions:
            row["predictions"] = result.predictions
        return row
    if task == "det":
        from sparse_ext.benchmark.det import train_and_evaluate_det

        result = train_and_evaluate_det(
            spec, data_root, fraction, seed, iters, work_dir, profile=profile, verbose=verbose
        )
        return dict(result)
    if task == "lsr":
        from sparse_ext.benchmark.lsr import train_and_evaluate_lsr

        return train_and_evaluate_lsr(
            spec, data_root, seed, iters, work_dir, profile=profile, verbose=verbose
        )
    if task == "maxmin":
        from sparse_ext.benchmark.maxmin import train_and_evaluate_maxmin

        return train_and_evaluate_maxmin(
            spec, data_root, seed, iters, work_dir, profile=profile, verbose=verbose
        )
    raise KeyError(f"unknown task {task!r}")


def run_benchmark(
    data: str,
    task: str = "seg",
    *,
    dataset: str = "hela",
    fractions: Sequence[int] = (10, 30, 50, 100),
    losses: Optional[Sequence[str]] = None,
    seeds: Sequence[int] = (0,),
    iters: Optional[int] = None,
    quick: bool = True,
    out: str = "benchmark_out",
    work_dirs: str = os.path.join("work_dirs", "benchmark"),
    profile_overrides: Optional[Dict[str, Any]] = None,
    verbose: bool = False,
    log: Callable[[str], None] = print,
) -> List[Dict[str, str]]:
    """Run the benchmark of one task; returns the finished CSV rows of this call's runs.

    Writes ``out/<task>.csv`` (one row per run; finished runs are skipped on a second call)
    and ``out/<task>.png``, and prints a progress line per run and a summary table. Training
    logs go to ``work_dirs/<task>/<loss>_f<NNN>_s<seed>/`` (no checkpoints are kept).
    """
    specs = parse_losses(task, losses)
    for f in fractions:
        if not 0 < int(f) <= 100:
            raise ValueError(f"fractions must be in 1..100, got {f}")
    if task == "det" and not _detectron2_available():
        log(
            "[det] skipped: detectron2 is not importable (install it from "
            "https://github.com/facebookresearch/detectron2, or point SPARSE_EXT_D2_PYTHON at "
            "a Python that has it, and rerun); no rows written"
        )
        return []
    if task in NO_FRACTIONS and list(fractions) != [100]:
        log(f"[{task}] every block/image is labelled: runs use fraction 100 only")
        fractions = [100]
    data_root = _dataset_root(data, dataset)
    profile = profile_for(task, quick)
    profile.update(profile_overrides or {})
    n_iters = int(iters or profile.pop("iters"))
    profile.pop("iters", None)
    mode = "quick" if quick else "full"
    table = ResultsTable(os.path.join(out, f"{task}.csv"), task)
    runs = [(f, s, spec) for f in fractions for s in seeds for spec in specs]
    metric = PRIMARY_METRIC[task]
    session = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")  # cost pairs
    done: List[Dict[str, str]] = []
    for i, (fraction, seed, spec) in enumerate(runs, 1):
        tag = f"[{i}/{len(runs)}] {task} {spec.name:<12} {fraction:>3}% seed {seed}"
        key = (task, spec.name, int(fraction), int(seed), n_iters, mode)
        previous = table.finished(key)
        if previous is not None:
            log(f"{tag}: done before ({metric} {float(previous[metric]):.3f}), skipped")
            done.append(previous)
            continue
        work_dir = os.path.join(work_dirs, task, f"{spec.name}_f{fraction:03d}_s{seed}")
        row: Dict[str, Any] = dict(
            task=task,
            loss=spec.name,
            fraction=fraction,
            seed=seed,
            iters=n_iters,
            mode=mode,
            config=f"configs/{spec.config}" if spec.config else "",
            overrides=json.dumps(
                {**spec.overrides_for(fraction), "profile": profile}, sort_keys=True
            ),
            started_utc=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            session=session,
        )
        t0 = time.perf_counter()
        try:
            row.update(
                run_one(
                    task,
                    spec,
                    data_root,
                    fraction,
                    seed,
                    n_iters,
                    work_dir,
                    profile,
                    verbose=verbose,
                )
            )
            row["status"] = "ok"
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # recorded and retried on the next call
            row.update(status="failed", seconds=time.perf_counter() - t0, error=repr(exc)[:300])
            table.add(row)
            log(f"{tag}: FAILED after {row['seconds']:.0f} s: {exc!r}")
            continue
        table.add(row)
        done.append(table.finished(key))
        metrics = " ".join(
            f"{m} {row[m]:.3f}" for m in METRIC_COLUMNS[task] if isinstance(row.get(m), float)
        )
        log(f"{tag}: {metrics} | {row['seconds']:.0f} s, {row['sec_per_iter']:.3f} s/iter")
    # summary over every finished run in the CSV with this budget (earlier calls included)
    rows = [r for r in table.ok_rows() if r["mode"] == mode and int(r["iters"]) == n_iters]
    order = [s.name for s in specs]
    log(format_summary(rows, task, loss_order=order))
    if rows:
        png = plot_task(rows, task, os.path.join(out, f"{task}.png"), loss_order=order)
        md = os.path.join(out, f"{task}_table.md")
        with open(md, "w") as f:
            f.write(markdown_table(rows, task, loss_order=order) + "\n")
        log(f"[{task}] results: {table.path}, table: {md}, plot: {png}")
    return done
