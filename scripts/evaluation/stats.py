"""The paper's Table 1 from per-volume, per-structure Dice tables, with Wilcoxon signed-rank tests.

Rows are networks, columns the SE variants (no SE, + cSE, + sSE, + scSE); a cell is the mean +- standard deviation over
the test volumes of each volume's mean Dice over its structures (the ``mean`` column of ``dice_per_volume.csv``, the
``overall`` entry of ``dice_summary.json``). Every SE variant is compared with the same network without SE by the
two-sided Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`, its default ``zero_method="wilcox"``, which drops
zero differences), paired twice:

- by test volume: the per-volume mean Dice of the two runs, one pair per volume both runs evaluated;
- by (volume, structure): every structure of every volume, pairs with a NaN (structure absent from the label, MONAI's
  ``ignore_empty``, in either run) dropped.

The paper reports ``p <= 0.001`` without saying how it paired; with 15 test volumes a pairing by volume cannot go below
``2 / 2**15 = 6.1e-5``, so both are given.

Edge cases: a cell without a run is ``-``; when every pair is equal the test is undefined (older SciPy raises, newer
returns NaN or 1.0) and ``p = 1.0`` is reported with a note; with fewer than 6 non-zero differences a two-sided p can
never fall below 0.05 (its minimum is ``2 / 2**n``), which is noted too; without any pair p is NaN (``-``).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import wilcoxon

__all__ = [
    "NETWORK_NAMES",
    "SE_COLUMNS",
    "DiceTable",
    "PairedTest",
    "SeedSpreadRow",
    "Table1Row",
    "compare_by_structure",
    "compare_by_volume",
    "format_seed_spread_markdown",
    "format_table1_markdown",
    "load_dice_csv",
    "load_dice_per_volume",
    "paired_wilcoxon",
    "seed_spread",
    "table1",
    "write_dice_per_volume",
    "write_seed_spread",
    "write_table1",
    "write_table1_csv",
]

# Display names, in the paper's row order (unknown architectures follow, by name).
NETWORK_NAMES: dict[str, str] = {"densenet": "DenseNet", "sdnet": "SD-Net", "unet": "U-Net"}
# Column headers of Table 1, in the paper's order.
SE_COLUMNS: dict[str, str] = {
    "none": "No SE Block",
    "cse": "+ cSE Block",
    "sse": "+ sSE Block",
    "scse": "+ scSE Block",
}
# Fewer non-zero differences than this can never give a two-sided p below 0.05 (2 / 2**5 = 0.0625).
MIN_PAIRS_FOR_005 = 6
# Dice values are read from CSVs with 4 decimals: differences are rounded so that equal magnitudes tie exactly
# (SciPy's documentation warns that round-off otherwise gives them distinct ranks).
_DECIMALS = 10

NOTE_ALL_EQUAL = "all pairs equal: the test is undefined, p = 1.0 reported"
NOTE_FEW_PAIRS = f"fewer than {MIN_PAIRS_FOR_005} non-zero differences: p cannot fall below 0.05"
NOTE_NO_PAIRS = "no pairs"
NOTE_NO_REFERENCE = "no run without SE to compare with"

CSV_COLUMNS = (
    "network",
    "se",
    "mean",
    "std",
    "n_volumes",
    "p_volume",
    "n_volume_pairs",
    "p_structure",
    "n_structure_pairs",
    "delta_mean",
    "note",
)


@dataclass
class DiceTable:
    """Dice of one run: one row per test volume, one column per structure (NaN where undefined).

    Args:
        volumes: volume names (e.g. the image file names), one per row.
        structures: structure names, one per column.
        values: ``(len(volumes), len(structures))`` Dice scores.
    """

    volumes: list[str]
    structures: list[str]
    values: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        self.volumes = [str(v) for v in self.volumes]
        self.structures = [str(s) for s in self.structures]
        self.values = np.asarray(self.values, dtype=float).reshape(len(self.volumes), len(self.structures))
        if len(set(self.volumes)) != len(self.volumes):
            raise ValueError(f"volume names must be unique, got {self.volumes}")

    def volume_means(self) -> np.ndarray:
        """Mean Dice of every volume over its structures, NaN skipped (NaN when all are NaN)."""
        out = np.full(len(self.volumes), np.nan)
        for i, row in enumerate(self.values):
            finite = row[~np.isnan(row)]
            if finite.size:
                out[i] = finite.mean()
        return out

    def structure_values(self, structure: str) -> np.ndarray:
        """Dice of one structure over the volumes (NaN kept)."""
        return self.values[:, self.structures.index(structure)]

    @classmethod
    def from_dict(cls, data: Mapping) -> DiceTable:
        """From ``{"volumes", "structures", "dice"}`` (``None`` for NaN), as ``run.json`` stores it."""
        dice = [[np.nan if v is None else v for v in row] for row in data["dice"]]
        return cls(list(data["volumes"]), list(data["structures"]), np.array(dice, dtype=float))

    def to_dict(self) -> dict:
        """JSON-ready form (NaN as ``None``); the inverse of :meth:`from_dict`, plus the per-volume means."""

        def clean(v: float) -> float | None:
            return None if math.isnan(v) else round(float(v), 6)

        return {
            "volumes": list(self.volumes),
            "structures": list(self.structures),
            "dice": [[clean(v) for v in row] for row in self.values],
            "volume_mean": [clean(v) for v in self.volume_means()],
        }


def _read_csv(path: str, what: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header of CSV file ``path`` and its non-empty rows with their line numbers, each row checked to have the
    header's length; ``what`` names the file in the one-line errors (``ValueError``)."""
    if not os.path.isfile(path):
        raise ValueError(f"{what} '{path}' does not exist")
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    header = lines[0] if lines else []
    rows = [(number, row) for number, row in enumerate(lines[1:], start=2) if row]
    for number, row in rows:
        if len(row) != len(header):
            raise ValueError(f"{what} '{path}' line {number} has {len(row)} fields; expected {len(header)}")
    return header, rows


def _dice_values(cells: Sequence[str], where: str) -> list[float]:
    """Dice values of CSV cells, NaN for empty or "nan" ones; ``where`` names the line in the one-line error."""
    try:
        return [float(v) if v.strip() not in ("", "nan", "NaN") else math.nan for v in cells]
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e


def load_dice_csv(path: str) -> DiceTable:
    """Read ``dice_per_volume.csv`` (columns: volume, one per structure, mean) as a :class:`DiceTable`.

    The ``mean`` column is not read: :meth:`DiceTable.volume_means` recomputes it from the structures.

    Raises:
        ValueError: when the file is missing or not in that format.
    """
    header, rows = _read_csv(path, "Dice table")
    if len(header) < 2 or header[0] != "volume":
        raise ValueError(f"Dice table '{path}' has no header 'volume,<structures...>,mean'")
    last = len(header) - 1 if header[-1] == "mean" else len(header)
    structures = header[1:last]
    volumes, values = [], []
    for line, row in rows:
        volumes.append(row[0])
        values.append(_dice_values(row[1:last], f"Dice table '{path}' line {line}"))
    return DiceTable(volumes, structures, np.array(values, dtype=float).reshape(len(volumes), len(structures)))


@dataclass
class PairedTest:
    """Result of :func:`paired_wilcoxon`.

    Attributes:
        p: two-sided p-value (NaN without pairs).
        n: number of pairs (after dropping NaN pairs; zero differences included).
        n_nonzero: pairs with a non-zero difference (those the test ranks).
        statistic: Wilcoxon's statistic (NaN when not computed).
        delta: mean of ``variant - reference`` over the pairs (NaN without pairs).
        note: why the p-value needs care, or ``""``.
    """

    p: float
    n: int
    n_nonzero: int
    statistic: float
    delta: float
    note: str = ""


def paired_wilcoxon(variant: Sequence[float], reference: Sequence[float]) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test of ``variant - reference`` with :func:`scipy.stats.wilcoxon`.

    Pairs with a NaN on either side are dropped; differences are rounded to 10 decimals so that equal Dice gaps tie.

    Args:
        variant: scores with the SE block, aligned with ``reference``.
        reference: scores of the same network without SE.

    Returns:
        the p-value, the number of pairs and a note for the edge cases (no pairs, all equal, too few).
    """
    x, y = np.asarray(variant, dtype=float).ravel(), np.asarray(reference, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired samples must have equal lengths, got {x.size} and {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    d = np.round(x[keep] - y[keep], _DECIMALS)
    n, n_nonzero = int(d.size), int(np.count_nonzero(d))
    if n == 0:
        return PairedTest(math.nan, 0, 0, math.nan, math.nan, NOTE_NO_PAIRS)
    delta = float(d.mean())
    if n_nonzero == 0:
        return PairedTest(1.0, n, 0, math.nan, delta, NOTE_ALL_EQUAL)
    try:
        result = wilcoxon(d, alternative="two-sided")
    except ValueError as e:  # SciPy versions differ on degenerate inputs; report, never crash a table
        return PairedTest(1.0, n, n_nonzero, math.nan, delta, f"{NOTE_ALL_EQUAL} ({e})")
    p = float(result.pvalue)
    if math.isnan(p):
        return PairedTest(1.0, n, n_nonzero, float(result.statistic), delta, NOTE_ALL_EQUAL)
    note = NOTE_FEW_PAIRS if n_nonzero < MIN_PAIRS_FOR_005 else ""
    return PairedTest(p, n, n_nonzero, float(result.statistic), delta, note)


def compare_by_volume(variant: DiceTable, reference: DiceTable) -> PairedTest:
    """Wilcoxon test of the per-volume mean Dice, paired by volume name (volumes of only one run are ignored)."""
    ref = dict(zip(reference.volumes, reference.volume_means()))
    common = [v for v in variant.volumes if v in ref]
    var = dict(zip(variant.volumes, variant.volume_means()))
    return paired_wilcoxon([var[v] for v in common], [ref[v] for v in common])


def compare_by_structure(variant: DiceTable, reference: DiceTable) -> PairedTest:
    """Wilcoxon test of every (volume, structure) Dice, paired by both names; NaN pairs dropped."""
    volumes = [v for v in variant.volumes if v in set(reference.volumes)]
    structures = [s for s in variant.structures if s in set(reference.structures)]
    x = [variant.values[variant.volumes.index(v), variant.structures.index(s)] for v in volumes for s in structures]
    y = [
        reference.values[reference.volumes.index(v), reference.structures.index(s)] for v in volumes for s in structures
    ]
    return paired_wilcoxon(x, y)


@dataclass
class Table1Row:
    """One cell of Table 1 and its tests against the same network without SE (long format).

    Attributes:
        network: architecture name.
        se: SE variant.
        mean: mean over test volumes of the per-volume mean Dice (NaN for a missing cell).
        std: their population standard deviation.
        n_volumes: test volumes with a defined mean Dice.
        p_volume: Wilcoxon p-value paired by volume (NaN for the reference column or without pairs).
        n_volume_pairs: its number of pairs.
        p_structure: Wilcoxon p-value paired by (volume, structure).
        n_structure_pairs: its number of pairs.
        delta_mean: mean over the paired volumes of this variant's minus the reference's per-volume mean Dice.
        note: the tests' notes in words (empty when nothing needs care).
        present: whether the cell has a run.
        note_volume: note of the test by volume (one of the ``NOTE_*`` texts or ``""``).
        note_structure: note of the test by (volume, structure).
    """

    network: str
    se: str
    mean: float = math.nan
    std: float = math.nan
    n_volumes: int = 0
    p_volume: float = math.nan
    n_volume_pairs: int = 0
    p_structure: float = math.nan
    n_structure_pairs: int = 0
    delta_mean: float = math.nan
    note: str = ""
    present: bool = True
    note_volume: str = ""
    note_structure: str = ""


def _network_order(networks: Sequence[str]) -> list[str]:
    known = [n for n in NETWORK_NAMES if n in networks]
    return known + sorted(n for n in set(networks) if n not in NETWORK_NAMES)


def _variant_order(variants: Sequence[str]) -> list[str]:
    known = [v for v in SE_COLUMNS if v in variants]
    return known + sorted(v for v in set(variants) if v not in SE_COLUMNS)


def _grid_order(keys: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """``(network, se)`` keys in Table 1's order: networks as the paper's rows, variants as its columns."""
    keys = set(keys)
    networks, variants = _network_order([n for n, _ in keys]), _variant_order([s for _, s in keys])
    return [(n, s) for n in networks for s in variants if (n, s) in keys]


def table1(
    tables: Mapping[tuple[str, str], DiceTable],
    networks: Sequence[str] | None = None,
    variants: Sequence[str] = tuple(SE_COLUMNS),
    reference: str = "none",
) -> list[Table1Row]:
    """Table 1 in long format: one row per (network, SE variant), missing cells included with ``present=False``.

    Args:
        tables: Dice table of every run, keyed by ``(network, se)``.
        networks: rows, in order; default: every network in ``tables``, in the paper's order.
        variants: columns, in order.
        reference: the variant every other one is tested against.

    Returns:
        the rows: mean and population standard deviation (``ddof=0``, as ``dice_summary.json``) over volumes of the
        per-volume mean Dice, and for variants other than ``reference`` the two Wilcoxon tests.
    """
    networks = list(networks) if networks is not None else _network_order([n for n, _ in tables])
    rows = []
    for network in networks:
        base = tables.get((network, reference))
        for se in variants:
            table = tables.get((network, se))
            if table is None:
                rows.append(Table1Row(network, se, present=False))
                continue
            means = table.volume_means()
            valid = means[~np.isnan(means)]
            row = Table1Row(
                network,
                se,
                mean=float(valid.mean()) if valid.size else math.nan,
                std=float(valid.std()) if valid.size else math.nan,
                n_volumes=int(valid.size),
            )
            if se != reference and base is not None:
                by_volume, by_structure = compare_by_volume(table, base), compare_by_structure(table, base)
                row.p_volume, row.n_volume_pairs = by_volume.p, by_volume.n
                row.p_structure, row.n_structure_pairs = by_structure.p, by_structure.n
                row.delta_mean = by_volume.delta
                row.note_volume, row.note_structure = by_volume.note, by_structure.note
                notes = [f"by volume: {by_volume.note}"] if by_volume.note else []
                notes += [f"by structure: {by_structure.note}"] if by_structure.note else []
                row.note = "; ".join(notes)
            elif se != reference:
                row.note = NOTE_NO_REFERENCE
            rows.append(row)
    return rows


def _network_label(network: str) -> str:
    return NETWORK_NAMES.get(network, network)


def _format_p(p: float) -> str:
    if math.isnan(p):
        return "-"
    return f"{p:#.3g}" if p >= 1e-3 else f"{p:.1e}"


# footnote markers of the tests' notes in the Markdown table
_MARKERS = {NOTE_ALL_EQUAL: "†", NOTE_FEW_PAIRS: "‡", NOTE_NO_PAIRS: ""}


def _format_cell(row: Table1Row, show_n: bool, bold: bool) -> str:
    if not row.present or math.isnan(row.mean):
        return "-"
    text = f"{row.mean:.3f} ± {row.std:.3f}"
    if bold:
        text = f"**{row.mean:.3f}** ± {row.std:.3f}"
    return f"{text} (n={row.n_volumes})" if show_n else text


def format_table1_markdown(rows: Sequence[Table1Row], title: str = "Table 1", reference: str = "none") -> str:
    """Table 1 as Markdown: the means table (best per row in bold, as the paper) and a table of the tests.

    Args:
        rows: output of :func:`table1`.
        title: heading of the page.
        reference: the variant the tests compare with.

    Returns:
        the Markdown text.
    """
    networks = list(dict.fromkeys(r.network for r in rows))
    variants = list(dict.fromkeys(r.se for r in rows))
    cells = {(r.network, r.se): r for r in rows}
    counts = {r.n_volumes for r in rows if r.present and not math.isnan(r.mean)}
    show_n = len(counts) > 1
    lines = [
        f"# {title}",
        "",
        "Mean ± standard deviation over the test volumes of each volume's mean Dice over its structures (structures "
        "absent from the label skipped, whatever the prediction; population standard deviation, as "
        "`dice_summary.json`). Best mean per network in bold; `-`: no finished run.",
        "",
    ]
    if len(counts) == 1:
        lines += [f"Test volumes per cell: {counts.pop()}.", ""]
    lines.append("| Network | " + " | ".join(SE_COLUMNS.get(v, v) for v in variants) + " |")
    lines.append("|:--|" + "|".join(":-:" for _ in variants) + "|")
    for network in networks:
        present = [cells[(network, v)] for v in variants if cells[(network, v)].present]
        finite = [r.mean for r in present if not math.isnan(r.mean)]
        best = max(finite) if len(finite) > 1 else None
        row_cells = [
            _format_cell(cells[(network, v)], show_n, best is not None and cells[(network, v)].mean == best)
            for v in variants
        ]
        lines.append(f"| {_network_label(network)} | " + " | ".join(row_cells) + " |")

    tested = [r for r in rows if r.se != reference]
    lines += [
        "",
        "## Wilcoxon signed-rank tests against the same network without SE",
        "",
        "Two-sided, `scipy.stats.wilcoxon` (zero differences dropped). Paired by test volume (per-volume mean Dice) "
        "and by (volume, structure) (pairs with a NaN dropped); Δ: mean difference of the per-volume mean Dice; "
        "n: pairs. Each test compares two trained networks on the same test volumes: it does not include how much "
        "another training of the same network (another seed) would differ; `python -m scripts.experiment seeds` "
        "measures that.",
        "",
        "| Network | SE block | Δ mean Dice | p (by volume) | n | p (by volume, structure) | n |",
        "|:--|:--|--:|--:|--:|--:|--:|",
    ]
    used = set()
    for r in tested:
        cells = [_network_label(r.network), SE_COLUMNS.get(r.se, r.se)]
        if not r.present:
            lines.append("| " + " | ".join(cells + ["-"] * 5) + " |")
            continue
        if r.note == NOTE_NO_REFERENCE:
            used.add("§")
            lines.append("| " + " | ".join(cells + ["- §"] + ["-"] * 4) + " |")
            continue
        cells.append("-" if math.isnan(r.delta_mean) else f"{r.delta_mean:+.3f}")
        for p, n, note in (
            (r.p_volume, r.n_volume_pairs, r.note_volume),
            (r.p_structure, r.n_structure_pairs, r.note_structure),
        ):
            marker = _MARKERS.get(note, "")
            used.add(marker)
            cells += [_format_p(p) + (f" {marker}" if marker else ""), str(n)]
        lines.append("| " + " | ".join(cells) + " |")
    footnotes = {
        "†": f"- † {NOTE_ALL_EQUAL}.",
        "‡": f"- ‡ {NOTE_FEW_PAIRS} (its minimum is 2 / 2^n).",
        "§": f"- § {NOTE_NO_REFERENCE} ('{reference}').",
    }
    notes = [text for marker, text in footnotes.items() if marker in used]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def _csv_value(value: object) -> object:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def write_table1_csv(rows: Sequence[Table1Row], path: str) -> str:
    """Write Table 1 in long format (:data:`CSV_COLUMNS`; empty fields for missing values); returns ``path``."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            if not r.present:
                writer.writerow([r.network, r.se, "", "", 0, "", 0, "", 0, "", "no run"])
                continue
            writer.writerow([_csv_value(getattr(r, c)) for c in CSV_COLUMNS])
    return path


def write_table1(
    tables: Mapping[tuple[str, str], DiceTable],
    out_dir: str,
    networks: Sequence[str] | None = None,
    title: str = "Table 1",
) -> dict[str, str]:
    """Compute Table 1 and write ``table1.md`` and ``table1.csv`` into ``out_dir``; returns their paths."""
    rows = table1(tables, networks=networks)
    os.makedirs(out_dir, exist_ok=True)
    md = os.path.join(out_dir, "table1.md")
    with open(md, "w") as f:
        f.write(format_table1_markdown(rows, title=title))
    return {"md": md, "csv": write_table1_csv(rows, os.path.join(out_dir, "table1.csv"))}


def write_dice_per_volume(
    tables: Mapping[tuple[str, str], DiceTable], path: str, seeds: Mapping[tuple[str, str], object] | None = None
) -> str:
    """Write the raw results of a grid: one row per (run, test volume) with its Dice of every structure (empty where
    undefined) and its mean, runs in Table 1's order; returns ``path``.

    Args:
        tables: Dice table of every run, keyed by ``(network, se)``.
        path: the CSV file.
        seeds: the seed of every run, for the ``seed`` column (empty where unknown).
    """
    structures = list(dict.fromkeys(s for table in tables.values() for s in table.structures))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "arch", "se", "seed", "volume", *structures, "mean"])
        for network, se in _grid_order(list(tables)):
            table, seed = tables[(network, se)], (seeds or {}).get((network, se), "")
            for volume, row, mean in zip(table.volumes, table.values, table.volume_means()):
                values = dict(zip(table.structures, row))
                cells = [_csv_value(float(values.get(s, math.nan))) for s in structures] + [_csv_value(float(mean))]
                writer.writerow([f"{network}_{se}", network, se, seed, volume, *cells])
    return path


def load_dice_per_volume(path: str) -> tuple[dict[tuple[str, str], DiceTable], dict[tuple[str, str], int | None]]:
    """Read a grid's raw results as :func:`write_dice_per_volume` writes them (its inverse, to its 6 digits).

    Returns:
        the Dice table of every run and its seed (``None`` where the column is empty), both keyed by
        ``(network, se)``.

    Raises:
        ValueError: when the file is missing or not in that format.
    """
    header, rows = _read_csv(path, "grid results")
    head = ["run", "arch", "se", "seed", "volume"]
    if header[: len(head)] != head or header[-1] != "mean":
        raise ValueError(f"grid results '{path}' have no header '{','.join(head)},<structures...>,mean'")
    structures = header[len(head) : -1]
    runs: dict[tuple[str, str], tuple[list[str], list[list[float]]]] = {}
    seeds: dict[tuple[str, str], int | None] = {}
    for line, row in rows:
        key, where = (row[1], row[2]), f"grid results '{path}' line {line}"
        try:
            seed = int(row[3]) if row[3].strip() else None
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e
        if seeds.setdefault(key, seed) != seed:
            raise ValueError(f"{where}: run {row[0]} has two seeds")
        volumes, dice = runs.setdefault(key, ([], []))
        volumes.append(row[4])
        dice.append(_dice_values(row[len(head) : -1], where))
    tables = {key: DiceTable(volumes, structures, np.array(dice)) for key, (volumes, dice) in runs.items()}
    return tables, seeds


def format_structure_table(variants: Mapping[str, DiceTable], network: str) -> str:
    """Per-structure test Dice of one network's SE variants as Markdown: mean ± std over volumes (NaN skipped).

    Args:
        variants: SE variant (``"none"``, ``"cse"``, ...) -> its :class:`DiceTable`; shown in Table 1's column order.
        network: the architecture, for the title.

    Returns:
        the table: one row per structure, one column per variant, and a last row with the per-volume mean Dice.
    """
    order = [se for se in SE_COLUMNS if se in variants]
    if not order:
        raise ValueError(f"no SE variant of {network} to tabulate")
    structures = variants[order[0]].structures

    def cell(values: np.ndarray) -> str:
        finite = values[~np.isnan(values)]
        return f"{finite.mean():.3f} ± {finite.std():.3f}" if finite.size else "-"

    lines = [
        f"## {_network_label(network)}: test Dice per structure (mean ± std over test volumes)",
        "",
        "| Structure | " + " | ".join(SE_COLUMNS[se] for se in order) + " |",
        "|:--|" + ":-:|" * len(order),
    ]
    for name in structures:
        lines.append(f"| {name} | " + " | ".join(cell(variants[se].structure_values(name)) for se in order) + " |")
    lines.append("| **per-volume mean** | " + " | ".join(cell(variants[se].volume_means()) for se in order) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------------
# spread between seeds
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class SeedSpreadRow:
    """One (network, SE variant) over grids run with different seeds.

    Attributes:
        network: architecture name.
        se: SE variant.
        means: seed -> test mean Dice of that seed's run (mean over volumes of the per-volume mean Dice).
        deltas: seed -> that mean minus the same seed's run without SE, over the volumes both evaluated (seeds without
            that run are left out; empty for the reference variant).
    """

    network: str
    se: str
    means: dict[int, float] = field(default_factory=dict)
    deltas: dict[int, float] = field(default_factory=dict)


def _finite(values: Sequence[float]) -> np.ndarray:
    a = np.asarray(list(values), dtype=float)
    return a[~np.isnan(a)]


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``: an estimate of the spread between seeds; NaN below 2)."""
    a = _finite(values)
    if not a.size:
        return math.nan, math.nan
    return float(a.mean()), (float(a.std(ddof=1)) if a.size > 1 else math.nan)


def seed_spread(
    grids: Mapping[int, Mapping[tuple[str, str], DiceTable]], reference: str = "none"
) -> list[SeedSpreadRow]:
    """Test mean Dice and its gain over the plain network, per seed, for every (network, SE variant) of the grids.

    Args:
        grids: seed -> Dice table of every run of that seed's grid, keyed by ``(network, se)``.
        reference: the variant the gains are measured against (within the same seed).

    Returns:
        one row per (network, variant) found in any grid, networks in the paper's order, variants in Table 1's.
    """
    rows = []
    for network, se in _grid_order([key for tables in grids.values() for key in tables]):
        row = SeedSpreadRow(network, se)
        for seed in sorted(grids):
            table = grids[seed].get((network, se))
            if table is None:
                continue
            row.means[seed] = float(np.nanmean(table.volume_means()))
            base = grids[seed].get((network, reference))
            if se != reference and base is not None:
                row.deltas[seed] = compare_by_volume(table, base).delta
        rows.append(row)
    return rows


def format_seed_spread_markdown(rows: Sequence[SeedSpreadRow], title: str = "Spread between seeds") -> str:
    """The rows of :func:`seed_spread` as Markdown: per-seed test mean Dice and gain over no SE, their mean and sample
    standard deviation over seeds, and in how many seeds the gain is positive."""
    seeds = sorted({s for r in rows for s in r.means})

    def num(v: float, signed: bool = False) -> str:
        return "-" if v is None or math.isnan(v) else (f"{v:+.3f}" if signed else f"{v:.3f}")

    lines = [
        f"# {title}",
        "",
        "Test mean Dice (mean over the test volumes of each volume's mean Dice) of every run, and Δ: its difference "
        "from the same network without SE trained with the same seed. Over seeds: mean ± sample standard deviation "
        "(ddof = 1). Seeds: " + ", ".join(map(str, seeds)) + ".",
        "",
        "| Network | SE block | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | over seeds | "
        + " | ".join(f"Δ seed {s}" for s in seeds)
        + " | Δ over seeds | Δ > 0 |",
        "|:--|:--|" + "--:|" * (2 * len(seeds) + 3),
    ]
    for r in rows:
        mean, sd = _mean_sd(r.means.values())
        cells = [_network_label(r.network), SE_COLUMNS.get(r.se, r.se)]
        cells += [num(r.means.get(s, math.nan)) for s in seeds]
        cells.append(f"{num(mean)} ± {num(sd)}")
        if r.deltas:
            dmean, dsd = _mean_sd(r.deltas.values())
            cells += [num(r.deltas.get(s, math.nan), signed=True) for s in seeds]
            cells += [
                f"{num(dmean, signed=True)} ± {num(dsd)}",
                f"{sum(d > 0 for d in r.deltas.values())} of {len(r.deltas)}",
            ]
        else:
            cells += ["-"] * (len(seeds) + 2)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_seed_spread(
    grids: Mapping[int, Mapping[tuple[str, str], DiceTable]], out_dir: str, title: str = "Spread between seeds"
) -> dict[str, str]:
    """Write :func:`seed_spread` as ``seeds.md`` and, one row per (network, SE variant, seed), ``seeds.csv``."""
    rows = seed_spread(grids)
    os.makedirs(out_dir, exist_ok=True)
    md, csv_path = os.path.join(out_dir, "seeds.md"), os.path.join(out_dir, "seeds.csv")
    with open(md, "w") as f:
        f.write(format_seed_spread_markdown(rows, title=title))
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["network", "se", "seed", "mean_dice", "delta_mean"])
        for r in rows:
            for seed, mean in r.means.items():
                writer.writerow([r.network, r.se, seed, _csv_value(mean), _csv_value(r.deltas.get(seed, math.nan))])
    return {"md": md, "csv": csv_path}
