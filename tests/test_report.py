"""The Dice report: named per-volume CSV and JSON summary from known numbers."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from scripts.evaluation.report import summarise_dice, write_dice_report


def test_summary_of_known_numbers():
    dice = np.array([[0.8, 0.6], [0.6, np.nan], [1.0, 0.2]])
    s = summarise_dice(dice, ["a", "b"])
    assert s["structures"]["a"] == pytest.approx({"mean": 0.8, "std": np.std([0.8, 0.6, 1.0]), "n": 3})
    assert s["structures"]["b"] == pytest.approx({"mean": 0.4, "std": 0.2, "n": 2})
    per_volume = [0.7, 0.6, 0.6]  # NaN (structure absent in label and prediction) is skipped
    assert s["overall"] == pytest.approx({"mean": np.mean(per_volume), "std": np.std(per_volume), "n": 3})


def test_report_files(tmp_path):
    paths = write_dice_report(
        str(tmp_path), ["v1.nii.gz", "v2.nii.gz"], np.array([[0.5, 1.0], [0.25, 0.75]]), ["x", "y"]
    )
    with open(paths["csv"]) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["volume", "x", "y", "mean"]
    assert rows[1] == ["v1.nii.gz", "0.5000", "1.0000", "0.7500"]
    summary = json.load(open(paths["json"]))
    assert summary["volumes"] == ["v1.nii.gz", "v2.nii.gz"]
    assert summary["overall"]["mean"] == pytest.approx(0.625)
    assert summary["structures"]["y"]["mean"] == pytest.approx(0.875)
