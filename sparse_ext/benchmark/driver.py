"""``sparse-ext benchmark``: every (loss, fraction, seed) of a task through the framework's own
training loop, one CSV row per run (resumable), a progress bar over the grid (runs done / total,
elapsed, ETA) and a line per run, a summary table with the cost relative to the task's baseline
(CE for seg and det), and a plot of the metrics vs annotation % (per loss for lsr and maxmin,
whose labels cover every block / image).

A task is a module of this package named after it (``seg``, ``det``, ``lsr``, ``maxmin``) with
``run(ctx: RunContext) -> dict`` (``seconds``, ``sec_per_iter`` and the task's metric columns)
and, optionally, ``check_environment()``, called once before the grid; its losses and profiles
are in :mod:`~sparse_ext.benchmark.specs`, its metric columns in
:mod:`~sparse_ext.benchmark.results`.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import os
import time
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional, Sequence

from sparse_ext.benchmark.context import RunContext, run_folder_name
from sparse_ext.benchmark.results import (
    METRIC_COLUMNS,
    ONE_PER_PATCH,
    PRIMARY_METRIC,
    ResultsTable,
    format_summary,
    fraction_label,
    markdown_table,
    plot_task,
)
from sparse_ext.benchmark.specs import (
    DEFAULT_FRACTIONS,
    NO_FRACTIONS,
    TASKS,
    parse_losses,
    run_profile,
)

__all__ = ["run_benchmark", "run_one", "task_module"]


def _dataset_root(data: str, dataset: str) -> str:
    root = os.path.join(data, dataset)
    if not os.path.isdir(os.path.join(root, "images")):
        raise FileNotFoundError(
            f"no prepared dataset at {root} (expected {root}/images/...); run "
            f"`sparse-ext data fetch {dataset} --dest {data}` first"
        )
    return root


def task_module(task: str) -> ModuleType:
    """The module that runs a task (imported on first use: it may import a framework)."""
    if task not in TASKS:
        raise KeyError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    return importlib.import_module(f"sparse_ext.benchmark.{task}")


def run_one(ctx: RunContext) -> Dict[str, Any]:
    """Train and evaluate one run; returns the CSV row's results (``seconds``, ``sec_per_iter``,
    the metrics; ``predictions`` too for a seg run with ``keep_predictions``)."""
    import torch

    torch.manual_seed(ctx.seed)
    return task_module(ctx.task).run(ctx)


def _run_and_record(
    ctx: RunContext, table: ResultsTable, session: str, log: Callable[[str], None]
) -> None:
    """One run of the grid: its CSV row (failed runs too, with the error) and its log line."""
    row: Dict[str, Any] = dict(
        ctx.csv_fields(),
        started_utc=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        session=session,
    )
    t0 = time.perf_counter()
    try:
        row.update(run_one(ctx))
        row["status"] = "ok"
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # recorded and retried on the next call
        row.update(status="failed", seconds=time.perf_counter() - t0, error=repr(exc)[:300])
        table.add(row)
        log(f"{ctx.label}: FAILED after {row['seconds']:.0f} s: {exc!r}")
        return
    table.add(row)
    metrics = " ".join(
        f"{m} {row[m]:.3f}" for m in METRIC_COLUMNS[ctx.task] if isinstance(row.get(m), float)
    )
    log(f"{ctx.label}: {metrics} | {row['seconds']:.0f} s, {row['sec_per_iter']:.3f} s/iter")


def run_benchmark(
    data: str,
    task: str = "seg",
    *,
    dataset: str = "hela",
    fractions: Sequence[int] = DEFAULT_FRACTIONS,
    losses: Optional[Sequence[str]] = None,
    seeds: Sequence[int] = (0,),
    iters: Optional[int] = None,
    quick: bool = True,
    out: str = "benchmark_out",
    work_dirs: str = os.path.join("work_dirs", "benchmark"),
    profile_overrides: Optional[Dict[str, Any]] = None,
    verbose: bool = False,
    log: Optional[Callable[[str], None]] = None,
) -> List[Dict[str, str]]:
    """Run the benchmark of one task; returns the finished CSV rows of this call's runs.

    Writes ``out/<task>.csv`` (one row per run; finished runs are skipped on a second call)
    and ``out/<task>.png``, shows a progress bar over the runs (stderr) and logs a line per run
    and a summary table (``log``, default: stdout below the bar). Training logs go to
    ``work_dirs/<task>/<dataset>/<loss>_f<NNN>_s<seed>/`` (no checkpoints are kept). Raises
    :class:`~sparse_ext.benchmark.context.SetupError` before any run when the task's framework
    is missing.
    """
    from tqdm import tqdm

    log = log or tqdm.write
    specs = parse_losses(task, losses)
    for f in fractions:
        if task == "det" and int(f) == ONE_PER_PATCH:
            continue
        if not 0 < int(f) <= 100:
            raise ValueError(
                f"fractions must be in 1..100 (detection also {ONE_PER_PATCH}: one annotation "
                f"per patch), got {f}"
            )
    if (profile_overrides or {}).get("scale_jitter") and task != "det":
        raise ValueError(f"scale_jitter (multi-scale training) is for task 'det', not {task!r}")
    check_environment = getattr(task_module(task), "check_environment", None)
    if check_environment is not None:
        check_environment()
    if task in NO_FRACTIONS and list(fractions) != [100]:
        log(f"[{task}] every block/image is labelled: runs use fraction 100 only")
        fractions = [100]
    data_root = _dataset_root(data, dataset)
    profile, n_iters = run_profile(task, quick, profile_overrides, iters)
    mode = "quick" if quick else "full"
    grid = (
        RunContext(
            task=task,
            spec=spec,
            fraction=int(fraction),
            seed=int(seed),
            iters=n_iters,
            mode=mode,
            profile=profile,
            data_root=data_root,
            work_dir=os.path.join(
                work_dirs, task, dataset, run_folder_name(spec.name, fraction, seed)
            ),
            verbose=verbose,
        )
        for fraction in fractions
        for seed in seeds
        for spec in specs
    )
    runs = list({ctx.key: ctx for ctx in grid}.values())  # a run listed twice runs once
    table = ResultsTable(os.path.join(out, f"{task}.csv"), task)
    metric = PRIMARY_METRIC[task]
    pending: List[RunContext] = []
    for ctx in runs:
        previous = table.finished(ctx.key)
        if previous is None:
            pending.append(ctx)
        else:
            log(f"{ctx.label}: done before ({metric} {float(previous[metric]):.3f}), skipped")
    session = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")  # cost pairs
    # runs done before count as done; elapsed time and ETA are this call's runs only
    with tqdm(
        total=len(runs), initial=len(runs) - len(pending), desc=f"[{task}] runs", unit="run"
    ) as bar:
        for ctx in pending:
            bar.set_postfix_str(f"{ctx.spec.name} {fraction_label(ctx.fraction)} seed {ctx.seed}")
            _run_and_record(ctx, table, session, log)
            bar.update()
    done = [row for row in (table.finished(ctx.key) for ctx in runs) if row is not None]
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
