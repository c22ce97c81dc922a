#!/usr/bin/env bash
# The commands behind every figure in docs/README.md and docs/results.md: each writes an artifact in eval/, and
# scripts/make_results.py turns the artifacts (and the shipped files in models/) into the pages. Each artifact records
# the machine that measured it.
# Usage: bash scripts/run_benchmarks.sh ../shared/data/monuseg        (about 6 h on 2 CPU cores, most of it training)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/monuseg}
mkdir -p eval/speed eval/serve eval/mosaic eval/ablation eval/effort eval/reliability
# how large the nuclei are: the patch and crop sizes of bundle/patches.py
python scripts/benchmark.py sizes --data-dir "$DATA" --json eval/nucleus_sizes.json
# the label-free baselines' defaults (bundle/benchmarks/baselines/segmentation.py): grids on the train tiles
python scripts/benchmark.py tune-baselines --data-dir "$DATA" --json eval/baseline_tuning.json
# the self-training recipe on train images held out of it (one per organ with two or more): where levers are tuned;
# beside it the ceiling, the same network trained on the true labels (about 28 min for two seeds)
python scripts/benchmark.py validate --data-dir "$DATA" --seeds 0,1 --json eval/validation.json
# the same on eleven held-out images: folds 1 and 2 hold out each organ's second and third train image (fold 0's
# seed 0 is reused from the line above; about 28 min more)
python scripts/benchmark.py validate --data-dir "$DATA" --seeds 0 --folds 0,1,2 --json eval/validation_folds.json
# organs no bank cell and no network saw: banks from every train organ, Bladder and Brain test tiles
python scripts/benchmark.py annotate --train-dir "$DATA" --test-dir "$DATA" --test-organs Bladder,Brain --seeds 0,1,2 \
    --json eval/annotate_unseen.json
# registration on the same organs with the shipped networks (trained on the other organs), against demons and ANTs
python scripts/benchmark.py registration --train-dir "$DATA" --test-dir "$DATA" --test-organs Bladder,Brain --seeds 0,1,2 \
    --checkpoint models/invariant.pt --mapping-checkpoint models/model.pt --max-pairs 100 --synthetic-pairs 50 \
    --json eval/registration_unseen.json
for organ in Kidney Lung; do
  o=$(echo "$organ" | tr '[:upper:]' '[:lower:]')
  # whole images with the shipped models: ours, its ablations (student alone, no refinement, no student), ours from
  # ground-truth centroids, LoG, Otsu + watershed, U-Net
  python scripts/benchmark.py annotate --train-dir "$DATA" --test-dir "$DATA" --organ "$organ" --seeds 0,1,2 \
      --json "eval/annotate_$o.json"
  # the annotation-effort curve (the 10 % point is the run above)
  for f in 0.02 0.05 0.25; do
    python scripts/benchmark.py annotate --train-dir "$DATA" --test-dir "$DATA" --organ "$organ" --seeds 0,1,2 \
        --fraction "$f" --methods ours,unet,otsu_watershed --json "eval/effort/annotate_${o}_f$f.json"
  done
  python scripts/benchmark.py matching --train-dir "$DATA" --test-dir "$DATA" --organ "$organ" --seeds 0,1,2 \
      --epochs 20 --gallery-size bank --json "eval/matching_$o.json"
  # DiffeoInvariantNet per seed is reused from the matching runs (eval/work); DiffeoMappingNet is the shipped one
  python scripts/benchmark.py registration --train-dir "$DATA" --test-dir "$DATA" --organ "$organ" --seeds 0,1,2 \
      --epochs 20 --mapping-checkpoint models/model.pt --max-pairs 100 --synthetic-pairs 50 \
      --json "eval/registration_$o.json"
  # inference settings compared in one process (machines are noisy: compare ratios, not seconds across days)
  python scripts/benchmark.py speed --data-dir "$DATA" --organ "$organ" --json "eval/speed/speed_$o.json"
done
# large images: mosaics of the test tiles region by region against their tiles one by one, the seam check, and
# 10,000 and 20,000 px mosaics as slides (tiled TIFFs read and written region by region)
python scripts/benchmark.py mosaic --data-dir "$DATA" --json eval/mosaic/mosaic.json
# the MONAI Label app's /infer and /train (bank update, then fine-tuning) against the workflow it serves, and what one
# corrected tile changes on the others (needs the test install of README.md)
python scripts/benchmark.py serve --data-dir "$DATA" --organ Kidney --json eval/serve/serve_kidney.json
# the main job killed with SIGKILL at random moments, then resumed; 50 concurrent /infer against one server
python scripts/benchmark.py reliability --json eval/reliability/reliability.json
# DiffeoMappingNet trained from scratch for 20 epochs with each backbone, then with and without the Dice label term
for bb in localnet voxelmorph; do
  python -m monai.bundle run --config_file "['configs/train.yaml','configs/train_mapping.yaml']" \
      --ckpt_dir "runs/backbone_$bb" --resume False --backbone "$bb" --train#trainer#max_epochs 20
  python scripts/benchmark.py registration --train-dir "$DATA" --test-dir "$DATA" --organ Kidney --seed 0 --epochs 20 \
      --mapping-checkpoint "runs/backbone_$bb/model.pt" --backbone "$bb" --max-pairs 100 --synthetic-pairs 50 \
      --json "eval/ablation/backbone_$bb.json"
done
for weight in 0.0 2.0; do
  python -m monai.bundle run --config_file "['configs/train.yaml','configs/train_mapping.yaml']" \
      --ckpt_dir "runs/label$weight" --resume False --label_weight "$weight" --train#trainer#max_epochs 20
  python scripts/benchmark.py registration --train-dir "$DATA" --test-dir "$DATA" --organ Kidney --seed 0 --epochs 20 \
      --mapping-checkpoint "runs/label$weight/model.pt" --max-pairs 100 --synthetic-pairs 50 \
      --json "eval/ablation/registration_kidney_label$weight.json"
done
python scripts/make_results.py
