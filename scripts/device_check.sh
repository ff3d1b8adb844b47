#!/usr/bin/env bash
# The GPU check: on a machine with one CUDA GPU, after `make setup GPU=1` (nothing else installed), run
# llgbm's device paths and print one JSON line each (about 8 minutes on one GPU):
#   precision    a teacher's steps in float32 and bf16 autocast, choice scoring, decoding, deltas (fp32 vs bf16)
#   cache_deltas llgbm's delta computation against the naive PEFT loop (goal: >= 5x on the GPU)
#   index        a FAISS index built and searched on the GPU against the CPU
#   launch       `accelerate launch` with one process: the fast profile's zoo and a cross-validation fold
#   device       the card, its memory, torch/CUDA/FAISS versions
#   bash scripts/device_check.sh             # on the GPU machine; the figures go to docs/benchmarks.md
#   bash scripts/device_check.sh --dry-run   # the same steps on the CPU, tiny sizes (run by the test suite)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
if [ "${1:-}" = "--dry-run" ]; then
  DEV=cpu; MODEL=tiny-llama; STEPS=2; N=6; ADAPTERS=2; LAST=2; ROWS=2000; Q=50; LIMIT=300
else
  command -v nvidia-smi > /dev/null || { echo "device_check: no nvidia-smi here; run it on the GPU machine, or --dry-run" >&2; exit 2; }
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' ||
    { echo "device_check: torch sees no CUDA device; run \`make setup GPU=1\` on the GPU machine" >&2; exit 2; }
  DEV=cuda; MODEL=smollm2-135m-instruct; STEPS=20; N=96; ADAPTERS=32; LAST=8; ROWS=200000; Q=1000; LIMIT=240
fi
run() {  # run NAME COMMAND...: its JSON line, or one saying how it failed; never stops the others
  local name=$1 t0 rc=0 out; shift; t0=$(date +%s)
  out=$(timeout "$LIMIT" "$@" 2> "${TMPDIR:-/tmp}/device_check.$name.err" | tail -n 1) || rc=$?
  if [ $rc -ne 0 ] || [ -z "$out" ]; then
    out="{\"error\": $(tail -n 1 "${TMPDIR:-/tmp}/device_check.$name.err" | "$PY" -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))'), \"rc\": $rc}"
  fi
  echo "{\"check\": \"$name\", \"device\": \"$DEV\", \"seconds\": $(( $(date +%s) - t0 )), \"result\": $out}"
}
run device "$PY" -c 'import json, torch, faiss
gpu = torch.cuda.is_available()
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "faiss": faiss.__version__,
  "faiss_gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
  "card": torch.cuda.get_device_name(0) if gpu else None,
  "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if gpu else None,
  "bf16": bool(torch.cuda.is_bf16_supported()) if gpu else None}))'
run precision "$PY" benchmarks/precision.py --model "$MODEL" --device "$DEV" --steps "$STEPS" -n "$N" \
  --adapters "$ADAPTERS" --last-layers "$LAST"
run cache_deltas "$PY" benchmarks/cache_deltas.py --model "$MODEL" --device "$DEV" --adapters "$ADAPTERS" --last-layers "$LAST"
run index "$PY" benchmarks/index_device.py --device "$DEV" --rows "$ROWS" --queries "$Q"
# accelerate launch, one process: the fast profile's chain pieces on this device, in a scratch work folder
W=$(mktemp -d); sed "s#workdir = \"../runs-fast\"#workdir = \"$W/w\"#" profiles/fast.toml > "$W/fast.toml"
[ "$DEV" = cpu ] && ONE=--cpu || ONE=--num_machines=1
export PY W DEV ONE
launch() {
  local L=("$PY" -m accelerate.commands.launch --num_processes 1 "$ONE" -m llgbm_cli -p "$W/fast.toml" --quiet --json)
  "${L[@]}" zoo build --set "model.device=$DEV" > /dev/null &&
  "$PY" -m llgbm_cli -p "$W/fast.toml" --quiet cache-deltas --set "model.device=$DEV" > /dev/null &&
  "${L[@]}" eval --folds boolq -m base -m mean-delta --test-sample 8 --set "model.device=$DEV" --out "$W/cv" |
    "$PY" -c 'import json,sys; r=json.load(sys.stdin); print(json.dumps({"processes": r["processes"], "folds": r["folds"],
      "rows": [[x["method"], x["accuracy"]] for x in r["rows"]]}))'
}
export -f launch
run launch bash -c launch
rm -rf "$W"
