#!/usr/bin/env bash
# The built-in world, end to end, as plain llgbm commands (run by `make demo`).
# Each step reuses finished work when run again.
set -euo pipefail
cd "$(dirname "$0")/.."

llgbm config validate
llgbm data list
llgbm zoo build   # one LoRA teacher trajectory per task; a rerun skips finished checkpoints
llgbm zoo score --checkpoints last   # base vs teachers on held-out questions (also runs/zoo/scores.json)
llgbm cache-deltas   # delta of every zoo adapter; reruns compute only new or changed adapters
[ -f runs/train/multitask/final/generator.json ] || llgbm train multitask --resume 2>/dev/null || llgbm train multitask   # generator: weights + delta loss
llgbm generate --prompts-file <(printf 'Which gas do plants absorb from the air?\nWhy does ice float on water?\n') --out runs/generated/science --force   # text -> PEFT adapter
llgbm index build --force   # FAISS index over the cached deltas (cheap to rebuild)
[ -f runs/train/b2/predictor.json ] || llgbm train delta-only --variant b2   # B2: text -> delta predictor
llgbm retrieve "Which gas do plants take in from the air to make food?"      # top-k adapters for a prompt
llgbm eval --force   # every [eval] method side by side: runs/eval/results.md, results.{json,csv}, plots/, acceptance checks
