#!/usr/bin/env bash
# Create .venv and install sparse_ext's reference stack (README's set-up command).
#   bash tools/setup_env.sh            # idempotent: a second run only checks and exits
# Honours PIP_FIND_LINKS (space-separated folders/URLs of prebuilt wheels, e.g. an mmcv 2.1.0 wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.sparse_ext_setup"
want=$(cat tools/setup_env.sh pyproject.toml | sha256sum | cut -d' ' -f1)
verify() {
  "$PY" - <<'PY'
import mmcv, mmcv.ops, mmengine, mmseg, torch  # noqa: F401
import sparse_ext
print(f"[setup] ok: torch {torch.__version__}, mmcv {mmcv.__version__}, mmengine {mmengine.__version__}, "
      f"mmseg {mmseg.__version__}, sparse_ext {sparse_ext.__version__}")
PY
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && verify 2>/dev/null; then
  echo "[setup] $VENV is up to date (delete $stamp to force a re-install)"
  exit 0
fi
pipi() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

# Build tooling first: torch 2.13 declares setuptools>=77 and mmcv's build imports pkg_resources (<81).
pipi "setuptools>=77,<81" wheel ninja
pipi "torch==2.13.0"

# mmcv 2.1.0 with compiled ops: source-only on the registry and it cannot build under build isolation.
if ! "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" >/dev/null 2>&1; then
  found=""
  for d in ${PIP_FIND_LINKS:-}; do
    ls "$d"/mmcv-2.1.0-*.whl >/dev/null 2>&1 && found="$d" && break
  done
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
# openmim 0.3.9 pins old setuptools/requests through openxlab: install it without its deps.
pipi --no-deps "openmim==0.3.9"
pipi Click colorama model-index pandas requests rich tabulate
# Reference ECE implementation (test-only parity check); it pins torch~=1.9, so no deps.
pipi --no-deps "ece-loss==1.0.0"
pipi -e ".[test,mmseg]"

verify
echo "$want" > "$stamp"
