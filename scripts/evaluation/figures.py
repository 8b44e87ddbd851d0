"""The paper's Figures 2-4 from Dice tables and label volumes (matplotlib's Agg canvas, PNG at 150 dpi).

- :func:`figure2_boxplot`: box plots of per-structure Dice over the test volumes, the SE variants of one network side
  by side, for the left-hemisphere and midline structures (the paper shows DenseNet on MALC).
- :func:`figure3_bars`: mean Dice per structure (all structures) with the standard deviation over volumes, the SE
  variants side by side.
- :func:`figure4_slice`: one coronal slice of the input, the ground truth, the plain network's and the network + scSE's
  predictions, with a white box where the two predictions differ most.

The SE variants have the Okabe-Ito colours (distinguishable with the common colour-vision deficiencies); the label
maps use tab20 + tab20b (27 structures cannot all be told apart by every reader; left and right structures also
differ by position).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib
import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from scipy import ndimage

from scripts.evaluation.stats import NETWORK_NAMES, SE_COLUMNS, DiceTable

__all__ = [
    "DPI",
    "SE_COLOURS",
    "figure2_boxplot",
    "figure3_bars",
    "figure4_slice",
    "label_colormap",
    "left_and_midline",
    "variant_label",
]

DPI = 150
# Okabe-Ito colours: grey for the plain network, then orange, sky blue and bluish green.
SE_COLOURS: dict[str, str] = {"none": "#999999", "cse": "#E69F00", "sse": "#56B4E9", "scse": "#009E73"}
_SE_NAMES = {"none": "", "cse": " + cSE", "sse": " + sSE", "scse": " + scSE"}


def variant_label(network: str, se: str) -> str:
    """Legend text of one run, e.g. ``"DenseNet + scSE"``."""
    return NETWORK_NAMES.get(network, network) + _SE_NAMES.get(se, f" + {se}")


def left_and_midline(structures: Sequence[str]) -> list[str]:
    """The structures of Figure 2: names starting with ``"left "`` and names mentioning neither side."""
    keep = []
    for name in structures:
        lower = name.lower()
        if lower.startswith("left ") or ("left" not in lower and "right" not in lower):
            keep.append(name)
    return keep


def _ordered_variants(tables: Mapping[str, DiceTable]) -> list[str]:
    return [se for se in SE_COLUMNS if se in tables] + [se for se in tables if se not in SE_COLUMNS]


def _check_tables(tables: Mapping[str, DiceTable]) -> list[str]:
    if not tables:
        raise ValueError("no Dice tables to plot; expected at least one SE variant of the network")
    return _ordered_variants(tables)


def _volumes(n: int) -> str:
    return f"{n} test volume" + ("" if n == 1 else "s")


def _legend_handles(network: str, variants: Sequence[str]) -> list[Patch]:
    return [
        Patch(facecolor=SE_COLOURS.get(se, "#CC79A7"), edgecolor="black", label=variant_label(network, se))
        for se in variants
    ]


def _figure(figsize: tuple[float, float], layout: str | None = None) -> Figure:
    """A figure drawn by the Agg canvas (no pyplot: no global state, no display needed)."""
    fig = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", format="png")
    return path


def figure2_boxplot(
    tables: Mapping[str, DiceTable],
    path: str,
    network: str = "densenet",
    structures: Sequence[str] | None = None,
    title: str | None = None,
) -> str:
    """Figure 2: box plots of the Dice of every structure over the test volumes, one box per SE variant.

    Args:
        tables: Dice table of each SE variant of ``network``, keyed by ``none``/``cse``/``sse``/``scse``.
        path: PNG to write.
        network: architecture name, for the legend.
        structures: structures to show; default: the left-hemisphere and midline structures of the first table
            (:func:`left_and_midline`).
        title: figure title; default names the network and the number of test volumes.

    Returns:
        ``path``.
    """
    variants = _check_tables(tables)
    first = tables[variants[0]]
    structures = list(structures) if structures is not None else left_and_midline(first.structures)
    if not structures:
        raise ValueError(f"no structures to plot among {first.structures[:5]}...")
    width = 0.8 / len(variants)
    fig = _figure((max(8.0, 0.22 * len(structures) * len(variants) + 2), 5.0))
    ax = fig.subplots()
    for k, se in enumerate(variants):
        table = tables[se]
        data, positions = [], []
        for i, name in enumerate(structures):
            if name not in table.structures:
                continue
            values = table.structure_values(name)
            values = values[~np.isnan(values)]
            if values.size:
                data.append(values)
                positions.append(i + (k - (len(variants) - 1) / 2) * width)
        if not data:
            continue
        colour = SE_COLOURS.get(se, "#CC79A7")
        ax.boxplot(
            data,
            positions=positions,
            widths=width * 0.85,
            patch_artist=True,
            manage_ticks=False,
            boxprops={"facecolor": colour, "edgecolor": "black", "linewidth": 0.8},
            medianprops={"color": "black", "linewidth": 1.2},
            whiskerprops={"linewidth": 0.8},
            capprops={"linewidth": 0.8},
            flierprops={"marker": "o", "markersize": 3, "markerfacecolor": colour, "markeredgecolor": "black"},
        )
    ax.set_xticks(range(len(structures)))
    ax.set_xticklabels(structures, rotation=45, ha="right", rotation_mode="anchor", fontsize=9)
    ax.set_xlim(-0.6, len(structures) - 0.4)
    ax.set_ylim(0.0, 1.02)
    ax.set_ylabel("Dice score", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    for i in range(1, len(structures)):
        ax.axvline(i - 0.5, color="0.85", linewidth=0.6, zorder=0)
    n = len(first.volumes)
    ax.set_title(title or f"Dice per structure, {NETWORK_NAMES.get(network, network)} ({_volumes(n)})")
    ax.legend(handles=_legend_handles(network, variants), loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    return _save(fig, path)


def figure3_bars(
    tables: Mapping[str, DiceTable],
    path: str,
    network: str = "densenet",
    structures: Sequence[str] | None = None,
    title: str | None = None,
) -> str:
    """Figure 3: mean Dice per structure over the test volumes (bars, with the standard deviation), SE variants side
    by side.

    Args:
        tables: Dice table of each SE variant of ``network``, keyed by ``none``/``cse``/``sse``/``scse``.
        path: PNG to write.
        network: architecture name, for the legend.
        structures: structures to show; default: all structures of the first table.
        title: figure title; default names the network and the number of test volumes.

    Returns:
        ``path``.
    """
    variants = _check_tables(tables)
    first = tables[variants[0]]
    structures = list(structures) if structures is not None else list(first.structures)
    width = 0.8 / len(variants)
    fig = _figure((max(8.0, 0.45 * len(structures) + 2), 5.0))
    ax = fig.subplots()
    x = np.arange(len(structures))
    for k, se in enumerate(variants):
        table = tables[se]
        means, stds = np.full(len(structures), np.nan), np.full(len(structures), np.nan)
        for i, name in enumerate(structures):
            if name in table.structures:
                values = table.structure_values(name)
                values = values[~np.isnan(values)]
                if values.size:
                    means[i], stds[i] = values.mean(), values.std()
        ax.bar(
            x + (k - (len(variants) - 1) / 2) * width,
            np.nan_to_num(means),
            width * 0.95,
            yerr=np.nan_to_num(stds) if len(first.volumes) > 1 else None,
            color=SE_COLOURS.get(se, "#CC79A7"),
            edgecolor="black",
            linewidth=0.5,
            error_kw={"elinewidth": 0.7, "capsize": 1.5},
            label=variant_label(network, se),
        )
    ax.set_xticks(x)
    ax.set_xticklabels(structures, rotation=60, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_xlim(-0.6, len(structures) - 0.4)
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("mean Dice score", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    n = len(first.volumes)
    ax.set_title(title or f"Mean Dice per structure, {NETWORK_NAMES.get(network, network)} ({_volumes(n)})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    return _save(fig, path)


def label_colormap(num_classes: int) -> tuple[ListedColormap, BoundaryNorm]:
    """A categorical colour map for label maps: 0 (background) transparent, then the colours of tab20 (without its
    greys, which read as unlabelled tissue) and tab20b, repeated when there are more classes."""
    tab20 = [c for i, c in enumerate(matplotlib.colormaps["tab20"].colors) if i not in (14, 15)]
    palette = [*tab20, *matplotlib.colormaps["tab20b"].colors]
    colours = [(0.0, 0.0, 0.0, 0.0)] + [(*palette[(i - 1) % len(palette)][:3], 1.0) for i in range(1, num_classes)]
    cmap = ListedColormap(colours, name="labels")
    return cmap, BoundaryNorm(np.arange(num_classes + 1) - 0.5, num_classes)


def _load(path: str, reorient: bool) -> np.ndarray:
    if not os.path.isfile(path):
        raise ValueError(f"volume '{path}' does not exist")
    image = nib.load(path)
    if reorient:
        image = nib.as_closest_canonical(image)
    data = np.asanyarray(image.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"volume '{path}' has shape {data.shape}; expected a 3D volume")
    return data


def _densest_window(mask: np.ndarray, size: int) -> tuple[int, int] | None:
    """Lower corner of the ``size`` x ``size`` window holding the most ``True`` pixels of ``mask`` (None if empty)."""
    if not mask.any():
        return None
    density = ndimage.uniform_filter(mask.astype(float), size=size, mode="constant")
    centre = np.unravel_index(int(np.argmax(density)), mask.shape)
    return tuple(int(np.clip(c - size // 2, 0, s - size)) for c, s in zip(centre, mask.shape))


def figure4_slice(
    image: str,
    label: str,
    plain: str,
    scse: str,
    path: str,
    axis: int = 1,
    index: int | None = None,
    network: str = "densenet",
    label_names: Sequence[str] | None = None,
    reorient: bool = True,
    box_size: int | None = None,
) -> dict:
    """Figure 4: input, ground truth, plain network and network + scSE on one coronal slice, with a white box around
    the window where the two predictions differ most.

    Args:
        image: NIfTI of the input volume.
        label: NIfTI of its ground-truth label map.
        plain: NIfTI of the plain network's prediction (same grid).
        scse: NIfTI of the network + scSE's prediction (same grid).
        path: PNG to write.
        axis: the coronal axis of the volumes (after reorientation to RAS when ``reorient``: 1, anterior-posterior).
        index: the slice along ``axis``; default: the slice where the two predictions differ in most voxels.
        network: architecture name, for the titles.
        label_names: names of the label values, for a legend of the structures in the slice.
        reorient: reorient every volume to the closest RAS orientation first (so ``axis=1`` is coronal).
        box_size: side of the box in voxels; default: a quarter of the slice's smaller side.

    Returns:
        ``{"path", "axis", "index", "box"}``; ``box`` is ``(first, second, size)`` in the slice's array indices, or
        ``None`` when the predictions agree on the whole slice.

    Raises:
        ValueError: when a file is missing, the volumes are not 3D or their shapes differ, or ``axis``/``index`` is
            out of range.
    """
    volumes = {k: _load(p, reorient) for k, p in (("image", image), ("label", label), ("plain", plain), ("scse", scse))}
    shapes = {k: v.shape for k, v in volumes.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"volumes of figure 4 must share one grid, got shapes {shapes}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    # where the two predictions differ and one of them is right (the informative differences), else any difference
    differ = volumes["plain"] != volumes["scse"]
    informative = differ & ((volumes["plain"] == volumes["label"]) | (volumes["scse"] == volumes["label"]))
    if informative.any():
        differ = informative
    other = tuple(a for a in range(3) if a != axis)
    if index is None:
        counts = differ.sum(axis=other)
        if counts.any():
            index = int(np.argmax(counts))
        else:
            index = int(np.argmax((volumes["label"] > 0).sum(axis=other)))
    if not 0 <= index < shapes["image"][axis]:
        raise ValueError(f"slice {index} is outside 0..{shapes['image'][axis] - 1} along axis {axis}")
    sl = {k: np.take(v, index, axis=axis) for k, v in volumes.items()}
    size = max(1, min(box_size or max(3, min(sl["image"].shape) // 4), *sl["image"].shape))
    corner = _densest_window(np.take(differ, index, axis=axis), size)

    picture = sl["image"].astype(float)
    low, high = np.percentile(picture, [0.5, 99.5])
    num_classes = max(
        len(label_names) if label_names else 0, int(max(sl[k].max() for k in ("label", "plain", "scse"))) + 1
    )
    cmap, norm = label_colormap(num_classes)
    name = NETWORK_NAMES.get(network, network)
    titles = {
        "image": "(a) input",
        "label": "(b) ground truth",
        "plain": f"(c) {name}",
        "scse": f"(d) {name} + scSE",
    }
    fig = _figure((13.0, 4.6), layout="constrained")
    axes = fig.subplots(1, 4)
    for ax, key in zip(axes, titles):
        ax.imshow(picture.T, cmap="gray", origin="lower", vmin=low, vmax=high if high > low else low + 1)
        if key != "image":
            labels = np.ma.masked_equal(sl[key].astype(int).T, 0)
            ax.imshow(labels, cmap=cmap, norm=norm, origin="lower", interpolation="nearest", alpha=0.85)
        if corner is not None:
            ax.add_patch(
                Rectangle((corner[0] - 0.5, corner[1] - 0.5), size, size, fill=False, edgecolor="white", linewidth=1.8)
            )
        ax.set_title(titles[key], fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
    axis_name = {0: "sagittal", 1: "coronal", 2: "axial"}[axis] if reorient else f"axis {axis}"
    fig.suptitle(f"{axis_name} slice {index}; white box: where the two predictions differ most", fontsize=11)
    if label_names:
        present = sorted(
            set().union(*(np.unique(sl[k]).astype(int).tolist() for k in ("label", "plain", "scse"))) - {0}
        )
        handles = [
            Patch(facecolor=cmap(norm(v)), edgecolor="black", label=label_names[v] if v < len(label_names) else str(v))
            for v in present
        ]
        if handles:
            fig.legend(handles=handles, loc="outside lower center", ncol=min(5, len(handles)), fontsize=8)
    _save(fig, path)
    box = None if corner is None else (corner[0], corner[1], size)
    return {"path": path, "axis": axis, "index": index, "box": box}
