"""Table 1's statistics (known p-values, table formatting, missing cells) and the figures (PNG files from small
synthetic Dice tables and tiny NIfTI volumes)."""

from __future__ import annotations

import csv
import itertools
import math
import re

import nibabel as nib
import numpy as np
import pytest
from scipy.stats import wilcoxon

from scripts.data.synthetic import LABEL_NAMES, generate_subject
from scripts.evaluation import figures
from scripts.evaluation.report import write_dice_report
from scripts.evaluation.stats import (
    CSV_COLUMNS,
    NOTE_ALL_EQUAL,
    NOTE_FEW_PAIRS,
    NOTE_NO_PAIRS,
    DiceTable,
    compare_by_structure,
    compare_by_volume,
    format_seed_spread_markdown,
    format_table1_markdown,
    load_dice_csv,
    paired_wilcoxon,
    seed_spread,
    table1,
    write_table1,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def exact_two_sided_p(d: list[float]) -> float:
    """Exact two-sided signed-rank p-value by enumerating all 2^n sign patterns (distinct non-zero |d|, no ties)."""
    d = [x for x in d if x != 0]
    ranks = {abs(x): r for r, x in enumerate(sorted(d, key=abs), start=1)}
    observed = min(sum(ranks[abs(x)] for x in d if x > 0), sum(ranks[abs(x)] for x in d if x < 0))
    n = len(d)
    count = 0
    for signs in itertools.product((0, 1), repeat=n):
        plus = sum(r for r, s in zip(range(1, n + 1), signs) if s)
        count += min(plus, n * (n + 1) // 2 - plus) <= observed
    return count / 2**n


# --- the test ---------------------------------------------------------------------------------------------------------


def test_six_positive_differences_give_the_exact_two_sided_minimum():
    result = paired_wilcoxon([0.9, 0.8, 0.85, 0.7, 0.95, 0.6], [0.8, 0.75, 0.7, 0.68, 0.9, 0.3])
    assert result.p == pytest.approx(2 / 2**6) == pytest.approx(0.03125)
    assert (result.n, result.n_nonzero, result.note) == (6, 6, "")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_p_values_equal_an_independent_exact_enumeration(seed):
    rng = np.random.default_rng(seed)
    d = rng.permutation(np.arange(1, 10)) * rng.choice([-1, 1], 9) / 100  # distinct magnitudes: no ties
    reference = rng.uniform(0.3, 0.6, 9)
    result = paired_wilcoxon(reference + d, reference)
    assert result.p == pytest.approx(exact_two_sided_p(list(d)), abs=1e-12)
    assert result.delta == pytest.approx(d.mean())


def test_scipy_documented_example():
    # scipy.stats.wilcoxon's docstring: Wilcoxon's corn heights, two-sided exact p = 0.041259765625
    d = np.array([6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75], dtype=float)
    assert paired_wilcoxon(d, np.zeros_like(d)).p == pytest.approx(0.041259765625)


def test_round_off_does_not_split_tied_differences():
    # scipy's docstring: x - y gives slightly different magnitudes for equal gaps; the differences are rounded
    x, y = np.array([0.5, 0.825, 0.375, 0.5]), np.array([0.525, 0.775, 0.325, 0.55])
    assert paired_wilcoxon(x, y).p == pytest.approx(wilcoxon([-0.025, 0.05, 0.05, -0.05]).pvalue)


def test_nan_pairs_are_dropped():
    x = [0.9, 0.8, np.nan, 0.85, 0.7, 0.95, 0.6, 0.5]
    y = [0.8, 0.75, 0.5, 0.7, 0.68, 0.9, 0.3, np.nan]
    result = paired_wilcoxon(x, y)
    assert result.n == 6 and result.p == pytest.approx(0.03125)


def test_all_equal_pairs_report_p_one_with_a_note():
    result = paired_wilcoxon([0.5, 0.7, 0.9], [0.5, 0.7, 0.9])
    assert (result.p, result.n, result.n_nonzero, result.note) == (1.0, 3, 0, NOTE_ALL_EQUAL)


def test_too_few_and_no_pairs():
    few = paired_wilcoxon([0.9, 0.8, 0.7], [0.5, 0.5, 0.5])
    assert few.p == pytest.approx(0.25) and few.note == NOTE_FEW_PAIRS  # 2 / 2^3
    none = paired_wilcoxon([np.nan], [0.5])
    assert math.isnan(none.p) and none.n == 0 and none.note == NOTE_NO_PAIRS
    with pytest.raises(ValueError, match="equal lengths"):
        paired_wilcoxon([0.1, 0.2], [0.1])


# --- pairing ----------------------------------------------------------------------------------------------------------


def _table(volumes, values, structures=("a", "b")) -> DiceTable:
    return DiceTable(list(volumes), list(structures), np.array(values, dtype=float))


def test_pairing_by_volume_name_and_by_structure():
    plain = _table(["v1", "v2", "v3"], [[0.5, 0.7], [0.4, np.nan], [0.6, 0.6]])
    scse = _table(["v3", "v1", "v2", "v9"], [[0.8, 0.9], [0.6, 0.8], [0.5, 0.9], [0.1, 0.1]])
    by_volume = compare_by_volume(scse, plain)
    # per-volume means: plain v1 0.6, v2 0.4 (NaN skipped), v3 0.6; scse v1 0.7, v2 0.7, v3 0.85; v9 unpaired
    assert by_volume.n == 3
    assert by_volume.delta == pytest.approx(np.mean([0.1, 0.3, 0.25]))
    assert by_volume.p == pytest.approx(wilcoxon([0.1, 0.3, 0.25]).pvalue)
    by_structure = compare_by_structure(scse, plain)
    assert by_structure.n == 5  # 3 volumes x 2 structures, minus v2/b (NaN in plain)
    assert by_structure.p == pytest.approx(wilcoxon([0.1, 0.2, 0.1, 0.2, 0.3]).pvalue)


def test_dice_csv_round_trip_with_the_evaluation_report(tmp_path):
    values = np.array([[0.5, np.nan], [0.25, 0.75]])
    paths = write_dice_report(str(tmp_path), ["s1.nii.gz", "s2.nii.gz"], values, ["x", "y"])
    table = load_dice_csv(paths["csv"])
    assert table.volumes == ["s1.nii.gz", "s2.nii.gz"] and table.structures == ["x", "y"]
    np.testing.assert_allclose(table.values, values)
    np.testing.assert_allclose(table.volume_means(), [0.5, 0.5])
    assert DiceTable.from_dict(table.to_dict()).structures == ["x", "y"]
    assert table.to_dict()["dice"][0] == [0.5, None]
    with pytest.raises(ValueError, match="does not exist"):
        load_dice_csv(str(tmp_path / "missing.csv"))


# --- Table 1 ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def grid_tables() -> dict:
    """DenseNet with none/cse/scse over 6 volumes (scSE better on every volume), U-Net without SE only, SD-Net with
    scSE only, and a DenseNet cSE equal to the plain network."""
    volumes = [f"v{i}" for i in range(6)]
    plain = np.array([[0.70, 0.60], [0.72, 0.58], [0.65, 0.55], [0.80, 0.70], [0.75, 0.65], [0.60, 0.50]])
    return {
        ("densenet", "none"): _table(volumes, plain),
        ("densenet", "cse"): _table(volumes, plain),
        ("densenet", "scse"): _table(volumes, plain + np.linspace(0.01, 0.06, 6)[:, None]),
        ("unet", "none"): _table(volumes, plain - 0.1),
        ("sdnet", "scse"): _table(volumes, plain),
    }


def test_table1_cells_tests_and_missing_cells(grid_tables):
    rows = {(r.network, r.se): r for r in table1(grid_tables)}
    assert [n for n, _ in rows][::4] == ["densenet", "sdnet", "unet"]  # the paper's row order
    means = np.array([0.65, 0.65, 0.60, 0.75, 0.70, 0.55])
    assert rows[("densenet", "none")].mean == pytest.approx(means.mean())
    assert rows[("densenet", "none")].std == pytest.approx(means.std())
    assert rows[("densenet", "none")].n_volumes == 6
    scse = rows[("densenet", "scse")]
    assert (scse.p_volume, scse.n_volume_pairs) == (pytest.approx(0.03125), 6)
    assert scse.n_structure_pairs == 12 and scse.p_structure == pytest.approx(2 / 2**12)  # ties: still exact
    assert scse.delta_mean == pytest.approx(0.035)
    cse = rows[("densenet", "cse")]
    assert cse.p_volume == 1.0 and NOTE_ALL_EQUAL in cse.note
    assert not rows[("densenet", "sse")].present and not rows[("unet", "scse")].present
    assert math.isnan(rows[("sdnet", "scse")].p_volume) and "no run without SE" in rows[("sdnet", "scse")].note


def test_table1_markdown_and_csv(grid_tables, tmp_path):
    paths = write_table1(grid_tables, str(tmp_path), title="Table 1: test")
    text = open(paths["md"]).read()
    lines = text.splitlines()
    assert lines[0] == "# Table 1: test"
    header = "| Network | No SE Block | + cSE Block | + sSE Block | + scSE Block |"
    assert header in lines
    densenet = next(line for line in lines if line.startswith("| DenseNet | 0"))
    assert densenet == "| DenseNet | 0.650 ± 0.065 | 0.650 ± 0.065 | - | **0.685** ± 0.064 |"
    assert "| U-Net | 0.550 ± 0.065 | - | - | - |" in lines
    assert "| SD-Net | - | - | - | 0.650 ± 0.065 |" in lines
    assert "| DenseNet | + scSE Block | +0.035 | 0.0312 | 6 | 4.9e-04 | 12 |" in lines
    assert "| DenseNet | + cSE Block | +0.000 | 1.00 † | 6 | 1.00 † | 12 |" in lines
    assert "| DenseNet | + sSE Block | - | - | - | - | - |" in lines
    assert any(line.startswith("- † all pairs equal") for line in lines)
    assert any(line.startswith("- §") for line in lines)
    assert "Test volumes per cell: 6." in lines

    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 12  # 3 networks x 4 variants, missing ones included
    scse = next(r for r in rows if (r["network"], r["se"]) == ("densenet", "scse"))
    assert float(scse["p_volume"]) == pytest.approx(0.03125) and scse["n_volume_pairs"] == "6"
    assert float(scse["mean"]) == pytest.approx(0.685) and scse["n_structure_pairs"] == "12"
    missing = next(r for r in rows if (r["network"], r["se"]) == ("unet", "sse"))
    assert missing["mean"] == "" and missing["note"] == "no run"


def test_markdown_shows_volume_counts_when_they_differ():
    tables = {
        ("unet", "none"): _table(["v1", "v2"], [[0.5, 0.5], [0.7, 0.7]]),
        ("unet", "sse"): _table(["v1"], [[0.9, 0.9]]),
    }
    text = format_table1_markdown(table1(tables))
    assert "| U-Net | 0.600 ± 0.100 (n=2) | - | **0.900** ± 0.000 (n=1) | - |" in text
    assert "‡" in text  # one pair only


# --- figures ----------------------------------------------------------------------------------------------------------


def _synthetic_variants(num_volumes: int = 5) -> dict[str, DiceTable]:
    rng = np.random.default_rng(0)
    structures = list(LABEL_NAMES[1:])
    volumes = [f"subject_{i:03d}.nii.gz" for i in range(num_volumes)]
    base = rng.uniform(0.55, 0.85, (num_volumes, len(structures)))
    tables = {}
    for k, se in enumerate(["none", "cse", "sse", "scse"]):
        values = np.clip(base + 0.02 * k + rng.normal(0, 0.03, base.shape), 0, 1)
        values[0, 10] = np.nan  # a structure absent from one volume
        tables[se] = DiceTable(volumes, structures, values)
    return tables


def _is_png(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


def test_left_and_midline_structures():
    chosen = figures.left_and_midline(LABEL_NAMES[1:])
    assert len(chosen) == 15 and chosen[0] == "left cerebral white matter"
    assert {"3rd ventricle", "4th ventricle", "brain stem"} <= set(chosen)
    assert not any(name.startswith("right") for name in chosen)


def test_label_colormap_has_distinct_colours_and_a_transparent_background():
    cmap, norm = figures.label_colormap(28)
    colours = [tuple(cmap(norm(v))) for v in range(28)]
    assert colours[0][3] == 0.0 and len(set(colours)) == 28


def test_figures_2_and_3_from_synthetic_tables(tmp_path):
    tables = _synthetic_variants()
    fig2 = figures.figure2_boxplot(tables, str(tmp_path / "fig2.png"), network="densenet")
    fig3 = figures.figure3_bars(tables, str(tmp_path / "fig3.png"), network="densenet")
    for path in (fig2, fig3):
        assert _is_png(path)
    partial = {se: tables[se] for se in ("none", "scse")}  # fewer variants still plot
    assert _is_png(figures.figure2_boxplot(partial, str(tmp_path / "fig2_partial.png"), network="unet"))
    with pytest.raises(ValueError, match="no Dice tables"):
        figures.figure3_bars({}, str(tmp_path / "empty.png"))


def _save(array: np.ndarray, path: str, affine: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def test_figure4_from_tiny_volumes(tmp_path):
    image, label = generate_subject(0, shape=(32, 32, 32), seed=0)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    plain, scse = label.copy(), label.copy()
    # the plain network misses the left putamen (label 8) on coronal slices 14-17; scSE misses it on slice 16 only
    plain[:, 14:18][plain[:, 14:18] == 8] = 0
    scse[:, 16][scse[:, 16] == 8] = 0
    assert (plain != scse).any()
    paths = {
        "image": _save(image, str(tmp_path / "image.nii.gz"), affine),
        "label": _save(label, str(tmp_path / "label.nii.gz"), affine),
        "plain": _save(plain, str(tmp_path / "plain.nii.gz"), affine),
        "scse": _save(scse, str(tmp_path / "scse.nii.gz"), affine),
    }
    out = str(tmp_path / "fig4.png")
    result = figures.figure4_slice(**paths, path=out, network="densenet", label_names=LABEL_NAMES)
    assert _is_png(out)
    counts = (plain != scse).sum(axis=(0, 2))
    assert result["index"] == int(np.argmax(counts)) and counts[result["index"]] > 0
    first, second, size = result["box"]
    region = (plain != scse)[first : first + size, result["index"], second : second + size]
    assert region.sum() == counts[result["index"]]  # the box holds every differing voxel of this small region

    fixed = figures.figure4_slice(**paths, path=str(tmp_path / "fig4_axial.png"), axis=2, index=5)
    assert fixed["index"] == 5 and _is_png(fixed["path"])
    with pytest.raises(ValueError, match="outside"):
        figures.figure4_slice(**paths, path=str(tmp_path / "bad.png"), index=40)
    _save(label[:16], str(tmp_path / "small.nii.gz"), affine)
    with pytest.raises(ValueError, match="share one grid"):
        figures.figure4_slice(**{**paths, "scse": str(tmp_path / "small.nii.gz")}, path=str(tmp_path / "bad.png"))


def test_structure_table_of_known_numbers():
    from scripts.evaluation.stats import DiceTable, format_structure_table

    plain = DiceTable(["v1", "v2"], ["a", "b"], np.array([[0.5, np.nan], [0.7, 0.2]]))
    scse = DiceTable(["v1", "v2"], ["a", "b"], np.array([[0.6, 0.4], [0.8, 0.4]]))
    text = format_structure_table({"scse": scse, "none": plain}, "unet")
    lines = text.splitlines()
    assert lines[0] == "## U-Net: test Dice per structure (mean ± std over test volumes)"
    assert lines[2] == "| Structure | No SE Block | + scSE Block |"  # Table 1's column order
    assert lines[4] == "| a | 0.600 ± 0.100 | 0.700 ± 0.100 |"
    assert lines[5] == "| b | 0.200 ± 0.000 | 0.400 ± 0.000 |"  # NaN skipped
    assert lines[6] == "| **per-volume mean** | 0.475 ± 0.025 | 0.550 ± 0.050 |"


# --- spread between seeds ---------------------------------------------------------------------------------------------


def test_seed_spread_of_known_numbers(tmp_path):
    from scripts.evaluation.stats import write_seed_spread

    volumes = ["v1", "v2"]
    grids = {
        0: {
            ("unet", "none"): _table(volumes, [[0.5, 0.5], [0.7, 0.7]]),
            ("unet", "scse"): _table(volumes, [[0.6] * 2, [0.8] * 2]),
        },
        1: {
            ("unet", "none"): _table(volumes, [[0.6, 0.6], [0.6, 0.6]]),
            ("unet", "scse"): _table(volumes, [[0.5] * 2, [0.6] * 2]),
        },
        2: {("unet", "scse"): _table(volumes, [[0.9, 0.9], [0.9, 0.9]])},  # no plain run: no gain for seed 2
    }
    rows = {(r.network, r.se): r for r in seed_spread(grids)}
    assert list(rows) == [("unet", "none"), ("unet", "scse")]
    assert rows[("unet", "none")].means == pytest.approx({0: 0.6, 1: 0.6}) and rows[("unet", "none")].deltas == {}
    assert rows[("unet", "scse")].means == pytest.approx({0: 0.7, 1: 0.55, 2: 0.9})
    assert rows[("unet", "scse")].deltas == pytest.approx({0: 0.1, 1: -0.05})
    lines = format_seed_spread_markdown(list(rows.values())).splitlines()
    assert lines[4].startswith("| Network | SE block | seed 0 | seed 1 | seed 2 | over seeds | Δ seed 0 |")
    # means 0.7, 0.55, 0.9: mean 0.717, sample sd 0.176; gains +0.1, -0.05: mean +0.025, sample sd 0.106
    scse = "| U-Net | + scSE Block | 0.700 | 0.550 | 0.900 | 0.717 ± 0.176 | +0.100 | -0.050 | - | +0.025 ± 0.106 |"
    assert lines[7] == scse + " 1 of 2 |"
    assert lines[6] == "| U-Net | No SE Block | 0.600 | 0.600 | - | 0.600 ± 0.000 | - | - | - | - | - |"
    paths = write_seed_spread(grids, str(tmp_path))
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and rows[-1] == {
        "network": "unet",
        "se": "scse",
        "seed": "2",
        "mean_dice": "0.9",
        "delta_mean": "",
    }


def test_grid_results_round_trip(tmp_path):
    from scripts.evaluation.stats import load_dice_per_volume, write_dice_per_volume

    tables = {
        ("unet", "scse"): _table(["v1", "v2"], [[0.123456789, np.nan], [0.5, 0.25]]),
        ("densenet", "none"): _table(["v2"], [[0.75, 1.0]]),
    }
    path = write_dice_per_volume(tables, str(tmp_path / "dice_per_volume.csv"), {("unet", "scse"): 3})
    loaded, seeds = load_dice_per_volume(path)
    assert seeds == {("densenet", "none"): None, ("unet", "scse"): 3}
    for key, table in tables.items():
        assert (loaded[key].volumes, loaded[key].structures) == (table.volumes, table.structures)
        np.testing.assert_allclose(loaded[key].values, table.values, rtol=5e-6)  # 6 significant digits, NaN kept
    with open(tmp_path / "other.csv", "w") as f:
        f.write("volume,x,mean\nv1,0.5,0.5\n")  # one run's evaluation report, not a grid's results
    with pytest.raises(ValueError, match=re.escape("have no header 'run,arch,se,seed,volume,<structures...>,mean'")):
        load_dice_per_volume(str(tmp_path / "other.csv"))
