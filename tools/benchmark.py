#!/usr/bin/env python
"""Same as ``sparse-ext benchmark``: train each (loss, annotation %, seed) and score it.

Example (quick CPU run on CTC HeLa prepared by ``sparse-ext data fetch hela --dest data``)::

    python tools/benchmark.py --data data --task seg --fractions 10,30,100 \\
        --losses ce,focal,ece,nnpu --seeds 0 --quick --out docs/benchmarks
"""

from __future__ import annotations

import sys

from sparse_ext.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
