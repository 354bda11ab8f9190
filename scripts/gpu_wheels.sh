#!/usr/bin/env bash
# Fill .whl/ with the wheels `make gpu-check` installs on a GPU box that has python3 with torch (CUDA),
# transformers, peft, pandas and pyarrow but no network and no Ray (docs/BENCHMARKS.md, GPU check).
# Run it here, where pip reaches the package index; .whl/ travels with the working tree (well under
# the 64 MiB a call carries: the two wheels are ~0.2 MB). Versions default to those of the project's
# .venv, so the GPU box runs the adapters against the library versions the tests run here.
#
#   scripts/gpu_wheels.sh                     # chronos-forecasting and timesfm, versions of .venv
#   CHRONOS=2.3.2 TIMESFM=3.0.2 scripts/gpu_wheels.sh
#   WHL_DIR=/tmp/whl scripts/gpu_wheels.sh   # elsewhere (then make gpu-check WHL_DIR=/tmp/whl)
#
# Everything else the adapters import (accelerate, einops, huggingface_hub, safetensors) is already on
# the GPU box; Ray (hundreds of MB) is not carried, so the check drives the batching in-process there.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
installed() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
CHRONOS=${CHRONOS:-$(installed chronos-forecasting)}
TIMESFM=${TIMESFM:-$(installed timesfm)}
: "${CHRONOS:?no chronos-forecasting in $PY: set CHRONOS=version}"
: "${TIMESFM:?no timesfm in $PY: set TIMESFM=version}"

OUT=${WHL_DIR:-.whl}  # make gpu-check reads the same variable
if [ "$OUT" = .whl ] && [ -d .git ]; then
  # .whl/ is local to this checkout: keep it out of git without touching the shared .gitignore.
  grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info && echo '/.whl/' >> .git/info/exclude; }
fi
rm -rf "$OUT" && mkdir -p "$OUT"
# The GPU box runs CPython 3.12 on x86-64 (KINDS.md); both wheels are pure Python, the tags only guard.
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$OUT" \
  "chronos-forecasting==$CHRONOS" "timesfm==$TIMESFM"
ls -l "$OUT"
