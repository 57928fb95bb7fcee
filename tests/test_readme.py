"""README's loss examples run as written (blocks preceded by ``<!-- readme-example -->``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLES = re.findall(r"<!-- readme-example -->\n```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples() -> None:
    assert EXAMPLES, "README lost its <!-- readme-example --> blocks"


@pytest.mark.parametrize("code", EXAMPLES)
def test_readme_example_runs(code: str) -> None:
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    for name in ("ece", "ece_focal", "risk", "risk_sigmoid", "lsr", "eem", "sizes"):
        if name in namespace:
            assert torch.isfinite(namespace[name]).all(), name
    if "weights" in namespace:
        assert namespace["weights"].tolist() == [0.0, 1.0]
