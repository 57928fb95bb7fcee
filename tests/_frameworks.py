"""Framework availability for the tests: skip with an install hint for users, fail under CI.

Users may install only the core or only one adapter, so a test module of a framework that does not
import skips with the hint. CI installs both frameworks (README set-up): there a missing one must
fail the run instead of silently skipping its tests.
"""

from __future__ import annotations

import importlib
import os

import pytest

DETECTRON2_HINT = (
    "detectron2 is not installed: run `bash tools/setup_env.sh` (README), or install it from source: "
    "pip install 'git+https://github.com/facebookresearch/detectron2.git' (see docs/detectron2.md)"
)
MMSEG_HINT = (
    "needs MMSegmentation 1.x: run `bash tools/setup_env.sh` (README) or pip install -e .[mmseg]"
)


def ci_is_set() -> bool:
    """True where the CI environment variable is set to anything but '', 0, false or no."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(*modules: str, hint: str) -> None:
    """Import ``modules``; where one fails, skip the calling test module with ``hint``, or fail
    (pytest.fail at collection) when CI is set."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            if ci_is_set():
                pytest.fail(f"CI is set: {name} must import, and it does not ({e}). {hint}", False)
            pytest.skip(f"{hint} ({e})", allow_module_level=True)
