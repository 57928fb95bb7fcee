#!/usr/bin/env bash
# Create .venv with sparse_ext's reference stack for BOTH frameworks (README's set-up command).
#   bash tools/setup_env.sh            # idempotent: a second run only checks and exits
# Honours PIP_FIND_LINKS (space-separated folders/URLs of prebuilt wheels: mmcv 2.1.0, Detectron2).
# TORCH_SPEC overrides the torch/torchvision pair, e.g. PyTorch's CPU wheels (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
# "===" is an exact match: a local "2.13.0+cpu" build (offered first by some find-links) is not taken,
# because the registry's torchvision 0.28.0 fails to load its ops beside it.
TORCH_SPEC=${TORCH_SPEC:-"torch===2.13.0 torchvision===0.28.0"}
D2_COMMIT=02b5c4e295e990042a714712c21dc79b731e8833  # Detectron2 upstream main, 2026-06-06
# Where to build Detectron2 from when no prebuilt wheel is found (a local clone works offline).
D2_SOURCE=${D2_SOURCE:-"git+https://github.com/facebookresearch/detectron2.git@$D2_COMMIT"}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.sparse_ext_setup"
want=$( (cat tools/setup_env.sh pyproject.toml; echo "$TORCH_SPEC") | sha256sum | cut -d' ' -f1)
verify() {
  "$PY" - <<'PY'
import detectron2, detectron2._C, mmcv, mmcv.ops, mmengine, mmseg, mmseg.models, torch, torchvision  # noqa: F401
import sparse_ext, sparse_ext.detectron2, sparse_ext.mmseg  # noqa: F401
from torchvision.ops import nms
nms(torch.zeros(1, 4), torch.ones(1), 0.5)
print(f"[setup] ok: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"mmcv {mmcv.__version__}, mmengine {mmengine.__version__}, mmseg {mmseg.__version__}, "
      f"detectron2 {detectron2.__version__}, sparse_ext {sparse_ext.__version__}")
PY
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && verify 2>/dev/null; then
  echo "[setup] $VENV is up to date (delete $stamp to force a re-install)"
  exit 0
fi
pipi() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }
# The torch/torchvision pair alone is about 5 GB once installed, and pip unpacks it in TMPDIR first:
# say so before pip fails with a bare "No space left on device".
for where in "$VENV" "${TMPDIR:-/tmp}"; do
  free_gb=$(df -Pk "$where" 2>/dev/null | awk 'NR == 2 {print int($4 / 1048576)}')
  if [ -n "$free_gb" ] && [ "$free_gb" -lt 10 ]; then
    echo "[setup] WARNING: only $free_gb GB free where $where is; the set-up needs about 10 GB" >&2
  fi
done
find_wheel() {  # find_wheel PATTERN: first folder of PIP_FIND_LINKS holding a file matching PATTERN
  for d in ${PIP_FIND_LINKS:-}; do
    ls "$d"/$1 >/dev/null 2>&1 && echo "$d" && return 0
  done
  return 0
}

# Build tooling first: torch 2.13 declares setuptools>=77; mmcv and detectron2.model_zoo import
# pkg_resources (<81).
pipi "setuptools>=77,<81" wheel ninja
# torch and torchvision as ONE matched pair (the registry's builds; they run on a CPU).
# shellcheck disable=SC2086
pipi $TORCH_SPEC

# mmcv 2.1.0 with compiled ops: source-only on the registry and it cannot build under build isolation.
if ! "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" >/dev/null 2>&1; then
  found=$(find_wheel 'mmcv-2.1.0-*.whl')
  if [ -n "$found" ]; then
    echo "[setup] installing mmcv 2.1.0 from the prebuilt wheel in $found"
  else
    echo "[setup] no prebuilt mmcv 2.1.0 wheel in PIP_FIND_LINKS: building mmcv from source." >&2
    echo "[setup] THIS TAKES A LONG TIME (about 30 minutes on 2 cores). To skip it, point PIP_FIND_LINKS" >&2
    echo "[setup] at a folder holding mmcv-2.1.0-cp311-*.whl, or use OpenMMLab's prebuilt wheels (see README)." >&2
  fi
  MAX_JOBS=${MAX_JOBS:-2} pipi --no-build-isolation "mmcv==2.1.0"
fi

# Pinned to the versions this project is tested with.
pipi "mmengine==0.10.7" "mmsegmentation==1.2.2" "ftfy==6.3.1" "regex==2026.11.19" "numpy==2.4.6" \
  "pycocotools==2.0.11" "scipy==1.17.1" "scikit-image==0.26.0" "matplotlib==3.11.2" "tifffile==2026.3.3"
# Detectron2's runtime dependencies, pinned to the tested versions.
pipi "fvcore==0.1.5.post20221221" "iopath==0.1.9" "omegaconf==2.3.0" "hydra-core==1.3.2" "yacs==0.1.8" \
  "cloudpickle==3.1.2" "tabulate==0.9.0" "termcolor==3.2.0" "tqdm==4.67.1" "tensorboard==2.20.0" \
  "black==25.11.0" "Pillow==12.0.0"

# Detectron2 publishes no wheels for current torch: a prebuilt one from PIP_FIND_LINKS, else upstream source.
if ! "$PY" -c "import detectron2, detectron2._C" >/dev/null 2>&1; then
  found=$(find_wheel 'detectron2-*.whl')
  if [ -n "$found" ]; then
    echo "[setup] installing Detectron2 from the prebuilt wheel in $found"
    pipi --no-deps detectron2
  else
    echo "[setup] no prebuilt Detectron2 wheel in PIP_FIND_LINKS: building Detectron2 from $D2_SOURCE" >&2
    echo "[setup] (3-7 minutes on 2 cores; needs git and a C++ compiler). To skip it, point PIP_FIND_LINKS" >&2
    echo "[setup] at a folder holding detectron2-*.whl (see README)." >&2
    MAX_JOBS=${MAX_JOBS:-2} pipi --no-deps --no-build-isolation "$D2_SOURCE"
  fi
fi

# openmim 0.3.9 pins old setuptools/requests through openxlab: install it without its deps.
pipi --no-deps "openmim==0.3.9"
pipi Click colorama model-index pandas requests rich tabulate
# Reference ECE implementation (test-only parity check); it pins torch~=1.9, so no deps.
pipi --no-deps "ece-loss==1.0.0"
pipi -e ".[test,mmseg,detectron2]"

verify
echo "$want" > "$stamp"
