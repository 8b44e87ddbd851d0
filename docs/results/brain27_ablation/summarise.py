"""Table of the domain-randomisation ablation (ablation.sh): mean Dice over the 27 structures per variant and scan.

    python docs/results/brain27_ablation/summarise.py runs/ablation > docs/results/brain27_ablation/ablation.md

Also writes ablation.csv beside the runs (every variant x scan). Reads each variant's dice/ and dice_shifted/
``dice_per_volume.csv`` and the validation Dice its train.log ends with.
"""

import csv
import os
import re
import sys

VARIANTS = [
    "all",
    "all_seed1",
    "none",
    "t1_prior",
    "no_strip",
    "no_resolution",
    "no_spatial",
    "no_gamma_bias",
    "no_flip",
]
# the shipped model scored the same way, for reference (runs/ablation/shipped/dice*/, no train.log)
REFERENCE = ["shipped"]


def mean_dice(path: str) -> dict[str, float]:
    with open(path, newline="") as f:
        return {row.pop("volume"): sum(map(float, row.values())) / len(row) for row in csv.DictReader(f)}


def main(out: str) -> None:
    rows, scans = {}, []
    for name in [v for v in VARIANTS + REFERENCE if os.path.isdir(os.path.join(out, v))]:
        scores = {}
        for sub in ("dice", "dice_shifted"):
            path = os.path.join(out, name, sub, "dice_per_volume.csv")
            if os.path.exists(path):
                scores.update(mean_dice(path))
        log_path = os.path.join(out, name, "train.log")
        log = open(log_path, errors="replace").read() if os.path.exists(log_path) else ""
        val = re.findall(r"val_mean_dice: ([0-9.]+)", log)
        scores["validation (maps 17-18)"] = float(val[-1]) if val else float("nan")
        rows[name] = scores
        scans += [s for s in scores if s not in scans]
    print("| variant | " + " | ".join(scans) + " |")
    print("|---|" + "---:|" * len(scans))
    for name, scores in rows.items():
        print(f"| {name} | " + " | ".join(f"{scores.get(s, float('nan')):.3f}" for s in scans) + " |")
    with open(os.path.join(out, "ablation.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", *scans])
        for name, scores in rows.items():
            writer.writerow([name, *(f"{scores.get(s, float('nan')):.4f}" for s in scans)])


if __name__ == "__main__":
    main(sys.argv[1])
