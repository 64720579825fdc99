#!/usr/bin/env bash
# The reference plan: every run behind the committed reference leaderboards (docs/results.md §9), as
# `bctbench run-all --reference` steps. Run it from a clean checkout (run-all --reference refuses a dirty tree);
# it is resumable: a run whose result exists with the same identities is skipped.
#
#   benchmarks/reference_plan.sh --list      print the steps
#   benchmarks/reference_plan.sh [STEP ...]  run the named steps (default: all, in order)
#
# Environment: PYTHON (default .venv/bin/python), JOBS (runs at a time, default 2), LOGS (default
# cache/reference-plan), AFTER_STEP (a command run after each finished step with the step name as argument,
# e.g. to commit what landed). Data, cache and W&B follow the usual BCTBENCH_* / WANDB_* variables.
set -euo pipefail

PY=${PYTHON:-.venv/bin/python}
JOBS=${JOBS:-2}
LOGS=${LOGS:-cache/reference-plan}
SEEDS3="0 1 2"
SEEDS5="0 1 2 3 4"

all_methods=$("$PY" -m bctbench.cli methods | awk '{print $1}' | tr '\n' ' ')
bct_methods=$(echo "$all_methods" | tr ' ' '\n' | grep -vx independent | grep . | tr '\n' ' ')
# method:variant for every paper variant a method declares
variants=$("$PY" -c 'from bctbench.registry import get_method, list_methods
print(" ".join(f"{m}:{v}" for m in list_methods() for v in sorted(getattr(get_method(m), "variants", None) or {})))')

# name|benchmark|run-all arguments
steps() {
  for bench in synth_class30to100 synth_data30to100; do
    local short=${bench%%30to100}
    echo "$short-defaults|$bench|--seeds $SEEDS3"
    echo "$short-paragon-more-seeds|$bench|--methods independent --seeds 3 4"
    echo "$short-tuned|$bench|--preset tuned --methods $bct_methods--seeds $SEEDS5"
    for mv in $variants; do
      echo "$short-${mv%%:*}-${mv##*:}|$bench|--preset ${mv##*:} --methods ${mv%%:*} --seeds $SEEDS3"
    done
  done
  echo "synth_seq_class-paragon|synth_seq_class10to30to100|--methods independent --seeds $SEEDS3"
  echo "synth_seq_class-tuned|synth_seq_class10to30to100|--preset tuned --methods $bct_methods--seeds $SEEDS3"
  for bench in synth_class30to100_w16to24 synth_data30to100_w16to24; do
    echo "${bench%%30to100*}_w16to24-paragon|$bench|--methods independent --seeds $SEEDS3"
    echo "${bench%%30to100*}_w16to24-tuned|$bench|--preset tuned --methods $bct_methods--seeds $SEEDS3"
  done
}

if [[ "${1:-}" == "--list" ]]; then
  steps | tr '|' '\t'
  exit 0
fi

mkdir -p "$LOGS"
wanted=" $* "
steps | while IFS='|' read -r name bench args; do
  [[ $# -gt 0 && "$wanted" != *" $name "* ]] && continue
  echo "$(date -u +%FT%TZ) step $name: run-all -b $bench $args"
  start=$(date +%s)
  # shellcheck disable=SC2086
  if "$PY" -m bctbench.cli run-all --reference --benchmark "$bench" --jobs "$JOBS" --quiet $args \
      >"$LOGS/$name.log" 2>&1; then
    echo "$(date -u +%FT%TZ) step $name: done in $(( $(date +%s) - start )) s"
  else
    echo "$(date -u +%FT%TZ) step $name: FAILED (see $LOGS/$name.log)"
  fi
  if [[ -n "${AFTER_STEP:-}" ]]; then $AFTER_STEP "$name" || true; fi
done
