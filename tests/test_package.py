"""Packaging promises: the core imports no framework, the console script works."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import sparse_ext
from sparse_ext.cli import main

FRAMEWORKS = ("detectron2", "mmengine", "mmcv", "mmseg", "mmdet", "torchvision")


@pytest.mark.parametrize(
    "module",
    ["sparse_ext", "sparse_ext.losses", "sparse_ext.metrics", "sparse_ext.data", "sparse_ext.cli"],
)
def test_core_imports_no_framework(module: str) -> None:
    code = (
        f"import json, sys; import {module}; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"sparse_ext {sparse_ext.__version__}"


def test_loss_demo_prints_ce_and_ece(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["loss-demo", "--seed", "0"]) == 0
    out = capsys.readouterr().out.lower()
    assert "ece" in out and "ce" in out


def test_unknown_subcommand_is_an_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2
