"""Config loading for ``tools/mmseg_train.py`` / ``tools/mmseg_test.py``: ``--cfg-options
data_root=...`` moves every path under the config's data root.

In an mmengine config ``data_root`` is a plain variable: the datasets (and the LSR loss's table
path) copy its value when the file is parsed, so overriding it afterwards changes nothing by
itself. ``load_config`` re-points every string of the config that equals the old root or lies
under it (``old/...``) to the new root.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from mmengine.config import Config

__all__ = ["load_config", "retarget_data_root"]


def _retarget(node: Any, old: str, new: str) -> int:
    n = 0
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in list(items):
        if isinstance(value, str):
            if value == old or value.startswith(old + "/") or value.startswith(old + os.sep):
                node[key] = new + value[len(old) :]
                n += 1
        elif isinstance(value, (dict, list)):
            n += _retarget(value, old, new)
    return n


def retarget_data_root(cfg: Config, old: str, new: str) -> int:
    """Replace the prefix ``old`` by ``new`` in every string of ``cfg`` that equals ``old`` or
    lies under it; returns how many strings changed."""
    old = old.rstrip("/")
    n = 0
    for key in list(cfg.keys()):
        value = cfg[key]
        if isinstance(value, str):
            if key != "data_root" and (value == old or value.startswith(old + "/")):
                cfg[key] = new + value[len(old) :]
                n += 1
        elif isinstance(value, (dict, list)):
            n += _retarget(value, old, new)
    return n


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """``Config.fromfile`` + ``merge_from_dict(cfg_options)``; a new ``data_root`` in the options
    is applied to every path under the config's old one (see the module docstring)."""
    cfg = Config.fromfile(path)
    old_root = cfg.get("data_root", None)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
        new_root = cfg_options.get("data_root")
        if new_root and old_root and str(new_root) != str(old_root):
            retarget_data_root(cfg, str(old_root), str(new_root).rstrip("/"))
    return cfg
