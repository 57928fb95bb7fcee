"""Benchmark results: one CSV per task (one row per run), resumable; summary table; cost; plots.

A run is identified by ``(task, loss, fraction, seed, iters, mode)``: a row with these values
and ``status == "ok"`` in the CSV means the run is finished and the driver skips it. Failed runs
are recorded with ``status == "failed"`` and the error text, and are retried on the next call.

Cost is the seconds per training iteration of a run divided by that of the task's baseline
(``COST_BASELINE``: CE for seg and det) run in the same benchmark call (``session``) with the same
fraction and seed, averaged over a loss's runs: runs from different calls (another day, another
machine load) are never compared.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import math
import os
import tempfile
from collections import defaultdict
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "BASE_COLUMNS",
    "COST_BASELINE",
    "METRIC_COLUMNS",
    "PRIMARY_METRIC",
    "ResultsTable",
    "RunKey",
    "cost_ratios",
    "format_summary",
    "markdown_table",
    "paired_differences",
    "plot_task",
    "run_key",
    "summarise",
]

BASE_COLUMNS = (
    "task",
    "loss",
    "fraction",
    "seed",
    "iters",
    "mode",
    "status",
    "seconds",
    "sec_per_iter",
)
TAIL_COLUMNS = ("config", "overrides", "started_utc", "session", "error")
METRIC_COLUMNS: Dict[str, Tuple[str, ...]] = {
    # f_estimate / f_used: the annotated fraction the labelled data gave at 20 % of training and
    # the one the loss trained on after it (SparseLossAnnealingHook's check; blank: no check)
    "seg": (
        "dice",
        "iou",
        "aji",
        "object_f1",
        "object_precision",
        "object_recall",
        "f_estimate",
        "f_used",
    ),
    "det": (
        "f1",
        "precision",
        "recall",
        "ap",
        "ap50",
        "f1_valthr",
        "val_threshold",
        "average_recall",
        "average_precision",
        "best_f1",
        "val_recall",
        "val_average_recall",
        "val_f1",
    ),
    "lsr": ("dice", "iou", "masked_dice", "masked_iou"),
    "maxmin": ("f1_plus", "f1_minus", "cls_error", "dice"),
}
# The loss each task's cost (seconds per iteration) is divided by: the framework's default loss,
# the intra-instance LSR loss that Zhao, Hou et al. ("Label super resolution with inter-instance
# loss", arXiv 2019) improve on, max-min without the regulariser.
COST_BASELINE = {"seg": "ce", "det": "ce", "lsr": "intra", "maxmin": "none"}
PRIMARY_METRIC = {"seg": "dice", "det": "f1", "lsr": "masked_dice", "maxmin": "f1_plus"}
# Metrics drawn in the per-task plot (one panel each).
PLOT_METRICS = {
    "seg": ("dice", "aji", "object_f1"),
    "det": ("f1", "precision", "recall"),
    "lsr": ("masked_dice", "dice"),
    "maxmin": ("f1_plus", "f1_minus"),
}
RunKey = Tuple[str, str, int, int, int, str]


def columns(task: str) -> List[str]:
    if task not in METRIC_COLUMNS:
        raise KeyError(f"unknown task {task!r}; valid: {sorted(METRIC_COLUMNS)}")
    return [*BASE_COLUMNS, *METRIC_COLUMNS[task], *TAIL_COLUMNS]


def run_key(row: Mapping[str, object]) -> RunKey:
    """The run a CSV row (or a row about to be written) is: ``(task, loss, fraction, seed, iters,
    mode)``."""
    return (
        str(row["task"]),
        str(row["loss"]),
        int(row["fraction"]),
        int(row["seed"]),
        int(row["iters"]),
        str(row["mode"]),
    )


def _num(value: object) -> Optional[float]:
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


class ResultsTable:
    """The CSV of one task: read on creation, rewritten atomically after each added row.

    Several processes may fill one CSV (grids run side by side): each added row is merged into
    the file as it is on disk at that moment, under an exclusive lock (``.<name>.lock`` beside it),
    so no process drops another's rows."""

    def __init__(self, path: str, task: str) -> None:
        self.path = path
        self.task = task
        self.columns = columns(task)
        self.rows: List[Dict[str, str]] = self._read()

    def _read(self) -> List[Dict[str, str]]:
        if not os.path.isfile(self.path):
            return []
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"task", "loss", "fraction", "seed", "iters", "mode", "status"} - set(
                reader.fieldnames or ()
            )
            if missing:
                raise ValueError(f"{self.path} is not a benchmark CSV: missing {sorted(missing)}")
            return [dict(r) for r in reader]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        folder, name = os.path.split(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f".{name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def finished(self, key: RunKey) -> Optional[Dict[str, str]]:
        """The finished (status ok) row of a run (read from the file: another process may have
        finished it), or None."""
        self.rows = self._read()
        for row in self.rows:
            if row.get("status") == "ok" and run_key(row) == key:
                return row
        return None

    def add(self, row: Mapping[str, object]) -> None:
        """Add (or replace a failed attempt of) a run and rewrite the CSV atomically."""
        key = run_key(row)
        new = {c: _fmt(row.get(c, "")) for c in self.columns}
        with self._locked():
            self.rows = [r for r in self._read() if run_key(r) != key] + [new]
            self.write()

    def write(self) -> None:
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".csv")
        try:
            with os.fdopen(fd, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(self.rows)
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def ok_rows(self) -> List[Dict[str, str]]:
        return [r for r in self.rows if r.get("status") == "ok"]


#: The ``fraction`` of a detection run trained on one annotation per image patch (Zhao, Pang et
#: al., MICCAI 2021, Sect. 3.1) instead of a share of the annotations.
ONE_PER_PATCH = 0


def fraction_label(fraction: int) -> str:
    """A run's annotation level as tables print it: ``30%``, or ``1/patch`` for
    :data:`ONE_PER_PATCH`."""
    return "1/patch" if int(fraction) == ONE_PER_PATCH else f"{int(fraction)}%"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def cost_ratios(rows: Iterable[Mapping[str, str]], baseline: str = "ce") -> Dict[str, float]:
    """Per loss, the mean over its runs of seconds per iteration divided by the baseline run's of
    the same session, fraction and seed (NaN for a loss with no such pair)."""
    rows = list(rows)

    def pair(row: Mapping[str, str]) -> tuple:
        return (row.get("session") or "", str(row.get("fraction")), str(row.get("seed")))

    base = {pair(r): _num(r.get("sec_per_iter")) for r in rows if str(r.get("loss")) == baseline}
    per_loss: Dict[str, List[float]] = {}
    for row in rows:
        v, b = _num(row.get("sec_per_iter")), base.get(pair(row))
        per_loss.setdefault(str(row["loss"]), [])
        if v is not None and v > 0 and b:
            per_loss[str(row["loss"])].append(v / b)
    return {k: (sum(v) / len(v) if v else float("nan")) for k, v in per_loss.items()}


def summarise(
    rows: Iterable[Mapping[str, str]], metric: str
) -> Dict[str, Dict[int, Tuple[float, float, int]]]:
    """``{loss: {fraction: (mean, std, n)}}`` of a metric over seeds (population std)."""
    values: Dict[str, Dict[int, List[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        v = _num(row.get(metric))
        if v is not None:
            values[str(row["loss"])][int(row["fraction"])].append(v)
    out: Dict[str, Dict[int, Tuple[float, float, int]]] = {}
    for loss, by_frac in values.items():
        out[loss] = {}
        for frac, vals in sorted(by_frac.items()):
            mean = sum(vals) / len(vals)
            std = math.sqrt(sum((x - mean) ** 2 for x in vals) / len(vals))
            out[loss][frac] = (mean, std, len(vals))
    return out


def paired_differences(
    rows: Iterable[Mapping[str, str]], metric: str, baseline: str = "ce"
) -> Dict[str, Dict[int, float]]:
    """``{loss: {fraction: mean difference}}`` of a metric to ``baseline``'s, over the seeds both
    ran at that fraction, so that a loss run on fewer seeds meets the baseline on the same ones
    (a loss with no such seed is left out)."""
    values: Dict[Tuple[str, int, str], float] = {}
    for row in rows:
        v = _num(row.get(metric))
        if v is not None:
            values[(str(row["loss"]), int(row["fraction"]), str(row["seed"]))] = v
    diffs: Dict[str, Dict[int, List[float]]] = defaultdict(lambda: defaultdict(list))
    for (loss, fraction, seed), v in values.items():
        base = values.get((baseline, fraction, seed))
        if base is not None:
            diffs[loss][fraction].append(v - base)
    return {
        loss: {f: sum(d) / len(d) for f, d in sorted(by_frac.items())}
        for loss, by_frac in diffs.items()
    }


def format_summary(
    rows: Sequence[Mapping[str, str]], task: str, loss_order: Optional[Sequence[str]] = None
) -> str:
    """Plain-text table: one line per loss, the primary metric (mean over seeds) per fraction,
    and the cost relative to the task's baseline."""
    metric = PRIMARY_METRIC[task]
    table = summarise(rows, metric)
    if not table:
        return f"[{task}] no finished runs"
    fractions = sorted({f for by_frac in table.values() for f in by_frac})
    costs = cost_ratios(rows, COST_BASELINE[task])
    losses = [x for x in (loss_order or ()) if x in table] + sorted(
        x for x in table if x not in (loss_order or ())
    )
    width = max(len("loss"), *(len(x) for x in losses))
    cost_head = f"cost_vs_{COST_BASELINE[task]}"
    head = (
        f"{'loss':<{width}} "
        + " ".join(f"{fraction_label(f):>7}" for f in fractions)
        + f"  {cost_head}"
    )
    lines = [f"[{task}] {metric} on held-out frames (mean over seeds)", head]
    for loss in losses:
        cells = []
        for f in fractions:
            cell = table[loss].get(f)
            cells.append(f"{cell[0]:7.3f}" if cell else f"{'-':>7}")
        cost = costs.get(loss, float("nan"))
        lines.append(f"{loss:<{width}} " + " ".join(cells) + f"  {cost:{len(cost_head)}.2f}")
    return "\n".join(lines)


def markdown_table(
    rows: Sequence[Mapping[str, str]], task: str, loss_order: Optional[Sequence[str]] = None
) -> str:
    """Markdown table: one line per (loss, fraction) with the task's metrics (mean +- std over
    seeds when there are several), seconds per iteration and the cost relative to the task's
    baseline."""
    metrics = METRIC_COLUMNS[task]
    tables = {m: summarise(rows, m) for m in (*metrics, "sec_per_iter")}
    primary = tables[PRIMARY_METRIC[task]]
    costs = cost_ratios(rows, COST_BASELINE[task])
    losses = [x for x in (loss_order or ()) if x in primary] + sorted(
        x for x in primary if x not in (loss_order or ())
    )
    head = ["loss", "annotated %", "seeds", *metrics, "s/iter", f"cost vs {COST_BASELINE[task]}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for loss in losses:
        for frac in sorted(primary[loss]):
            cells = [loss, fraction_label(frac).rstrip("%"), str(primary[loss][frac][2])]
            for m in (*metrics, "sec_per_iter"):
                cell = tables[m].get(loss, {}).get(frac)
                if cell is None:
                    cells.append("-")
                elif cell[2] > 1:
                    cells.append(f"{cell[0]:.3f} ± {cell[1]:.3f}")
                else:
                    cells.append(f"{cell[0]:.3f}")
            cells.append(f"{costs.get(loss, float('nan')):.2f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_task(
    rows: Sequence[Mapping[str, str]],
    task: str,
    out_png: str,
    *,
    loss_order: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
) -> str:
    """Metric vs annotation % (one line per loss, mean over seeds, band = +- std), like Fig. 4 of
    Panteli et al. (ICCV 2021). One panel per metric in ``PLOT_METRICS[task]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = PLOT_METRICS[task]
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(4.4 * len(metrics) + 1.2, 3.8), squeeze=False
    )
    for ax, metric in zip(axes[0], metrics):
        table = summarise(rows, metric)
        losses = [x for x in (loss_order or ()) if x in table] + sorted(
            x for x in table if x not in (loss_order or ())
        )
        if len({f for by_frac in table.values() for f in by_frac}) == 1:
            # one annotation level (lsr, maxmin): one bar per loss, error bar = +- std
            cells = [next(iter(table[loss].values())) for loss in losses]
            ax.bar(
                range(len(losses)),
                [c[0] for c in cells],
                yerr=[c[1] for c in cells],
                color=[f"C{k}" for k in range(len(losses))],
                tick_label=losses,
            )
            plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
            ax.set_ylabel(metric)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3, axis="y")
            continue
        for k, loss in enumerate(losses):
            fracs = sorted(table[loss])
            mean = [table[loss][f][0] for f in fracs]
            std = [table[loss][f][1] for f in fracs]
            # distinct markers and dashes: several losses coincide (e.g. all collapse to 0)
            (line,) = ax.plot(
                fracs,
                mean,
                marker="osD^vP*Xh<>"[k % 11],
                linestyle=("-", "--", ":", "-.")[k % 4],
                markersize=7 - (k % 4),
                alpha=0.85,
                label=loss,
            )
            lo = [m - s for m, s in zip(mean, std)]
            hi = [m + s for m, s in zip(mean, std)]
            ax.fill_between(fracs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
        shown = sorted({f for by_frac in table.values() for f in by_frac})
        if ONE_PER_PATCH in shown:
            ax.set_xticks(shown, [fraction_label(f) for f in shown])
        ax.set_xlabel("annotated nuclei (%)")
        ax.set_ylabel(metric)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=8, loc="center right")
    fig.suptitle(title or f"{task}: held-out test frames")
    fig.tight_layout(rect=(0, 0, 0.89, 1))
    folder = os.path.dirname(os.path.abspath(out_png))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_png)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out_png
