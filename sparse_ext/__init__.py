"""sparse_ext: training from partial annotations in Detectron2 and MMSegmentation.

Importing this package imports only the framework-agnostic core dependencies (torch, numpy).
Framework adapters live in :mod:`sparse_ext.detectron2` and :mod:`sparse_ext.mmseg`.
"""

__version__ = "0.1.0"
