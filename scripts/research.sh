#!/usr/bin/env bash
# The research world (profiles/research.toml) as llgbm commands; each step resumes (rerun it) and logs its wall
# time to <workdir>/timings.jsonl. STEPS="sweep sweep-lr sweep-layout mtval" chose the profile's settings (no test
# question); the default runs the rest. `python scripts/research_tables.py` prints docs/results.md's tables.
set -euo pipefail
cd "$(dirname "$0")/.."
P=${LLGBM_PROJECT:-profiles/research.toml}
llgbm() { command llgbm -p "$P" "$@"; }
W=$(llgbm config workdir); mkdir -p "$W/sweep" "$W/mtval"
TASKS=$(llgbm --json config show | python -c 'import json,sys; print(",".join(json.load(sys.stdin)["values"]["zoo.tasks"]))')
step() { local name=$1 t0; t0=$(date +%s); shift; "$@"  # step NAME COMMAND...: run it, log wall time and load
  printf '{"step": "%s", "seconds": %d, "finished": "%s", "load": "%s"}\n' "$name" "$(( $(date +%s) - t0 ))" \
    "$(date -u +%FT%TZ)" "$(cut -d' ' -f1-3 /proc/loadavg)" >> "$W/timings.jsonl"; }
sweep() {  # OUT TASKS STEPS SPLIT N [--set...]: one trajectory per task, scored on N of SPLIT (heldout: unseen train)
  local out=$1 tasks=$2 n=$3 split=$4 q=$5; shift 5
  local S=(--tasks "$tasks" --set "zoo.path=sweep/zoo-$out" --set zoo.runs=1 --set "zoo.steps=$n"
           --set zoo.warmup_steps=0 --set "zoo.checkpoints=$(( n / 48 ))" --set "zoo.per_task={}" "$@")
  step "sweep-$out" llgbm zoo build "${S[@]}"
  step "sweep-$out-$split" llgbm --json zoo score --split "$split" --test-sample "$q" "${S[@]}" > "$W/sweep/$split-$out.json"
}
LOW=piqa,openbookqa,addsub,arc-challenge  # below base + 2 SE after the first sweep
ALL=(--set zoo.learning_rate=1e-3 --set lora.last_layers=30)
for s in ${STEPS:-zoo score deltas separation cv oracle levers}; do
  case $s in
    sweep) sweep lr1e-3 arc-easy,openbookqa,piqa,arc-challenge,addsub,mathqa,aqua 192 heldout 200 --set zoo.learning_rate=1e-3 ;;
    sweep-lr) sweep lr3e-3 "$LOW" 192 heldout 200 --set zoo.learning_rate=3e-3 ;;
    sweep-layout) sweep layout-all-layers "$LOW,aqua,mathqa" 96 heldout 200 "${ALL[@]}"
      sweep layout-attn-mlp "$LOW" 96 heldout 200 --set zoo.learning_rate=1e-3 \
        --set 'lora.target_modules=["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]' ;;
    layout-test) sweep layout-all-layers "$LOW,aqua,mathqa" 96 test 500 "${ALL[@]}" ;;  # the chosen layout, test questions
    zoo) step zoo llgbm zoo build ;;  # a changed [zoo.per_task.NAME]: `llgbm -p P zoo build --tasks NAME --force`
    score) step score llgbm --json zoo score --checkpoints last --test-sample 500 > "$W/zoo-score.json" ;;
    deltas) step deltas llgbm cache-deltas ;;
    separation) llgbm --json zoo separation > "$W/separation-generic.json" ;;
    mtval) M=train.multitask  # multitask settings, each a run with ARC-Challenge, PIQA and MultiArith held out
      L="--set $M.lr_schedule=linear --set $M.warmup_steps=10 --set $M.lambda_warmup_steps=20"
      while read -r name sets; do
        [ -d "$W/mtval/$name/final" ] || step "mtval-$name" llgbm --quiet train multitask --out "$W/mtval/$name" --force \
          --set "$M.holdout_tasks=[\"arc-challenge\",\"piqa\",\"multiarith\"]" --set $M.delta_centered=true \
          --set $M.eval_interval=20 $sets
      done <<EOF
base $L --set $M.lambda_delta=1
deltaw $L --set $M.lambda_delta=1 --set $M.weight_loss=delta_w
factors $L --set $M.lambda_delta=1 --set $M.weight_loss=factors
lam10 $L --set $M.lambda_delta=10
lam100 $L --set $M.lambda_delta=100
const-lam0 --set $M.lambda_delta=0
const-lam1 --set $M.lambda_delta=1
const-lam10 --set $M.lambda_delta=10
const-lam10-lr3e-3 --set $M.learning_rate=3e-3
EOF
      ;;
    cv) step cv llgbm --quiet eval --folds "$TASKS" --out "$W/cv" ;;  # leave one task out, over every task
    # the oracle-best reference: every other task's last teachers scored on the same questions, the best kept
    oracle) step oracle llgbm --quiet eval --folds "$TASKS" -m base --set eval.oracle_candidates=last --out "$W/cv-oracle" ;;
    # the profile's [ablation.cells.*] (λ = 0, the levers, B1), each against the main run on every fold
    levers) step levers llgbm --quiet ablate --folds "${LEVER_FOLDS:-$TASKS}" --out "$W/ablation" ;;
    *) echo "unknown step $s (sweep sweep-lr sweep-layout layout-test zoo score deltas separation mtval cv oracle levers)" >&2; exit 2 ;;
  esac
done
