#!/usr/bin/env bash
# The research world end to end (profiles/research.toml): 13 tasks, two teacher trajectories per
# task, leave-one-task-out cross-validation over every task, and lever cells on two folds. Every step
# reuses finished work when run again (kill it and rerun to resume). The wall time of each step is
# appended to <workdir>/timings.jsonl; docs/results.md quotes those and the tables this writes.
#
#   bash scripts/research.sh               # everything
#   STEPS="zoo score deltas" bash scripts/research.sh   # only some steps, in this order
#   LLGBM_PROJECT=profiles/research-l30.toml bash scripts/research.sh   # the all-layer world (own workdir)
#   PROCS=2 STEPS="cv oracle" bash scripts/research.sh   # the folds dealt to 2 processes (accelerate launch)
#
# Steps: sweep (teacher steps chosen on held-out train records), sweep-lr (the same at lr 3e-3),
# sweep-layout (two other LoRA layouts on the same records), layout-test (the chosen one on test
# questions), zoo,
# score, deltas, separation, mtval (multitask settings chosen on held-out training tasks), cv, oracle (the
# oracle-best reference on every fold), levers, b1.
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT=${LLGBM_PROJECT:-profiles/research.toml}
llgbm() { command llgbm -p "$PROJECT" "$@"; }
# PROCS=N runs the whole-fold steps (cv, oracle) as N processes under `accelerate launch` (folds
# dealt round robin, the same rows as one process; docs/scaling.md), each with cores / N threads.
# On the 2-core CPU one process with two threads was the faster: two one-thread processes scored a
# multiple-choice adapter in 48 s each (28 s alone with two threads) and a MAWPS one in about 2 min.
PROCS=${PROCS:-1}
llgbm_folds() {
  if (( PROCS > 1 )); then
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / PROCS > 0 ? $(nproc) / PROCS : 1 ))} \
      accelerate launch --multi_gpu --num_processes "$PROCS" -m llgbm_cli -p "$PROJECT" "$@"
  else
    llgbm "$@"
  fi
}
W=$(command llgbm -p "$PROJECT" config workdir)
mkdir -p "$W"
STEPS=${STEPS:-"sweep zoo score deltas separation mtval cv levers b1"}
SWEEP_TASKS=arc-easy,openbookqa,piqa,arc-challenge,addsub,mathqa,aqua
# the tasks whose teachers stayed below base + 2 SE after the step sweep and were still learning (or flat) at 1e-3
SWEEP_LR_TASKS=${SWEEP_LR_TASKS:-piqa,openbookqa,addsub,arc-challenge}
# every task whose teacher stayed below base + 2 SE (the layout chosen on the first four: AQuA and MathQA
# were added to the all-layer sweep after that choice)
LAYOUT_TASKS=${LAYOUT_TASKS:-$SWEEP_LR_TASKS,aqua,mathqa}
TASKS=$(command llgbm -p "$PROJECT" --json config show | python -c 'import json,sys; print(",".join(json.load(sys.stdin)["values"]["zoo.tasks"]))')

step() {  # step NAME COMMAND...: run it, record its wall time
  local name=$1; shift
  local t0; t0=$(date +%s)
  "$@"
  printf '{"step": "%s", "seconds": %d, "finished": "%s", "load": "%s"}\n' "$name" "$(( $(date +%s) - t0 ))" \
    "$(date -u +%FT%TZ)" "$(cut -d' ' -f1-3 /proc/loadavg)" >> "$W/timings.jsonl"
}

sweep_sets() {  # sweep_sets OUT STEPS: into the array SW, the settings of a sweep (one trajectory, run 0,
                # with checkpoints every 48 steps, in its own zoo folder sweep/zoo-OUT)
  SW=(--set "zoo.path=sweep/zoo-$1" --set zoo.runs=1 --set "zoo.steps=$2" --set zoo.warmup_steps=0
      --set "zoo.checkpoints=$(( $2 / 48 ))" --set "zoo.per_task={}")
}

sweep_at() {  # sweep_at NAME OUT TASKS STEPS [--set KEY=VALUE...]: the sweep of each task with the given
              # settings, scored on up to 200 records of the train split it never saw (the split depends
              # on the seed and the run, not on the settings)
  local name=$1 out=$2 tasks=$3 steps=$4; shift 4
  sweep_sets "$out" "$steps"
  mkdir -p "$W/sweep"
  step "$name" llgbm zoo build --tasks "$tasks" "${SW[@]}" "$@"
  step "$name-score" llgbm --json zoo score --split heldout --test-sample 200 --tasks "$tasks" "${SW[@]}" "$@" \
    > "$W/sweep/heldout-$out.json"
}

# The two LoRA layouts of the sweep-layout step (at lr 1e-3), beside the profile's rank-8 q/v on the last 8 layers.
LAYOUT_ALL_LAYERS=(--set zoo.learning_rate=1e-3 --set lora.last_layers=30)
LAYOUT_ATTN_MLP=(--set zoo.learning_rate=1e-3
                 --set 'lora.target_modules=["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]')

for s in $STEPS; do
  case $s in
    # Teacher settings chosen without a test question: one 192-step trajectory (run 0, checkpoints at
    # 48/96/144/192) of each task that did not clearly learn at 48 steps, scored on the half of its
    # train split it never saw; [zoo.per_task.NAME] in the profile takes each task's best step count.
    sweep) sweep_at sweep lr1e-3 "$SWEEP_TASKS" 192 --set zoo.learning_rate=1e-3 ;;
    # The same trajectory at lr 3e-3, for the tasks still below base + 2 SE on the test table; the same
    # held-out train records (the split depends on the seed and run, not the rate).
    sweep-lr) sweep_at sweep-lr lr3e-3 "$SWEEP_LR_TASKS" 192 --set zoo.learning_rate=3e-3 ;;
    # The LoRA layout (one setting for the whole zoo: the generators' output shape), on the same
    # tasks and held-out records, 96 steps at lr 1e-3: rank-8 q/v on all 30 layers instead of the
    # last 8, and every linear module (attention and MLP) of the last 8 layers.
    sweep-layout)
      sweep_at sweep-layout-all layout-all-layers "$LAYOUT_TASKS" 96 "${LAYOUT_ALL_LAYERS[@]}"
      sweep_at sweep-layout-mlp layout-attn-mlp "$SWEEP_LR_TASKS" 96 "${LAYOUT_ATTN_MLP[@]}" ;;
    # The layout the held-out records chose (all layers), its sweep checkpoints on the same tasks' test
    # questions (up to 500, as the score step): research_tables.py takes each task's step count from the
    # held-out file. For the decision to rebuild the zoo with it; the zoo and the cross-validation
    # are not rebuilt by this step.
    layout-test)
      sweep_sets layout-all-layers 96
      step layout-test llgbm --json zoo score --test-sample 500 --tasks "$LAYOUT_TASKS" "${SW[@]}" \
        "${LAYOUT_ALL_LAYERS[@]}" > "$W/sweep/test-layout-all-layers.json" ;;
    # After a task's [zoo.per_task.NAME] table changes, `zoo build` refuses and names the task:
    # rebuild it alone with `llgbm -p profiles/research.toml zoo build --tasks NAME --force`.
    zoo) step zoo llgbm config validate && step zoo llgbm zoo build ;;
    # Each task's last teacher and the base model on the task's test split (up to 500 questions);
    # scores of unchanged teachers are reused from <zoo>/scores.json.
    score) step score llgbm --json zoo score --checkpoints last --test-sample 500 > "$W/zoo-score.json" ;;
    # Deltas on the generic probes (the ones every method is measured with) and on task probes.
    deltas)
      step deltas llgbm cache-deltas
      step deltas-task-probes llgbm cache-deltas --set "probes.source=task:$TASKS" --set probes.count=52 \
        --set delta.cache=deltas-task-probes ;;
    separation)
      llgbm --json zoo separation > "$W/separation-generic.json"
      llgbm --json zoo separation --set "probes.source=task:$TASKS" --set probes.count=52 \
        --set delta.cache=deltas-task-probes > "$W/separation-task-probes.json" ;;
    # Multitask's training settings compared on a run with three training tasks held out (ARC-Challenge,
    # PIQA, MultiArith): the centered cosine of their generated adapters' deltas to their teachers'
    # every 20 steps (no test question). delta_centered only adds the centered metrics: with the mse
    # delta loss the loss is the same. The profile takes the best (const-lam10).
    mtval)
      H=(--set 'train.multitask.holdout_tasks=["arc-challenge","piqa","multiarith"]'
         --set train.multitask.delta_centered=true --set train.multitask.eval_interval=20)
      LIN=(--set train.multitask.lr_schedule=linear --set train.multitask.warmup_steps=10
           --set train.multitask.lambda_warmup_steps=20)
      mkdir -p "$W/mtval"
      mt() {  # mt NAME SETTINGS...: one training run, skipped when finished
        local name=$1; shift
        [ -d "$W/mtval/$name/final" ] || step "mtval-$name" llgbm --quiet train multitask \
          --out "$W/mtval/$name" --force "${H[@]}" "$@"
      }
      mt base "${LIN[@]}" --set train.multitask.lambda_delta=1      # the profile's settings before
      mt deltaw "${LIN[@]}" --set train.multitask.lambda_delta=1 --set train.multitask.weight_loss=delta_w
      mt factors "${LIN[@]}" --set train.multitask.lambda_delta=1 --set train.multitask.weight_loss=factors
      mt lam10 "${LIN[@]}" --set train.multitask.lambda_delta=10
      mt lam100 "${LIN[@]}" --set train.multitask.lambda_delta=100
      mt const-lam0 --set train.multitask.lambda_delta=0
      mt const-lam1 --set train.multitask.lambda_delta=1
      mt const-lam10                                                # the profile now
      mt const-lam10-lr3e-3 --set train.multitask.learning_rate=3e-3 ;;
    # Leave-one-task-out over every task: what each method needs is trained without fold k's task.
    cv) step cv llgbm_folds eval --folds all --out "$W/cv" ;;
    # The oracle-best reference on every fold (ORACLE_FOLDS: some of them): each other task's last
    # teachers (24) scored on the held-out task's test questions, the same ones as cv's, and the best
    # kept. It reads test labels, so it is a reference, never a method; off in the profile for its cost.
    oracle) step oracle llgbm_folds eval --folds "${ORACLE_FOLDS:-all}" -m base --set eval.oracle_candidates=last \
      --out "$W/cv-oracle" ;;
    # Lever cells: the same cross-validation, multitask only, on two folds (one multiple-choice,
    # one generative) with one setting changed; compare with the matching folds of cv.
    levers)
      # λ = 0: the profile's multitask with the delta loss switched off, on every fold (about 46 min;
      # LAMBDA0_FOLDS=arc-easy,boolq,openbookqa,gsm8k,mawps,svamp for the six that were not validation
      # tasks of the mtval step)
      step lever-lambda0 llgbm eval --folds "${LAMBDA0_FOLDS:-all}" \
        -m multitask --set train.multitask.lambda_delta=0 --out "$W/cv-lambda0"
      step lever-task-loss llgbm eval --folds arc-easy,mawps -m multitask --set train.multitask.task_weight=0.1 \
        --out "$W/cv-task0.1"
      # centering leaves the mse delta loss unchanged (a shift of both sides): compare it under cosine
      step lever-cosine llgbm eval --folds arc-easy,mawps -m multitask --set train.multitask.delta_loss_type=cosine \
        --out "$W/cv-cosine"
      step lever-cosine-centered llgbm eval --folds arc-easy,mawps -m multitask \
        --set train.multitask.delta_loss_type=cosine --set train.multitask.delta_centered=true \
        --out "$W/cv-cosine-centered"
      step lever-gradnorm llgbm eval --folds arc-easy,mawps -m multitask --set train.multitask.loss_balance=gradnorm \
        --out "$W/cv-gradnorm" ;;
    # B1 on the same two folds, plain and with the relational term against diversity collapse; each
    # fold's training run reports the collapse checks on the training tasks' adapters.
    # B1 at lr 1e-3 for 5 epochs of 12 steps: chosen on a training run without ARC-Easy by B1's own
    # collapse checks on the training tasks (no test question scored); at the profile's lr 1e-4 and
    # 2 epochs the generated adapters collapse (docs/results.md). Given as --set so that the main
    # cross-validation's finished folds stay valid (a fold's fingerprint covers the whole config).
    # B1_FOLDS: the folds of the chosen setting's cell (arc-easy,mawps unless set; finished folds are reused).
    b1)
      step b1 llgbm eval --folds "${B1_FOLDS:-arc-easy,mawps}" -m b1 --set train.delta_only.learning_rate=1e-3 \
        --set train.delta_only.epochs=5 --out "$W/cv-b1"
      # the first B1 setting (lr 1e-4, 2 epochs), plain and with the relational term
      step b1-lr1e-4 llgbm eval --folds arc-easy,mawps -m b1 --set train.delta_only.learning_rate=1e-4 \
        --set train.delta_only.epochs=2 --out "$W/cv-b1-lr1e-4"
      step b1-lr1e-4-relational llgbm eval --folds arc-easy,mawps -m b1 --set train.delta_only.learning_rate=1e-4 \
        --set train.delta_only.epochs=2 --set train.delta_only.relational_weight=10 --out "$W/cv-b1-lr1e-4-relational" ;;
    *) echo "unknown step $s (steps: sweep sweep-lr sweep-layout layout-test zoo score deltas separation mtval cv oracle levers b1)" >&2; exit 2 ;;
  esac
done
echo "results: $W/cv/results.md   lever cells: $W/cv-*/results.md"
