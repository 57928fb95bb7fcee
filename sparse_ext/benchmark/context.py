"""One benchmark run's context: what the driver decided, handed to the task's runner.

The driver builds one :class:`RunContext` per (loss, annotation %, seed) of the grid; a task
module (``seg``, ``det``, ``lsr``, ``maxmin``) reads everything it needs from it, builds its
config, trains and scores the run. The fields that identify a run in the results CSV (and the
key that says it is finished) come from :meth:`RunContext.csv_fields` only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Tuple

from sparse_ext.benchmark.results import RunKey, fraction_label, run_key
from sparse_ext.benchmark.specs import LossSpec

__all__ = ["RunContext", "SetupError", "parse_run_folder", "run_folder_name"]


def run_folder_name(loss: str, fraction: int, seed: int) -> str:
    """The folder of one run under ``work_dirs/<task>/<dataset>``: ``<loss>_f<NNN>_s<seed>``."""
    return f"{loss}_f{int(fraction):03d}_s{int(seed)}"


def parse_run_folder(path: str) -> Tuple[str, int, int]:
    """(loss, annotation %, seed) of a run folder named by :func:`run_folder_name`.

    Raises:
        ValueError: the folder's name is not a run's.
    """
    name = os.path.basename(os.path.normpath(path))
    match = re.fullmatch(r"(.+)_f(\d{3})_s(\d+)", name)
    if match is None:
        raise ValueError(f"{path}: not a benchmark run folder (<loss>_f<NNN>_s<seed>)")
    return match.group(1), int(match.group(2)), int(match.group(3))


class SetupError(RuntimeError):
    """The benchmark cannot start here (e.g. the framework is missing); the message says why and
    what to do. Raised before any run, so no CSV row is written."""


@dataclass(frozen=True)
class RunContext:
    """Everything one run needs.

    Args:
        task: ``seg``, ``det``, ``lsr`` or ``maxmin``.
        spec: the loss: its config file and config overrides.
        fraction: annotation percentage of the training labels.
        seed: random seed of the run.
        iters: training iterations.
        mode: ``quick`` or ``full`` (the profile's name).
        profile: the task's run profile (``iters`` taken out); shared between runs, read only.
        data_root: the prepared dataset folder (``images/``, ``labels/``, ...).
        work_dir: the run's training logs.
        verbose: show the frameworks' logs.
        keep_predictions: seg only: return the predicted label maps with the row (the demo).
    """

    task: str
    spec: LossSpec
    fraction: int
    seed: int
    iters: int
    mode: str
    profile: Mapping[str, Any]
    data_root: str
    work_dir: str
    verbose: bool = False
    keep_predictions: bool = False

    @property
    def name(self) -> str:
        """The run's name (the work dir's), used for the frameworks' experiment names."""
        return os.path.basename(self.work_dir)

    @property
    def overrides(self) -> Dict[str, Any]:
        """The loss's config overrides at this run's annotation fraction."""
        return self.spec.overrides_for(self.fraction)

    @property
    def derived_data_dir(self) -> str:
        """Where a task keeps the data it derives from the dataset (LSR blocks, max-min tiles): one
        folder per dataset beside its runs' work dirs, shared by every run of the task on that
        dataset (named by the dataset folder and a hash of its path: two datasets never share)."""
        root = os.path.abspath(self.data_root)
        key = hashlib.sha1(root.encode()).hexdigest()[:8]
        return os.path.join(
            os.path.dirname(self.work_dir), "_data", f"{os.path.basename(root)}-{key}"
        )

    @property
    def label(self) -> str:
        """The run in a progress line, e.g. ``[seg] ece                30% seed 0``."""
        level = fraction_label(self.fraction)
        return f"[{self.task}] {self.spec.name:<12} {level:>7} seed {self.seed}"

    def csv_fields(self) -> Dict[str, Any]:
        """The CSV columns that say which run a row is (the run key among them)."""
        return dict(
            task=self.task,
            loss=self.spec.name,
            fraction=self.fraction,
            seed=self.seed,
            iters=self.iters,
            mode=self.mode,
            config=f"configs/{self.spec.config}" if self.spec.config else "",
            overrides=json.dumps({**self.overrides, "profile": dict(self.profile)}, sort_keys=True),
        )

    @property
    def key(self) -> RunKey:
        """``(task, loss, fraction, seed, iters, mode)``: a finished row with it is this run."""
        return run_key(self.csv_fields())
