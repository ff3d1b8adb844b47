#!/usr/bin/env bash
# The built-in world, end to end, as plain llgbm commands (run by `make demo`).
# SmolLM2-135M-Instruct + the shipped benchmarks; OpenBookQA is the held-out task: no generator,
# predictor or index used for it has seen its adapters. Every step reuses finished work when run
# again. Outputs go to runs/ (the [project] workdir of llgbm.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
HOLDOUT=openbookqa
W=runs

llgbm config validate
llgbm zoo build                 # teacher LoRA trajectories, 5 tasks x 5 checkpoints (resumable)
llgbm cache-deltas              # delta of every zoo adapter on the probes (incremental)
# Generators and the predictor are trained without the held-out task (holdout_tasks in llgbm.toml).
[ -e $W/train/multitask/final ] || llgbm train multitask              # weights + delta loss
[ -e $W/train/b1/final ] || llgbm train delta-only --variant b1       # delta loss alone
[ -e $W/train/b2/predictor.json ] || llgbm train delta-only --variant b2   # text -> delta
llgbm index build --force --set "index.exclude_tasks=[\"$HOLDOUT\"]"  # delta-space index of the other tasks
# Retrieval for the held-out task from a few of its unlabeled prompts, merged with TIES.
llgbm data show $HOLDOUT --split train -n 8 --jsonl > $W/$HOLDOUT-prompts.jsonl
llgbm retrieve --prompts-file $W/$HOLDOUT-prompts.jsonl --merge ties --out $W/merges/$HOLDOUT-ties --force
llgbm eval --holdout $HOLDOUT --force   # table, runs/eval/results.{md,json,csv}, plots, checks
echo "results: $W/eval/results.md   plots: $W/eval/*.png"
