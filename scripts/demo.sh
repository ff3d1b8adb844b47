#!/usr/bin/env bash
# The built-in world, end to end, as plain llgbm commands (run by `make demo`): the research world in
# miniature. SmolLM2-135M-Instruct, six shipped tasks (llgbm.toml), a teacher zoo, its deltas, and
# leave-one-task-out evaluation of the held-out fold (eval.holdout, ARC-Challenge): multitask, B1 and
# B2 are trained without that task, then scored on its test questions beside base, its own teacher,
# mean-delta and the oracle-best reference, with exact paired tests. Every step reuses finished work
# when run again. Outputs go to the [project] workdir of the project file (runs/ for llgbm.toml).
#
#   bash scripts/demo.sh            # the built-in world (llgbm.toml)
#   bash scripts/demo.sh --fast     # the same chain on the tiny model (profiles/fast.toml), for CI
#   JSON=1 bash scripts/demo.sh     # every step prints one JSON object instead of tables
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT=${LLGBM_PROJECT:-llgbm.toml}
[ "${1:-}" = "--fast" ] && PROJECT=${LLGBM_PROJECT:-profiles/fast.toml}
llgbm() { command llgbm -p "$PROJECT" ${JSON:+--json} "$@"; }
FOLDS=$(command llgbm -p "$PROJECT" --json config show |
        python -c 'import json,sys; print(",".join(json.load(sys.stdin)["values"]["eval.holdout"]))')

llgbm config validate
llgbm data overlap              # no scored test question may occur in a train split (exit 1 if one does)
llgbm zoo build                 # teacher LoRA trajectories, one per task (resumable)
llgbm cache-deltas              # delta of every zoo adapter on the probes (incremental)
# per fold: multitask, B1 and B2 trained without the task, then every method scored on its questions;
# the table, exact tests, acceptance checks and where the files are
llgbm eval --folds "$FOLDS"
