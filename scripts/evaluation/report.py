"""Per-volume, per-structure Dice reports of an evaluation run, with the structures named.

MONAI's ``MetricsSaver`` collects the volume names and writes its own CSVs with classes numbered ``class0...``;
:class:`DiceReportSaver` adds, on the same rank and at the same moment, ``dice_per_volume.csv`` (one row per volume,
one column per named structure, and the volume's mean over structures) and ``dice_summary.json`` (mean, std and count
per structure over volumes, and the mean and std over volumes of the per-volume mean Dice, as in the paper's Table 1).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence

import ignite.distributed as idist
import numpy as np
from ignite.engine import Engine
from monai.handlers import MetricsSaver

__all__ = ["DiceReportSaver", "summarise_dice", "write_dice_report"]

PER_VOLUME_CSV = "dice_per_volume.csv"
SUMMARY_JSON = "dice_summary.json"


def summarise_dice(dice: np.ndarray, structure_names: Sequence[str]) -> dict:
    """Summary of a ``(volumes, structures)`` Dice array; NaN is skipped: a structure absent from the label (MONAI's
    ``ignore_empty``: its Dice is undefined there, whether or not the prediction has it).

    Returns:
        ``{"structures": {name: {"mean", "std", "n"}}, "overall": {"mean", "std", "n"}}`` where ``overall`` is over
        the per-volume mean Dice (the mean over that volume's structures).
    """
    dice = np.asarray(dice, dtype=float).reshape(len(dice), len(structure_names))
    structures = {}
    for j, name in enumerate(structure_names):
        column = dice[:, j][~np.isnan(dice[:, j])]
        structures[name] = {
            "mean": float(column.mean()) if column.size else None,
            "std": float(column.std()) if column.size else None,
            "n": int(column.size),
        }
    per_volume = np.array([np.nanmean(row) if not np.isnan(row).all() else np.nan for row in dice])
    valid = per_volume[~np.isnan(per_volume)]
    overall = {
        "mean": float(valid.mean()) if valid.size else None,
        "std": float(valid.std()) if valid.size else None,
        "n": int(valid.size),
    }
    return {"structures": structures, "overall": overall}


def write_dice_report(
    save_dir: str, volumes: Sequence[str], dice: np.ndarray, structure_names: Sequence[str]
) -> dict[str, str]:
    """Write ``dice_per_volume.csv`` and ``dice_summary.json`` into ``save_dir``; returns their paths."""
    os.makedirs(save_dir, exist_ok=True)
    dice = np.asarray(dice, dtype=float).reshape(len(volumes), len(structure_names))
    csv_path = os.path.join(save_dir, PER_VOLUME_CSV)
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["volume", *structure_names, "mean"])
        for name, row in zip(volumes, dice):
            mean = np.nanmean(row) if not np.isnan(row).all() else np.nan
            writer.writerow([name, *[f"{v:.4f}" for v in row], f"{mean:.4f}"])
    summary = summarise_dice(dice, structure_names)
    summary["volumes"] = list(volumes)
    json_path = os.path.join(save_dir, SUMMARY_JSON)
    with open(json_path, "w") as f:
        json.dump(summary, f, indent=2)
    return {"csv": csv_path, "json": json_path}


class DiceReportSaver(MetricsSaver):
    """MONAI's ``MetricsSaver`` plus the named per-volume Dice CSV and JSON summary of :func:`write_dice_report`.

    Args:
        save_dir: folder of all reports.
        metric_name: name of the Dice metric in the evaluator (its ``save_details`` must be on).
        label_names: names of all classes, background first.
        include_background: whether the metric's details include the background column.
        kwargs: further arguments of ``MetricsSaver`` (``batch_transform``, ``summary_ops``, ...).
    """

    def __init__(
        self,
        save_dir: str,
        metric_name: str,
        label_names: Sequence[str],
        include_background: bool = False,
        **kwargs,
    ) -> None:
        kwargs.setdefault("metric_details", [metric_name])
        super().__init__(save_dir=save_dir, **kwargs)
        self.metric_name = metric_name
        self.structure_names = list(label_names if include_background else label_names[1:])

    def __call__(self, engine: Engine) -> None:
        super().__call__(engine)
        if idist.get_rank() != self.save_rank:
            return
        details = getattr(engine.state, "metric_details", {}).get(self.metric_name)
        if details is None:
            raise RuntimeError(f"metric '{self.metric_name}' has no details: create it with save_details=True.")
        dice = details.cpu().numpy() if hasattr(details, "cpu") else np.asarray(details)
        volumes = [os.path.basename(str(v)) for v in self._filenames] or [str(i) for i in range(len(dice))]
        write_dice_report(self.save_dir, volumes, dice, self.structure_names)
