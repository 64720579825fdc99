#!/usr/bin/env bash
# Render every committed reference board from its results alone: results/reference/<benchmark>/leaderboard.md
# (the Markdown board with its readings) and results/reference/<benchmark>/plots/ (the figures, PDF and PNG;
# the extra headline backfilling figure shows φ*, online backfilling, BCT, AdvBCT, Hot-refresh and UniBCT:
# for each the first row of its list below that the board has — the defaults first for online backfilling,
# BCT and AdvBCT, the tuned preset first for Hot-refresh and UniBCT). Sequential boards have no figures.
#
#   benchmarks/reference_boards.sh [BENCHMARK ...]   (default: every folder under results/reference)
#
# Environment: PYTHON (default .venv/bin/python), ROOT (default results/reference).
set -euo pipefail

PY=${PYTHON:-.venv/bin/python}
ROOT=${ROOT:-results/reference}
if [[ $# -gt 0 ]]; then benches=("$@"); else mapfile -t benches < <(ls "$ROOT"); fi

for bench in "${benches[@]}"; do
  dir="$ROOT/$bench"
  [[ -d "$dir" ]] || { echo "error: no reference results for '$bench' under $ROOT" >&2; exit 2; }
  curves=()
  for alternatives in "independent" "online_backfill online_backfill:tuned" "bct bct:tuned" \
    "advbct advbct:tuned" "hot_refresh:tuned hot_refresh" "unibct:tuned unibct"; do
    for key in $alternatives; do  # the first row the board has
      if [[ -d "$dir/$key" ]]; then curves+=("$key"); break; fi
    done
  done
  # a sequential board renders no figures (the flags are ignored there)
  "$PY" -m bctbench.cli leaderboard --benchmark "$bench" --results-root "$ROOT" --no-reference \
    --out "$dir/leaderboard.md" --plots "$dir/plots" ${curves[@]:+--curve-methods "${curves[@]}"}
  echo "$bench: $dir/leaderboard.md"
done
