#!/usr/bin/env bash
# Pretrain the zoo checkpoints the package ships (fmtrade/models/shipped/) on real bars and ship each
# one that beats the shipped weights on validation. Resumable across runs: the first chunk continues
# from the shipped checkpoint when there is one (--init), every later chunk from the one before, and a
# family stops when a chunk no longer lowers its validation loss below the best so far.
#
#   scripts/pretrain_shipped_zoo.sh [CHUNK_MINUTES] [MAX_CHUNKS] [FAMILY ...]
#
# Corpus: the shipped real sample's BTC/ETH/SOL/BNB (XRPUSDT is held out of all training) strictly
# before 2023 (--until 2022-12-31), plus the synthetic markets and KernelSynth series; validation is
# the last 20% of every series before the cutoff. Work directory: $ZOO_WORK (default /tmp/fmtrade-zoo).
set -euo pipefail
cd "$(dirname "$0")/.."
CHUNK=${1:-10}
MAX_CHUNKS=${2:-3}
shift $(( $# > 2 ? 2 : $# )) || true
FAMILIES=${*:-chronos-bolt chronos2 timesfm lagllama chronos}
WORK=${ZOO_WORK:-/tmp/fmtrade-zoo}
CORPUS=store:BTCUSDT,store:ETHUSDT,store:SOLUSDT,store:BNBUSDT,synthetic,kernelsynth
export FMTRADE_HOME=$WORK/home OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$WORK"
.venv/bin/fmtrade data sample --symbols BTCUSDT,ETHUSDT,SOLUSDT,BNBUSDT --json > /dev/null

name_of() { case $1 in chronos) echo chronos-fm-tiny ;; *) echo "$1-fm-tiny" ;; esac; }
lr_of() { .venv/bin/python -c "from fmtrade.models.recipes import zoo_pretrain_lr; print(zoo_pretrain_lr('$1'))"; }

for family in $FAMILIES; do
  name=$(name_of "$family")
  best=inf init=()
  shipped=$PWD/fmtrade/models/shipped/$name
  if [ -f "$shipped/fmtrade-zoo.json" ]; then
    best=$(.venv/bin/python -c "import json; print(json.load(open('$shipped/fmtrade-zoo.json'))['val_loss_last'])")
    init=(--init "$shipped")
  fi
  for chunk in $(seq 1 "$MAX_CHUNKS"); do
    out=$WORK/$family-$chunk
    rm -rf "$out"
    .venv/bin/fmtrade pretrain --arch "$family" --minutes "$CHUNK" --workers 1 --corpus "$CORPUS" \
      --until 2022-12-31 --category spot --interval 60 --lr "$(lr_of "$family")" "${init[@]}" \
      --out "$out" --json > "$out.json" 2> "$out.log"
    val=$(.venv/bin/python -c "import json; print(json.load(open('$out.json'))['val_loss_last'])")
    echo "$family chunk $chunk: val_loss_last $val (best so far $best)"
    if ! .venv/bin/python -c "import sys; sys.exit(0 if float('$val') < float('$best') else 1)"; then
      break
    fi
    best=$val
    .venv/bin/python -m fmtrade.models.shipped "$out" --name "$name" --pretrain-json "$out.json" \
      || echo "$family chunk $chunk: not shipped"
    init=(--init "$out")
  done
done
