"""Let mmengine checkpoints load under torch's ``weights_only=True`` default (torch >= 2.6).

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``, and its checkpoints hold, besides
tensors, the message hub's ``HistoryBuffer`` objects (numpy arrays and scalars, and the buffer's
statistics methods, which pickle stores as ``getattr(HistoryBuffer, "min")``). Saving and
resuming a real MMSeg run lists exactly these globals (``torch.serialization.
get_unsafe_globals_in_checkpoint``)::

    numpy.ndarray, numpy.dtype, numpy.dtypes.Float64DType, numpy.dtypes.Int64DType,
    numpy._core.multiarray._reconstruct, numpy._core.multiarray.scalar,
    mmengine.logging.history_buffer.HistoryBuffer, builtins.getattr

They are allow-listed with ``torch.serialization.add_safe_globals``; the safety check stays on.
``builtins.getattr`` is NOT allowed as such: the name is bound to a function that only returns
``HistoryBuffer``'s registered statistics methods and raises for anything else. Checkpoints
written under numpy 1.x name the numpy functions ``numpy.core.multiarray.*``; both spellings
map to the same functions.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable, List, Tuple, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

__all__ = ["allow_mmengine_checkpoints", "history_buffer_getattr"]

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray


_DEFAULT_STATISTICS = {"min", "max", "current", "mean"}  # HistoryBuffer._set_default_statistics


def history_buffer_getattr(owner: Any, name: str) -> Callable:
    """``getattr`` restricted to ``HistoryBuffer``'s statistics methods (how pickle stores the
    functions in ``HistoryBuffer._statistics_methods``)."""
    allowed = _DEFAULT_STATISTICS | set(HistoryBuffer._statistics_methods)
    if owner is HistoryBuffer and name in allowed:
        return getattr(owner, name)
    raise pickle.UnpicklingError(
        f"weights_only load: getattr({owner!r}, {name!r}) is not allow-listed "
        "(sparse_ext.mmseg allows HistoryBuffer statistics methods only)"
    )


def _safe_globals() -> List[Union[Callable, Tuple[Callable, str]]]:
    return [
        np.ndarray,
        np.dtype,
        type(np.dtype(np.float64)),  # numpy.dtypes.Float64DType: the logged values
        type(np.dtype(np.int64)),  # numpy.dtypes.Int64DType: their counts
        HistoryBuffer,
        (_multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
        (_multiarray.scalar, "numpy._core.multiarray.scalar"),
        (_multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        (_multiarray.scalar, "numpy.core.multiarray.scalar"),
        (history_buffer_getattr, "builtins.getattr"),
    ]


def allow_mmengine_checkpoints() -> None:
    """Allow-list the globals of mmengine checkpoints for ``torch.load(weights_only=True)``."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 has no weights_only default to satisfy
        add(_safe_globals())
