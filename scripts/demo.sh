#!/usr/bin/env bash
# The built-in world, end to end, as plain llgbm commands (run by `make demo`).
# SmolLM2-135M-Instruct + the shipped benchmarks; OpenBookQA is the held-out task: no generator,
# predictor or index used for it has seen its adapters. Every step reuses finished work when run
# again. Outputs go to the [project] workdir of the project file (runs/ for llgbm.toml).
#
#   bash scripts/demo.sh            # the built-in world (llgbm.toml)
#   bash scripts/demo.sh --fast     # the same chain on the tiny model (profiles/fast.toml), for CI
#   JSON=1 bash scripts/demo.sh     # every step prints one JSON object instead of tables
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT=${LLGBM_PROJECT:-llgbm.toml}
[ "${1:-}" = "--fast" ] && PROJECT=${LLGBM_PROJECT:-profiles/fast.toml}
HOLDOUT=openbookqa
llgbm() { command llgbm -p "$PROJECT" ${JSON:+--json} "$@"; }
W=$(command llgbm -p "$PROJECT" config workdir)
mkdir -p "$W"

llgbm config validate
llgbm zoo build                 # teacher LoRA trajectories, one per task (resumable)
llgbm cache-deltas              # delta of every zoo adapter on the probes (incremental)
# Generators and the predictor are trained without the held-out task (holdout_tasks in the project file).
[ -e "$W/train/multitask/final" ] || llgbm train multitask                 # weights + delta loss
[ -e "$W/train/b1/final" ] || llgbm train delta-only --variant b1          # delta loss alone
[ -e "$W/train/b2/predictor.json" ] || llgbm train delta-only --variant b2 # text -> delta
llgbm index build --force --set "index.exclude_tasks=[\"$HOLDOUT\"]"  # delta-space index of the other tasks
# Retrieval for the held-out task from a few of its unlabeled prompts, merged with TIES; the eval
# scores that folder beside the built-in methods (its row is named by the folder's path).
command llgbm data show $HOLDOUT --split train -n 8 --jsonl > "$W/$HOLDOUT-prompts.jsonl"
MERGED=$(realpath -m --relative-to=. "$W/merges/$HOLDOUT-ties")
llgbm retrieve --prompts-file "$W/$HOLDOUT-prompts.jsonl" --merge ties --out "$MERGED" --force
# table, results.{md,json,csv}, plots, acceptance checks
llgbm eval --holdout $HOLDOUT --force -m base -m teacher -m mean-delta -m multitask -m b1 -m b2 -m "$MERGED"
[ -n "${JSON:-}" ] || echo "results: $W/eval/results.md   plots: $W/eval/plots/"
