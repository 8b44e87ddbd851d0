"""Whole-volume inference, end to end, with the plain float32 path and the fast paths of ``configs/inference.yaml``.

    python -m scripts.benchmark volume --image scan.nii.gz --checkpoint models/model.pt [--onnx models/model.onnx]
        [--config ...] [-- overrides]

Each setting runs ``python -m monai.bundle run inference`` in its own process (read, preprocess, segment, invert,
write: what a user waits for), alone, ``--repeats`` times; the median wall time and the peak resident memory are
printed, with per-structure Dice of every setting's labels against the plain path's, the arithmetic the network
computed (FLOPs counted by torch on the slices the setting segments), and the floor that arithmetic sets at the
float32 and bfloat16 matmul rates measured on this machine. The CPU's kind is printed first: figures from machines
with and without AVX-512 differ about 2x.
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import subprocess
import sys
import tempfile
import time

import nibabel as nib
import numpy as np
import torch

from .inference import native_bf16

__all__ = ["SETTINGS", "cpu_kind", "main", "matmul_gflops"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> overrides of configs/inference.yaml; "plain" is the reference the others are compared with
SETTINGS: dict[str, list[str]] = {
    "plain fp32": ["--precision", "fp32", "--channels_last", "false", "--crop_foreground", "false"],
    "default (fp32 + channels-last + crop)": [],
    "auto precision + channels-last, no crop": ["--precision", "auto", "--crop_foreground", "false"],
    "auto precision + channels-last + crop": ["--precision", "auto"],
}


def cpu_kind() -> str:
    """``AVX-512 with BF16`` / ``AVX-512`` / ``AVX2``..., as torch and oneDNN see this CPU."""
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    avx512 = "avx512f" if "avx512f" in flags else "no avx512f"
    return f"{torch.backends.cpu.get_cpu_capability()}{' with native BF16' if native_bf16() else ''} ({avx512})"


def matmul_gflops(dtype: torch.dtype, size: int = 4096, repeats: int = 5) -> float:
    """Median GFLOP/s of a ``size`` x ``size`` matmul on this machine's threads: the peak to compare with."""
    a, b = torch.rand(size, size).to(dtype), torch.rand(size, size).to(dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def _dice(a: np.ndarray, b: np.ndarray, labels: list[int]) -> dict[int, float]:
    out = {}
    for label in labels:
        x, y = a == label, b == label
        total = x.sum() + y.sum()
        out[label] = 1.0 if total == 0 else 2.0 * np.logical_and(x, y).sum() / total
    return out


def _parser(configs: list[str], overrides: list[str]):
    """The merged configs with ``--key value`` overrides, values read as the runner (fire) reads them."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(configs)
    parser["bundle_root"] = ROOT
    for key, value in zip(overrides[::2], overrides[1::2]):
        try:
            parser[key.lstrip("-")] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parser[key.lstrip("-")] = value
    return parser


def _segmented_slices(configs: list[str], overrides: list[str], image: str) -> tuple[tuple[int, ...], int]:
    """(slice shape, number of slices) the setting's preprocessing hands to the network."""
    parser = _parser(configs, overrides)
    shape = tuple(parser.get_parsed_content("preprocessing")({"image": image})["image"].shape[1:])
    axis = parser.get_parsed_content("slice_axis")
    return tuple(s for i, s in enumerate(shape) if i != axis), shape[axis]


def _flops_per_slice(configs: list[str], overrides: list[str], slice_shape: tuple[int, ...]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    network = _parser(configs, overrides).get_parsed_content("network_def").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(torch.zeros(1, 1, *slice_shape))
    return float(counter.get_total_flops())


def volume(args: argparse.Namespace) -> None:
    configs = [os.path.join(ROOT, "configs", "inference.yaml"), *args.config]
    print(f"CPU: {cpu_kind()}; torch threads: {torch.get_num_threads()}; torch {torch.__version__}")
    peaks = {"fp32": matmul_gflops(torch.float32)}
    if native_bf16():
        peaks["bf16"] = matmul_gflops(torch.bfloat16)
    print("matmul peak (4096^2, median of 5): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    source = nib.load(args.image)
    print(
        f"image: {args.image} {source.shape} voxel {tuple(round(float(z), 2) for z in source.header.get_zooms()[:3])}"
    )
    results, outputs = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        scan_dir = os.path.join(scratch, "in")
        os.makedirs(scan_dir)
        name = os.path.basename(args.image)
        os.symlink(os.path.abspath(args.image), os.path.join(scan_dir, name))
        settings = dict(SETTINGS)
        if args.onnx:
            settings["onnxruntime (fp32 + crop)"] = [
                "--backend",
                "onnxruntime",
                "--onnx_file",
                os.path.abspath(args.onnx),
            ]
        for index, (setting, overrides) in enumerate(settings.items()):
            out = os.path.join(scratch, f"out{index}")
            extra = [*overrides, *args.overrides]
            command = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", str(configs),
                       "--bundle_root", ROOT, "--dataset_dir", scan_dir, "--output_dir", out,
                       "--checkpoint", args.checkpoint, *extra]  # fmt: skip
            walls, peak = [], 0.0
            for _ in range(args.repeats):
                with tempfile.TemporaryFile("w+") as log:
                    start = time.perf_counter()
                    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
                    _, status, usage = os.wait4(process.pid, 0)  # this child's own peak memory
                    walls.append(time.perf_counter() - start)
                    if os.waitstatus_to_exitcode(status) != 0:
                        log.seek(0)
                        raise SystemExit(f"benchmark run '{setting}' failed:\n{log.read()[-3000:]}")
                peak = max(peak, usage.ru_maxrss / 2**20)
            (seg,) = [f for f in os.listdir(out) if f.endswith("_seg.nii.gz")]
            outputs[setting] = np.asarray(nib.load(os.path.join(out, seg)).dataobj)
            slice_shape, slices = _segmented_slices(configs, extra, os.path.join(scan_dir, name))
            flops = _flops_per_slice(configs, extra, slice_shape) * slices
            results[setting] = (statistics.median(walls), peak, slice_shape, slices, flops)
    reference = outputs["plain fp32"]
    labels = [int(v) for v in np.unique(reference) if v != 0]
    print(f"\n{'setting':<50} {'wall s':>7} {'peak GiB':>9} {'slices':>14} {'TFLOP':>6} {'floor s':>12} "
          f"{'min Dice':>9} {'mean Dice':>9}")  # fmt: skip
    for setting, (wall, peak, slice_shape, slices, flops) in results.items():
        dice = _dice(reference, outputs[setting], labels) or {0: float(np.array_equal(reference, outputs[setting]))}
        floors = "/".join(f"{flops / 1e9 / p:.0f}" for p in peaks.values())
        shape = f"{slices}x{'x'.join(map(str, slice_shape))}"
        print(f"{setting:<50} {wall:>7.1f} {peak:>9.2f} {shape:>14} {flops / 1e12:>6.1f} {floors:>12} "
              f"{min(dice.values()):>9.4f} {np.mean(list(dice.values())):>9.4f}")  # fmt: skip
    print(
        f"\nwall: median of {args.repeats}, end to end (process start to label file written); floor: TFLOP / matmul "
        f"peak ({'/'.join(peaks)}); Dice: per structure against 'plain fp32' ({len(labels)} structures present)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.benchmark", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    vol = commands.add_parser("volume", help="whole-volume inference, plain vs fast paths")
    vol.add_argument("--image", required=True, help="a NIfTI volume")
    vol.add_argument("--checkpoint", required=True, help="model.pt of the network the configs declare")
    vol.add_argument("--config", action="append", default=[], help="configs merged over inference.yaml")
    vol.add_argument("--onnx", help="the network's ONNX export, to time ONNX Runtime too (configs/onnx_export.yaml)")
    vol.add_argument("--repeats", type=int, default=1, help="runs per setting (median wall time)")
    vol.add_argument("overrides", nargs="*", help="bundle overrides after --, e.g. -- --features 32")
    args = parser.parse_args(argv)
    volume(args)


if __name__ == "__main__":
    main()
