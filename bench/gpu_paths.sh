#!/usr/bin/env bash
# The CUDA and NCCL paths on a GPU machine, on real PneumoniaMNIST: a conditional GAN, generation of the minority
# class, the baseline and augmented classifiers with 5-fold CV in one process, and a short classifier run under
# torchrun (NCCL process group). Prints each step's summary; every step must exit 0.
#
#   bash bench/gpu_paths.sh DATA_DIR [OUT_DIR]      # DATA_DIR holds pneumoniamnist.npz
set -euo pipefail
DATA=${1:?usage: bench/gpu_paths.sh DATA_DIR [OUT_DIR]}
OUT=${2:-/tmp/gpu_paths}
PY=${PYTHON:-python3}
pneumonia() { "$PY" -m pipeline.cli "$@"; }
data=(--dataset pneumoniamnist --data-dir "$DATA")
outputs() { echo --model-dir "$OUT/$1/models" --results-dir "$OUT/$1/metrics" --figures-dir "$OUT/$1/figures"; }
classifier=(--arch resnet18 --weights none --unfreeze --image-size 28 --channels 1 --batch-size 64 --lr 0.003
  --scheduler onecycle --workers 4 --synthetic-dir "$OUT/synthetic")

nvidia-smi -L
"$PY" -c 'import torch; print("torch", torch.__version__, "on", torch.cuda.get_device_name(0))'
SECONDS=0
pneumonia train-gan "${data[@]}" $(outputs gan) --output-dir "$OUT/gan" --conditional --image-size 32 \
  --num-channels 1 --feature-maps-g 64 --feature-maps-d 64 --epochs 20 --batch-size 128 --workers 4
echo "train-gan: ${SECONDS}s"; SECONDS=0
pneumonia generate-synthetic --model-path "$OUT/gan/models/gan/generator_final.pth" --output-dir "$OUT/synthetic" \
  --num-images 2000 --label normal --batch-size 500
echo "generate-synthetic: ${SECONDS}s"; SECONDS=0
pneumonia train-classifier "${data[@]}" $(outputs cv) "${classifier[@]}" --epochs 8 --k-folds 5
echo "train-classifier baseline: ${SECONDS}s"; SECONDS=0
pneumonia train-classifier "${data[@]}" $(outputs cv) "${classifier[@]}" --epochs 8 --k-folds 5 --use-synthetic
echo "train-classifier augmented: ${SECONDS}s"; SECONDS=0
"$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m pipeline.cli train-classifier "${data[@]}" \
  $(outputs ddp) "${classifier[@]}" --epochs 2 --k-folds 2
echo "train-classifier under torchrun (NCCL): ${SECONDS}s"
