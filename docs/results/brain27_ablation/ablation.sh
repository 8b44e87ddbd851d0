#!/bin/bash
# Which parts of the domain randomisation matter (issue 11): leave-one-out trainings of the brain model, each from the
# same early weights and for the same number of slices, then mean Dice on the two real development scans and on
# shifted copies of them (contrast reversed, thick axial slices; scripts/evaluation/shifted.py).
#
#   bash docs/results/brain27_ablation/ablation.sh INITIAL_WEIGHTS OUT_DIR [EPOCHS] [VARIANT ...]
#
# INITIAL_WEIGHTS: phase 1's epoch-10 snapshot of the shipped model (models/brain27/snapshots/model_epoch0010.pt
# after phase 1's command of docs/README.md; 20,000 slices with every part on). Each variant trains EPOCHS (default
# 3) epochs of 150 batches of 16 slices at lr 0.01 with the brain profile, "removing" one part by giving it the value
# it has without domain randomisation (domain_randomisation: false; the `synthesis` values, referenced), validates once at the end, then segments
# ../shared/data/real_t1_aseg/images and the shifted copies with the last epoch's network and scores them against
# the asegs. Finished steps of a variant (snapshot, dice/, dice_shifted/) are kept, so a rerun continues. The table:
# python docs/results/brain27_ablation/summarise.py OUT_DIR. Run it alone on the machine (2 threads).
set -u
INIT=$1; OUT=$2; EPOCHS=${3:-3}; shift $(( $# < 3 ? $# : 3 ))
cd "$(dirname "$0")/../../.."
PY=${PYTHON:-python}
REAL=../shared/data/real_t1_aseg
declare -A V=(
  [all]=""
  [none]="--domain_randomisation false"
  [t1_prior]="--randomisation#tissue_means_prob 1.0 --randomisation#std_range @synthesis#std_range"
  [no_strip]="--randomisation#strip_prob 0.0"
  [no_resolution]="--randomisation#resolution_prob 0.0"
  [no_spatial]="--randomisation#rotate_degrees @synthesis#rotate_degrees --randomisation#scale @synthesis#scale --randomisation#translate 0"
  [no_gamma_bias]="--randomisation#gamma_std 0.0 --randomisation#bias_std @synthesis#bias_std"
  [no_flip]="--randomisation#flip_prob 0.0"
  [all_seed1]="--seed 1"
)
ORDER=(all none t1_prior no_strip no_resolution no_spatial no_gamma_bias no_flip all_seed1)
[ $# -gt 0 ] && ORDER=("$@")
# written again every time (seconds, each file atomically), so a run killed while writing them leaves none missing
$PY -m scripts.evaluation.shifted --images $REAL/images --labels $REAL/labels --out "$OUT/shifted" > /dev/null ||
  { echo "could not write the shifted scans into $OUT/shifted" >&2; exit 1; }

segment_and_score() {  # network, images, labels, output folder
  $PY -m monai.bundle run inference --config_file "['configs/inference.yaml','configs/data/brain27.yaml']" \
    --dataset_dir "$2" --checkpoint "$1" --output_dir "$4/seg" > "$4.inference.log" 2>&1 &&
  $PY -m scripts.evaluation.segmentations --predictions "$4/seg" --labels "$3" --out "$4" > "$4.log" 2>&1
}

for name in "${ORDER[@]}"; do
  [ -n "${V[$name]+x}" ] || { echo "unknown variant '$name'; expected one of ${!V[*]}" >&2; exit 2; }
  run=$OUT/$name
  last=$(printf '%s/models/snapshots/model_epoch%04d.pt' "$run" "$EPOCHS")
  if [ ! -f "$last" ]; then
    rm -rf "$run"; mkdir -p "$run"
    start=$(date +%s)
    # shellcheck disable=SC2086
    $PY -m monai.bundle run training \
      --config_file "['configs/train.yaml','configs/data/brain27.yaml','configs/profiles/brain_synth.yaml']" \
      --dataset_dir ../shared/data/brain_label_maps --output_dir "$run/outputs" --ckpt_dir "$run/models" \
      --initial_weights "$INIT" --batch_size 16 --iterations_per_epoch 150 --learning_rate 0.01 \
      --epochs "$EPOCHS" --lr_step_epochs 1000 --val_interval "$EPOCHS" --snapshot_interval "$EPOCHS" \
      ${V[$name]} > "$run/train.log" 2>&1 || { echo "$name: training failed, see $run/train.log" >&2; exit 1; }
    echo "$name: trained in $(( $(date +%s) - start )) s"
  fi
  if [ ! -f "$run/dice/dice_summary.json" ]; then
    rm -rf "$run/dice"
    segment_and_score "$last" $REAL/images $REAL/labels "$run/dice" || { echo "$name: see $run/dice*.log" >&2; exit 1; }
  fi
  if [ ! -f "$run/dice_shifted/dice_summary.json" ]; then
    rm -rf "$run/dice_shifted"
    segment_and_score "$last" "$OUT/shifted/images" "$OUT/shifted/labels" "$run/dice_shifted" ||
      { echo "$name: see $run/dice_shifted*.log" >&2; exit 1; }
  fi
  echo "$name: $(grep -h "mean Dice" "$run/dice.log" "$run/dice_shifted.log" | tr '\n' ' ')"
done
