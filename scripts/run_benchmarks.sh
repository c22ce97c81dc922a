#!/usr/bin/env bash
# The exact commands behind docs/results.md (2 CPU cores).
# Usage: bash scripts/run_benchmarks.sh ../shared/data/monuseg
# One organ end to end, matching + registration + annotate + reports:
#   python scripts/benchmark.py all --train-dir DATA --test-dir DATA --organ Kidney --seeds 0,1,2 --epochs 20 \
#       --mapping-checkpoint models/model.pt --max-pairs 100 --synthetic-pairs 50
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/monuseg}
mkdir -p eval
# the label-free baselines' defaults (bundle/baselines/segmentation.py) come from this grid on the train tiles (~6 min)
python scripts/tune_baselines.py --data "$DATA" --organs Kidney,Lung
for organ in Kidney Lung; do
  o=$(echo "$organ" | tr '[:upper:]' '[:lower:]')
  # whole images with the shipped models: ours, ours from ground-truth centroids, LoG, Otsu + watershed, U-Net
  python scripts/benchmark.py annotate --train-dir "$DATA" --test-dir "$DATA" --organ "$organ" --seeds 0,1,2 \
      --json "eval/annotate_$o.json"
  python scripts/benchmark.py matching --train-dir "$DATA" --test-dir "$DATA" --organ "$organ" --seeds 0,1,2 \
      --epochs 20 --json "eval/matching_$o.json"
  # DiffeoInvariantNet per seed is reused from the matching runs (eval/work); DiffeoMappingNet is the shipped one
  python scripts/benchmark.py registration --train-dir "$DATA" --test-dir "$DATA" --organ "$organ" --seeds 0,1,2 \
      --epochs 20 --mapping-checkpoint models/model.pt --max-pairs 100 --synthetic-pairs 50 \
      --json "eval/registration_$o.json"
done
# backbone comparison: both trained from scratch for 20 epochs with configs/train_mapping.yaml, then scored on Kidney
for bb in localnet voxelmorph; do
  python -m monai.bundle run --config_file configs/train_mapping.yaml --ckpt_dir "runs/backbone_$bb" --resume False \
      --backbone "$bb" --train#trainer#max_epochs 20
  python scripts/benchmark.py registration --train-dir "$DATA" --test-dir "$DATA" --organ Kidney --seed 0 --epochs 20 \
      --mapping-checkpoint "runs/backbone_$bb/model.pt" --backbone "$bb" --max-pairs 100 --synthetic-pairs 50 \
      --json "eval/ablation/backbone_$bb.json"
done
# inference settings compared in one process (machines are noisy: compare ratios, not seconds across days)
mkdir -p eval/speed
python scripts/speed.py --data-dir "$DATA" --organ Kidney --json eval/speed/speed_kidney.json
python scripts/speed.py --data-dir "$DATA" --organ Lung --json eval/speed/speed_lung.json
# can the bank (plus counted "not a nucleus" clicks) verify proposals? train tiles only, leave one image out (needs
# the bench extra: scikit-learn)
python scripts/verify_proposals.py --data-dir "$DATA" | tee eval/verify_proposals.txt
# how close the bank's calibration of the proposals comes to the grid's best point, 5 organs x 5 seeds (train tiles)
python scripts/check_calibration.py --data-dir "$DATA" --seeds 0,1,2,3,4 | tee eval/check_calibration.txt
# where detection loses: the shipped proposals against two oracles (per-piece split count, true foreground), train tiles
python scripts/detection_headroom.py --data-dir "$DATA" | tee eval/detection_headroom.txt
python scripts/make_results.py eval --out docs/results.md
