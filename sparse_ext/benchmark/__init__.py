"""Benchmark of sparse_ext's losses against the frameworks' baselines, and the README's demo.

``sparse-ext benchmark`` (:func:`run_benchmark`) trains each (loss, annotation %, seed) through
the framework's own training loop with the repository's configs and scores it on held-out
frames against the exhaustive reference; ``sparse-ext demo`` (:func:`run_demo`) is the short
CE-vs-ECE comparison on CTC HeLa that the README gives as its main job. Framework imports happen
inside the runners, so importing this package stays light.
"""

from sparse_ext.benchmark.demo import run_demo
from sparse_ext.benchmark.driver import run_benchmark

__all__ = ["run_benchmark", "run_demo"]
