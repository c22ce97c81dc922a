#!/usr/bin/env bash
# The exact commands behind docs/results.md (2 CPU cores; about 75 minutes in all).
# Usage: bash scripts/run_benchmarks.sh ../shared/data/monuseg
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/monuseg}
mkdir -p eval
for organ in Kidney Lung; do
  o=$(echo "$organ" | tr '[:upper:]' '[:lower:]')
  python scripts/benchmark.py annotate --test-dir "$DATA" --organ "$organ" --json "eval/annotate_$o.json"
  python scripts/benchmark.py matching --train-dir "$DATA" --test-dir "$DATA" --organ "$organ" --seeds 0,1,2 \
      --epochs 20 --json "eval/matching_$o.json"
  # DiffeoInvariantNet per seed is reused from the matching runs (eval/work); DiffeoMappingNet is the shipped one
  python scripts/benchmark.py registration --train-dir "$DATA" --test-dir "$DATA" --organ "$organ" --seeds 0,1,2 \
      --epochs 20 --mapping-checkpoint models/model.pt --max-pairs 100 --synthetic-pairs 50 \
      --json "eval/registration_$o.json"
done
python scripts/make_results.py eval --out docs/results.md
