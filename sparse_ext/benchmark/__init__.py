"""Benchmark of sparse_ext's losses against the frameworks' baselines, and the README's demo.

``sparse-ext benchmark`` (:func:`run_benchmark`) trains each (loss, annotation %, seed) through
the framework's own training loop with the repository's configs and scores it on held-out
frames against the exhaustive reference; ``sparse-ext demo`` (:func:`run_demo`) is the short
CE-vs-ECE comparison on CTC HeLa that the README gives as its main job. Each run gets one
:class:`RunContext`; a task is one module (``seg``, ``det``, ``lsr``, ``maxmin``) that builds its
config from it and scores the run. Framework imports happen inside the task modules' functions,
so importing this package stays light.
"""

from sparse_ext.benchmark.context import RunContext, SetupError
from sparse_ext.benchmark.demo import run_demo
from sparse_ext.benchmark.driver import run_benchmark

__all__ = ["RunContext", "SetupError", "run_benchmark", "run_demo"]
