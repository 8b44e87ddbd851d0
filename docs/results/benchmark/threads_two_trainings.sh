#!/usr/bin/env bash
# Two trainings of the default U-Net + scSE (configs/train.yaml, 1 epoch each) on one machine: one after the other,
# at once with each taking all the cores (the bundle's default), at once with the cores shared out
# (OMP_NUM_THREADS=1 each on 2 cores); then the experiment grid (U-Net, U-Net + scSE) with --jobs 1 and --jobs 2.
# Run alone, from anywhere: bash docs/results/benchmark/threads_two_trainings.sh [work folder]
set -u
cd "$(dirname "$0")/../../.."
D=${1:-/tmp/threads_two_trainings}; rm -rf "$D"; mkdir -p "$D"
echo "CPU:$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); avx512f: $(grep -c avx512f /proc/cpuinfo); nproc $(nproc); $(date -u); commit $(git rev-parse --short HEAD)"
python -c "from scripts.data.synthetic import generate_dataset; generate_dataset('$D/data')" > /dev/null || exit 1
T() { python -m monai.bundle run training --config_file configs/train.yaml --dataset_dir "$D/data" --epochs 1 --ckpt_dir "$D/$1/models" --output_dir "$D/$1/out" > "$D/$1.log" 2>&1; }
now() { date +%s.%N; }
s=$(now); T a1; T a2; e=$(now); echo "one after the other (threads auto): $(echo "$e - $s" | bc) s"
s=$(now); T b1 & T b2 & wait; e=$(now); echo "at once, threads auto in each: $(echo "$e - $s" | bc) s"
s=$(now); OMP_NUM_THREADS=1 T c1 & OMP_NUM_THREADS=1 T c2 & wait; e=$(now); echo "at once, OMP_NUM_THREADS=1 each: $(echo "$e - $s" | bc) s"
for x in a1 a2 b1 b2 c1 c2; do
  echo "$x: $(grep -o 'torch threads: [^)]*)' "$D/$x.log") | $(grep -c 'other processes keep' "$D/$x.log") busy warnings | validation $(grep -o 'val_mean_dice: [0-9.]*' "$D/$x.log" | tail -1)"
done
for j in 1 2; do
  s=$(now)
  python -m scripts.experiment run --out "$D/grid_j$j" --archs unet --se none scse --jobs $j -- --dataset_dir "$D/data" --epochs 1 > "$D/grid_j$j.log" 2>&1
  e=$(now); echo "grid unet none+scse, 1 epoch, --jobs $j: $(echo "$e - $s" | bc) s"; cat "$D/grid_j$j.log"
done
