import importlib

import pytest
import torch
from _frameworks import ci_is_set

# The CI machine has 2 cores; keep intra-op threads bounded so tests do not oversubscribe them.
torch.set_num_threads(2)

# What README's set-up command installs. Outside CI a missing framework skips its tests with an
# install hint (users may install only the core or only one adapter); in CI it is a failure.
FRAMEWORK_MODULES = (
    "torchvision",
    "mmcv.ops",
    "mmseg.models",
    "detectron2",
    "detectron2._C",
    "sparse_ext.mmseg",
    "sparse_ext.detectron2",
)


def pytest_sessionstart(session: pytest.Session) -> None:
    if not ci_is_set():
        return
    missing = []
    for name in FRAMEWORK_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # any import failure counts: ImportError, a broken extension, ...
            missing.append(f"{name} ({type(exc).__name__}: {exc})")
    if missing:
        raise pytest.UsageError(
            "CI is set but these modules do not import, so their tests would be skipped: "
            + "; ".join(missing)
            + ". Run `bash tools/setup_env.sh` (README, Set-up)."
        )


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
